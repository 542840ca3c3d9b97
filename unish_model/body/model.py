"""The SMPL body model in plain torch: shape and pose blend shapes, J_regressor joints, the kinematic chain and
linear blend skinning (`linear_blend_skinning`, which the SMPL-X model in `smplx.py` runs too).

The model file is an `.npz` with SMPL's own array names and shapes (no pickle):

| key            | shape            | meaning                                                                  |
| -------------- | ---------------- | ------------------------------------------------------------------------ |
| `v_template`   | (V, 3)           | rest-pose template, metres, y up, facing +z (SMPL: V = 6890)             |
| `f`            | (F, 3) int       | triangles (SMPL: F = 13776); `faces` is accepted as an alias             |
| `J_regressor`  | (24, V)          | rest joints = J_regressor @ shaped vertices (dense here; SMPL's is sparse)|
| `weights`      | (V, 24)          | skinning weights, rows sum to 1                                          |
| `shapedirs`    | (V, 3, B)        | shape blend shapes (SMPL 1.0: B = 10; 1.1: B = 300)                      |
| `posedirs`     | (V, 3, 207)      | pose blend shapes over (R_j - I) of joints 1..23, row-major              |
| `kintree_table`| (2, 24) int      | row 0 = parent of each joint (root: -1 or 2**32-1); `kintree` accepted   |

`BodyModel.from_file` loads only such an `.npz`, with `allow_pickle=False`.  The official `.pkl` is converted once
by `smpl_pickle.py`; `synthetic.py` writes a made-up model in this layout for tests and demos.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from shards.skeleton import SMPL_JOINT_NAMES, SMPL_PARENTS
from unish_model.geometry import axis_angle_to_matrix

__all__ = [
    "NUM_JOINTS", "SMPL_PARENTS", "SMPL_JOINT_NAMES", "REQUIRED_KEYS", "BodyModel", "BodyOutput", "as_rotmats",
    "chain_transforms", "linear_blend_skinning",
]

NUM_JOINTS = 24
REQUIRED_KEYS = ("v_template", "f", "J_regressor", "weights", "shapedirs", "posedirs", "kintree_table")
_ALIASES = {"f": ("f", "faces"), "kintree_table": ("kintree_table", "kintree")}


# ----------------------------------------------------------------------------------------------- rotations


def as_rotmats(x: Tensor, joints: int, name: str) -> Tensor:
    """global_orient (joints=1): (..., 3, 3) or (..., 3); body_pose: (..., J, 3, 3), (..., J, 3) or (..., 3J).
    Returns (..., joints, 3, 3)."""
    if joints == 1:
        if x.shape[-2:] == (3, 3):
            return x[..., None, :, :]
        if x.shape[-1] == 3:
            return axis_angle_to_matrix(x)[..., None, :, :]
    else:
        if x.ndim >= 3 and x.shape[-3:] == (joints, 3, 3):
            return x
        if x.ndim >= 2 and x.shape[-2:] == (joints, 3):
            return axis_angle_to_matrix(x)
        if x.shape[-1] == 3 * joints:
            return axis_angle_to_matrix(x.reshape(*x.shape[:-1], joints, 3))
    want = "(..., 3, 3) or (..., 3)" if joints == 1 else \
        f"(..., {joints}, 3, 3), (..., {joints}, 3) or (..., {3 * joints})"
    raise ValueError(f"{name} must be {want}, got {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------- model


@dataclass
class BodyOutput:
    vertices: Tensor  # (..., V, 3) posed, translated
    joints: Tensor  # (..., 24, 3) posed kinematic-chain joints, translated (what smplx's SMPL returns)
    rest_joints: Tensor  # (..., 24, 3) shaped rest-pose joints, J_regressor @ shaped template (no translation)


class BodyModel(nn.Module):
    """SMPL: vertices = LBS(v_template + shape offsets + pose offsets) for 24 joint rotations.

    forward(global_orient, body_pose, betas=None, transl=None) -> BodyOutput.  Rotations may be matrices
    ((..., 3, 3) and (..., 23, 3, 3)) or axis-angle ((..., 3) and (..., 69)); any leading batch shape.
    """

    parents: Tensor

    def __init__(self, v_template: Tensor, faces: Tensor, j_regressor: Tensor, weights: Tensor,
                 shapedirs: Tensor, posedirs: Tensor, parents: Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        v = v_template.shape[0]
        _expect(v_template, (v, 3), "v_template")
        _expect(j_regressor, (NUM_JOINTS, v), "J_regressor")
        _expect(weights, (v, NUM_JOINTS), "weights")
        if shapedirs.ndim != 3 or shapedirs.shape[:2] != (v, 3):
            raise ValueError(f"shapedirs must be ({v}, 3, B), got {tuple(shapedirs.shape)}")
        _expect(posedirs, (v, 3, 9 * (NUM_JOINTS - 1)), "posedirs")
        if faces.ndim != 2 or faces.shape[1] != 3 or int(faces.max()) >= v or int(faces.min()) < 0:
            raise ValueError(f"faces must be (F, 3) indices into {v} vertices")
        if parents.shape != (NUM_JOINTS,) or int(parents[0]) != -1 or any(
                not 0 <= int(parents[j]) < j for j in range(1, NUM_JOINTS)):
            raise ValueError("kintree_table must list a root (-1) then a parent before each joint")
        self.register_buffer("v_template", v_template.to(dtype))
        self.register_buffer("faces", faces.long(), persistent=False)
        self.register_buffer("J_regressor", j_regressor.to(dtype))
        self.register_buffer("weights", weights.to(dtype))
        self.register_buffer("shapedirs", shapedirs.to(dtype))
        # (207, V*3) so the pose offsets are one matmul, as in SMPL
        self.register_buffer("posedirs", posedirs.to(dtype).reshape(v * 3, -1).T.contiguous())
        self.register_buffer("parents", parents.long(), persistent=False)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    @classmethod
    def from_file(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> BodyModel:
        """Load an `.npz` in SMPL's layout (see the module docstring); errors name the file and the key."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"body model file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except ValueError as e:  # object arrays need pickle: refuse them
            raise ValueError(f"body model file {path}: {e} (convert it to plain arrays, see unish_model.body)") from e
        except (OSError, EOFError) as e:
            raise ValueError(f"body model file {path} is not a readable .npz: {e}") from e
        got = {}
        for key in REQUIRED_KEYS:
            names = _ALIASES.get(key, (key,))
            found = next((n for n in names if n in arrays), None)
            if found is None:
                raise KeyError(f"body model file {path} has no '{key}' array (has: {', '.join(sorted(arrays))})")
            got[key] = arrays[found]
        parents = got["kintree_table"][0].astype(np.int64)
        parents[0] = -1  # SMPL stores 2**32 - 1
        try:
            return cls(
                v_template=torch.from_numpy(np.asarray(got["v_template"], dtype=np.float64)),
                faces=torch.from_numpy(np.asarray(got["f"], dtype=np.int64)),
                j_regressor=torch.from_numpy(np.asarray(got["J_regressor"], dtype=np.float64)),
                weights=torch.from_numpy(np.asarray(got["weights"], dtype=np.float64)),
                shapedirs=torch.from_numpy(np.asarray(got["shapedirs"], dtype=np.float64)),
                posedirs=torch.from_numpy(np.asarray(got["posedirs"], dtype=np.float64)),
                parents=torch.from_numpy(parents), dtype=dtype,
            )
        except ValueError as e:
            raise ValueError(f"body model file {path}: {e}") from e

    def forward(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor | None = None,
                transl: Tensor | None = None) -> BodyOutput:
        body = as_rotmats(body_pose, NUM_JOINTS - 1, "body_pose")
        lead_body = tuple(body.shape[:-3])
        # (3, 3) is both one rotation matrix and three axis-angle vectors: body_pose's batch shape decides.
        if tuple(global_orient.shape) == (*lead_body, 3) and lead_body:
            root = axis_angle_to_matrix(global_orient)[..., None, :, :]
        else:
            root = as_rotmats(global_orient, 1, "global_orient")
        lead = torch.broadcast_shapes(root.shape[:-3], body.shape[:-3])
        dtype = self.v_template.dtype
        rot = torch.cat([root.expand(*lead, 1, 3, 3), body.expand(*lead, NUM_JOINTS - 1, 3, 3)], dim=-3)
        rot = rot.reshape(-1, NUM_JOINTS, 3, 3).to(dtype)
        n = rot.shape[0]
        if betas is None:
            betas = torch.zeros(self.num_betas, dtype=dtype, device=rot.device)
        if betas.shape[-1] > self.num_betas:
            raise ValueError(f"betas has {betas.shape[-1]} coefficients, the model has {self.num_betas}")
        betas = betas.to(dtype).expand(*lead, betas.shape[-1]).reshape(n, -1)

        vertices, joints, rest_joints = linear_blend_skinning(
            rot, betas, self.v_template, self.shapedirs, self.posedirs, self.J_regressor, self.weights,
            self.parents.tolist())
        if transl is not None:
            t = transl.to(dtype).expand(*lead, 3).reshape(n, 1, 3)
            vertices = vertices + t
            joints = joints + t
        return BodyOutput(vertices=vertices.reshape(*lead, -1, 3), joints=joints.reshape(*lead, NUM_JOINTS, 3),
                          rest_joints=rest_joints.reshape(*lead, NUM_JOINTS, 3))

    def rest_joints(self, betas: Tensor | None = None) -> Tensor:
        """Shaped rest-pose joints (..., 24, 3) = J_regressor @ (v_template + shape offsets); joint 0 is the
        pelvis that global_orient rotates about."""
        dtype = self.v_template.dtype
        if betas is None:
            betas = torch.zeros(self.num_betas, dtype=dtype, device=self.v_template.device)
        offsets = torch.einsum("...b,vcb->...vc", betas.to(dtype), self.shapedirs[..., :betas.shape[-1]])
        shaped = self.v_template + offsets
        return torch.einsum("jv,...vc->...jc", self.J_regressor, shaped)

    def regress_joints(self, vertices: Tensor) -> Tensor:
        """J_regressor @ vertices (..., V, 3) -> (..., 24, 3): the evaluation protocol's joints."""
        return torch.einsum("jv,...vc->...jc", self.J_regressor.to(vertices.dtype), vertices)


def _expect(x: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must be {shape}, got {tuple(x.shape)}")


def chain_transforms(rot: Tensor, rest_joints: Tensor, parents: list[int]) -> Tensor:
    """World transforms (n, J, 4, 4) of each joint: parent's transform @ [R_j | J_j - J_parent]."""
    n, j = rot.shape[:2]
    local_t = rest_joints.clone()
    local_t[:, 1:] = rest_joints[:, 1:] - rest_joints[:, parents[1:]]
    local = torch.zeros(n, j, 4, 4, dtype=rot.dtype, device=rot.device)
    local[..., :3, :3] = rot
    local[..., :3, 3] = local_t
    local[..., 3, 3] = 1
    chain = [local[:, 0]]
    for i in range(1, j):
        chain.append(chain[parents[i]] @ local[:, i])
    return torch.stack(chain, dim=1)


def linear_blend_skinning(rot: Tensor, betas: Tensor, v_template: Tensor, shapedirs: Tensor, posedirs: Tensor,
                          j_regressor: Tensor, weights: Tensor, parents: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """An SMPL-family mesh posed by (n, J, 3, 3) joint rotations and shaped by (n, B) betas (B may be fewer than
    the model's): vertices (n, V, 3), posed joints (n, J, 3) and shaped rest joints (n, J, 3), untranslated.

    v_template (V, 3), shapedirs (V, 3, >= B), posedirs (9 (J - 1), 3 V), j_regressor (J, V), weights (V, J)."""
    n = rot.shape[0]
    shaped = v_template + torch.einsum("nb,vcb->nvc", betas, shapedirs[..., :betas.shape[-1]])
    rest_joints = torch.einsum("jv,nvc->njc", j_regressor, shaped)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(n, -1)
    posed = shaped + (pose_feature @ posedirs).reshape(n, -1, 3)
    world = chain_transforms(rot, rest_joints, parents)  # (n, J, 4, 4)
    # skinning matrices move rest-pose points: G_j with the rest joint position taken out
    skin = world.clone()
    skin[..., :3, 3] -= (world[..., :3, :3] @ rest_joints[..., None])[..., 0]
    per_vertex = torch.einsum("vj,njab->nvab", weights, skin)
    vertices = (per_vertex[..., :3, :3] @ posed[..., None])[..., 0] + per_vertex[..., :3, 3]
    return vertices, world[..., :3, 3], rest_joints
