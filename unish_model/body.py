"""SMPL body model in plain torch: shape and pose blend shapes, J_regressor joints, linear blend skinning.

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

Converting the official SMPL `.pkl` (registration required): `python -m unish_model.body SMPL_NEUTRAL.pkl
SMPL_NEUTRAL.npz` (or `convert_smpl_pickle`) reads it with a restricted unpickler that builds only numpy arrays,
builtin containers and inert stand-ins for its chumpy arrays and scipy sparse `J_regressor` (nothing in the file
can run code), densifies them and writes the `.npz`.
`BodyModel.from_file` itself loads only the `.npz`, with `allow_pickle=False`.

`write_synthetic_body_model` writes a made-up model in exactly this layout (tests, demos: SMPL itself cannot be
redistributed).  Its mesh is one closed genus-0 tube that walks the SMPL skeleton (down each limb and back), so it
has SMPL's vertex and face counts by default (6890 = 287 rings of 24 + 2 poles; faces = 2 V - 4 = 13776).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .geometry import axis_angle_to_matrix

__all__ = [
    "NUM_JOINTS", "SMPL_PARENTS", "SMPL_JOINT_NAMES", "BodyModel", "BodyOutput",
    "write_synthetic_body_model", "synthetic_body_arrays", "REQUIRED_KEYS", "smpl_arrays_from_pickle",
    "convert_smpl_pickle",
]

NUM_JOINTS = 24
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
REQUIRED_KEYS = ("v_template", "f", "J_regressor", "weights", "shapedirs", "posedirs", "kintree_table")
_ALIASES = {"f": ("f", "faces"), "kintree_table": ("kintree_table", "kintree")}


# ----------------------------------------------------------------------------------------------- rotations




def _as_rotmats(x: Tensor, joints: int, name: str) -> Tensor:
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
        body = _as_rotmats(body_pose, NUM_JOINTS - 1, "body_pose")
        lead_body = tuple(body.shape[:-3])
        # (3, 3) is both one rotation matrix and three axis-angle vectors: body_pose's batch shape decides.
        if tuple(global_orient.shape) == (*lead_body, 3) and lead_body:
            root = axis_angle_to_matrix(global_orient)[..., None, :, :]
        else:
            root = _as_rotmats(global_orient, 1, "global_orient")
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

        shaped = self.v_template + torch.einsum("nb,vcb->nvc", betas, self.shapedirs[..., :betas.shape[-1]])
        rest_joints = torch.einsum("jv,nvc->njc", self.J_regressor, shaped)
        eye = torch.eye(3, dtype=dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye).reshape(n, -1)
        posed = shaped + (pose_feature @ self.posedirs).reshape(n, -1, 3)
        world = _chain_transforms(rot, rest_joints, self.parents.tolist())  # (n, 24, 4, 4)
        # skinning matrices move rest-pose points: G_j with the rest joint position taken out
        skin = world.clone()
        skin[..., :3, 3] -= (world[..., :3, :3] @ rest_joints[..., None])[..., 0]
        per_vertex = torch.einsum("vj,njab->nvab", self.weights, skin)
        vertices = (per_vertex[..., :3, :3] @ posed[..., None])[..., 0] + per_vertex[..., :3, 3]
        joints = world[..., :3, 3]
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


def _chain_transforms(rot: Tensor, rest_joints: Tensor, parents: list[int]) -> Tensor:
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


# ----------------------------------------------------------------------------------------------- synthetic model

# approximate SMPL neutral rest joints (metres; y up, +x is the body's left, facing +z)
_REST_JOINTS = np.array([
    [0.000, -0.223, 0.028], [0.068, -0.316, 0.015], [-0.068, -0.316, 0.015], [0.000, -0.110, 0.000],
    [0.105, -0.690, 0.020], [-0.105, -0.690, 0.020], [0.005, 0.027, 0.029], [0.088, -1.087, -0.018],
    [-0.088, -1.087, -0.018], [0.003, 0.081, 0.031], [0.118, -1.143, 0.105], [-0.118, -1.143, 0.105],
    [0.000, 0.290, -0.005], [0.076, 0.198, 0.001], [-0.076, 0.198, 0.001], [0.005, 0.352, 0.050],
    [0.198, 0.240, -0.012], [-0.198, 0.240, -0.012], [0.455, 0.225, -0.040], [-0.455, 0.225, -0.040],
    [0.708, 0.235, -0.045], [-0.708, 0.235, -0.045], [0.792, 0.225, -0.055], [-0.792, 0.225, -0.055],
])
# tube radius around the bone that starts at each joint (the joint the bone's vertices follow)
_RADIUS = np.array([0.10, 0.075, 0.075, 0.11, 0.05, 0.05, 0.12, 0.04, 0.04, 0.12, 0.035, 0.035,
                    0.05, 0.06, 0.06, 0.09, 0.045, 0.045, 0.04, 0.04, 0.03, 0.03, 0.025, 0.025])
# leaves get an end segment (toes, top of the head, fingers) skinned to them
_LEAF_TIPS = {10: (0.0, -0.02, 0.08), 11: (0.0, -0.02, 0.08), 15: (0.0, 0.18, 0.0),
              22: (0.09, 0.0, 0.0), 23: (-0.09, 0.0, 0.0)}


def _euler_tour(parents: tuple[int, ...]) -> list[tuple[int, np.ndarray, np.ndarray, int]]:
    """Walks (owner joint, start, end, ...) visiting every bone down and back; the owner is the joint whose
    transform the walk's vertices follow (the bone's parent end), and the last item its blend partner."""
    children: dict[int, list[int]] = {j: [] for j in range(NUM_JOINTS)}
    for j in range(1, NUM_JOINTS):
        children[parents[j]].append(j)
    walks: list[tuple[int, np.ndarray, np.ndarray, int]] = []

    def visit(j: int) -> None:
        here = _REST_JOINTS[j]
        if j in _LEAF_TIPS:
            tip = here + np.asarray(_LEAF_TIPS[j])
            walks.append((j, here, tip, j))
            walks.append((j, tip, here, j))
        for c in children[j]:
            walks.append((j, here, _REST_JOINTS[c], c))
            visit(c)
            walks.append((j, _REST_JOINTS[c], here, c))

    visit(0)
    return walks


def _ring_frame(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = direction / max(np.linalg.norm(direction), 1e-9)
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(d, u)


def synthetic_body_arrays(seed: int = 0, ring_size: int = 24, rings: int = 287,
                          num_betas: int = 10) -> dict[str, np.ndarray]:
    """Arrays of a made-up SMPL-layout model: V = rings * ring_size + 2, F = 2 * rings * ring_size."""
    walks = _euler_tour(SMPL_PARENTS)
    if rings < len(walks) or ring_size < 3:
        raise ValueError(f"need rings >= {len(walks)} (one per skeleton walk) and ring_size >= 3")
    rng = np.random.default_rng(seed)
    lengths = np.array([np.linalg.norm(e - s) for _, s, e, _ in walks])
    # every walk gets one ring; the rest go by length
    extra = rings - len(walks)
    share = lengths / lengths.sum() * extra
    counts = 1 + np.floor(share).astype(int)
    for i in np.argsort(-(share - np.floor(share)))[: rings - counts.sum()]:
        counts[i] += 1

    centres, frames_u, frames_w, radii, owners, partners, fracs = [], [], [], [], [], [], []
    for (owner, start, end, partner), count in zip(walks, counts):
        u, w = _ring_frame(end - start)
        is_tip_walk = owner == partner and owner in _LEAF_TIPS
        length = max(float(np.linalg.norm(end - start)), 1e-9)
        for t in np.arange(count) / count:  # t = 1 is the next walk's t = 0
            centre = start + t * (end - start)
            # position along the bone measured from the owner joint (walks back run t the other way)
            frac = float(np.linalg.norm(centre - _REST_JOINTS[owner])) / length
            centres.append(centre)
            frames_u.append(u)
            frames_w.append(w)
            radii.append(_RADIUS[owner] * (1 - 0.6 * frac) if is_tip_walk else _RADIUS[owner])  # tapered tips
            owners.append(owner)
            partners.append(partner)
            fracs.append(frac)
    centres_a = np.asarray(centres)
    angles = 2 * np.pi * np.arange(ring_size) / ring_size
    offsets = np.cos(angles)[None, :, None] * np.asarray(frames_u)[:, None] + \
        np.sin(angles)[None, :, None] * np.asarray(frames_w)[:, None]
    radii_a = np.asarray(radii)
    ring_vertices = centres_a[:, None] + radii_a[:, None, None] * offsets  # (rings, k, 3)
    pole_offset = np.array([0.0, 0.0, 0.01])
    v_template = np.concatenate([
        (_REST_JOINTS[0] - pole_offset)[None], ring_vertices.reshape(-1, 3), (_REST_JOINTS[0] + pole_offset)[None]])
    nv = v_template.shape[0]

    faces = _tube_faces(rings, ring_size)

    # skinning: each ring follows its owner; near the ends of a bone it blends with the neighbour joint
    weights = np.zeros((nv, NUM_JOINTS))
    ring_weights = np.zeros((rings, NUM_JOINTS))
    for i, (owner, partner, frac) in enumerate(zip(owners, partners, fracs)):
        blend_child = 0.5 * np.clip((frac - 0.8) / 0.2, 0, 1) if partner != owner else 0.0
        parent = SMPL_PARENTS[owner]
        blend_parent = 0.5 * np.clip((0.2 - frac) / 0.2, 0, 1) if parent >= 0 else 0.0
        ring_weights[i, owner] += 1 - blend_child - blend_parent
        if blend_child:
            ring_weights[i, partner] += blend_child
        if blend_parent:
            ring_weights[i, parent] += blend_parent
    weights[1:-1] = np.repeat(ring_weights, ring_size, axis=0)
    weights[0, 0] = weights[-1, 0] = 1.0

    # J_regressor: the mean of the rings centred on each joint (exact for a symmetric ring)
    j_regressor = np.zeros((NUM_JOINTS, nv))
    for j in range(NUM_JOINTS):
        on_joint = [i for i, c in enumerate(centres_a) if np.allclose(c, _REST_JOINTS[j], atol=1e-9)]
        if not on_joint:
            raise AssertionError(f"no ring on joint {j}")
        for i in on_joint:
            j_regressor[j, 1 + i * ring_size: 1 + (i + 1) * ring_size] = 1.0
        j_regressor[j] /= j_regressor[j].sum()

    # shape space: height, girth, then smooth random per-joint fields
    shapedirs = np.zeros((nv, 3, num_betas))
    centre_of_each = np.concatenate([centres_a[:1], np.repeat(centres_a, ring_size, axis=0), centres_a[-1:]])
    radial = v_template - centre_of_each
    if num_betas > 0:
        shapedirs[..., 0] = 0.06 * (v_template - _REST_JOINTS[0])
    if num_betas > 1:
        shapedirs[..., 1] = 0.3 * radial
    if num_betas > 2:
        per_joint = rng.normal(0, 0.01, size=(NUM_JOINTS, 3, num_betas - 2))
        shapedirs[..., 2:] = np.einsum("vj,jcb->vcb", weights, per_joint)
    # pose correctives: small, smooth, driven by the rotations of the vertex's own joints
    posedirs = np.zeros((nv, 3, 9 * (NUM_JOINTS - 1)))
    per_joint_pose = rng.normal(0, 0.004, size=(NUM_JOINTS, 3, 9))
    for j in range(1, NUM_JOINTS):
        posedirs[..., 9 * (j - 1): 9 * j] = weights[:, j, None, None] * per_joint_pose[j][None]

    kintree = np.stack([np.array(SMPL_PARENTS, dtype=np.int64), np.arange(NUM_JOINTS)])
    kintree[0, 0] = 2 ** 32 - 1  # as in SMPL's file
    return {
        "v_template": v_template.astype(np.float64), "f": faces.astype(np.uint32),
        "J_regressor": j_regressor, "weights": weights, "shapedirs": shapedirs, "posedirs": posedirs,
        "kintree_table": kintree,
    }


def _tube_faces(rings: int, k: int) -> np.ndarray:
    """Closed tube: first pole (vertex 0), rings of k vertices, last pole; outward-consistent winding."""
    faces = []
    last = rings * k + 1
    for i in range(k):
        faces.append((0, 1 + (i + 1) % k, 1 + i))
    for r in range(rings - 1):
        a, b = 1 + r * k, 1 + (r + 1) * k
        for i in range(k):
            i2 = (i + 1) % k
            faces.append((a + i, a + i2, b + i))
            faces.append((a + i2, b + i2, b + i))
    base = 1 + (rings - 1) * k
    for i in range(k):
        faces.append((last, base + i, base + (i + 1) % k))
    return np.asarray(faces, dtype=np.int64)


def write_synthetic_body_model(path: str | Path, seed: int = 0, ring_size: int = 24, rings: int = 287,
                               num_betas: int = 10) -> Path:
    """Write a plausible made-up body model in SMPL's `.npz` layout; defaults give SMPL's 6890 vertices and
    13776 faces.  Smaller: e.g. ring_size=8, rings=60 (482 vertices).  Not SMPL: for tests and demos only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_body_arrays(seed=seed, ring_size=ring_size, rings=rings, num_betas=num_betas)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------- official .pkl


class _Stub:
    """Stands in for a class the SMPL pickle names (chumpy's Ch, scipy's sparse matrices): it only keeps the
    state dict the pickle hands it; nothing of the original class runs."""

    kind = "stub"

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.state: dict = {}

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
        if not isinstance(state, dict):
            raise ValueError(f"unexpected pickled state for a {self.kind}")
        self.state = state


class _ChumpyArray(_Stub):
    kind = "chumpy array"


class _SparseMatrix(_Stub):
    kind = "sparse matrix"


def _smpl_unpickler_class() -> type:
    from unish_model.benchmarks.safe_unpickle import RestrictedUnpickler

    stubs: dict[tuple[str, str], type] = {("chumpy.ch", "Ch"): _ChumpyArray, ("chumpy", "Ch"): _ChumpyArray}
    for module in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr"):
        stubs[(module, module.rsplit(".", 1)[1].lstrip("_") + "_matrix")] = _SparseMatrix

    def reconstructor(cls: type, base: type, state: object) -> object:
        # protocol 0/1 pickles build objects through copy_reg._reconstructor: allow it for the stubs only
        if cls not in stubs.values() or base is not object or state is not None:
            raise ValueError("refusing copy_reg._reconstructor for anything but SMPL's array types")
        return cls()

    class SmplUnpickler(RestrictedUnpickler):  # type: ignore[misc, valid-type]
        def find_class(self, module: str, name: str) -> object:
            if (module, name) in stubs:
                return stubs[(module, name)]
            if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
                return reconstructor
            if (module, name) in (("__builtin__", "object"), ("builtins", "object")):
                return object  # only as _reconstructor's base argument; a bare object() is inert
            return super().find_class(module, name)

    return SmplUnpickler


def _plain(value: object, key: str) -> np.ndarray:
    if isinstance(value, _ChumpyArray):
        if "x" not in value.state:
            raise ValueError(f"'{key}' is a chumpy expression, not a plain chumpy array")
        return np.asarray(value.state["x"])
    if isinstance(value, _SparseMatrix):
        st = value.state
        shape = tuple(st.get("_shape", st.get("shape", ())))
        data, indices, indptr = (np.asarray(st[k]) for k in ("data", "indices", "indptr"))
        dense = np.zeros(shape, dtype=np.float64)
        compressed_rows = st.get("format", "csc") == "csr"
        for j in range(len(indptr) - 1):
            rows = indices[indptr[j]: indptr[j + 1]]
            if compressed_rows:
                dense[j, rows] = data[indptr[j]: indptr[j + 1]]
            else:
                dense[rows, j] = data[indptr[j]: indptr[j + 1]]
        return dense
    return np.asarray(value)


def smpl_arrays_from_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Read the official SMPL `.pkl` with a restricted unpickler (numpy arrays, builtin containers, and stand-ins
    for chumpy arrays and scipy sparse matrices: no code from the file runs) -> the `.npz` arrays."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            data = _smpl_unpickler_class()(f, encoding="latin1").load()
        except Exception as e:  # noqa: BLE001 - report any refusal or corruption with the file's name
            raise ValueError(f"SMPL pickle {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"SMPL pickle {path}: expected a dict, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise KeyError(f"SMPL pickle {path} has no {', '.join(missing)} (has: {', '.join(sorted(map(str, data)))})")
    try:
        return {k: _plain(data[k], k) for k in REQUIRED_KEYS}
    except (KeyError, ValueError) as e:
        raise ValueError(f"SMPL pickle {path}: {e}") from e


def convert_smpl_pickle(src: str | Path, dst: str | Path) -> Path:
    """Official SMPL `.pkl` -> `.npz` in the layout `BodyModel.from_file` reads (checked by loading it)."""
    arrays = smpl_arrays_from_pickle(src)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    BodyModel.from_file(tmp)  # fails here, naming the problem, rather than at the first use
    tmp.replace(dst)
    return dst


if __name__ == "__main__":  # python -m unish_model.body SRC.pkl DST.npz
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz")
    print(convert_smpl_pickle(sys.argv[1], sys.argv[2]))
