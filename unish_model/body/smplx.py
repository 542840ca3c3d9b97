"""SMPL-X vertices, for RICH's and BEDLAM's ground truth: the official `SMPLX_<GENDER>.npz` arrays (read without
pickle) posed by the same kinematic chain and linear blend skinning as SMPL (`model.linear_blend_skinning`), over 55
joints.

`vertices` (RICH): jaw, eyes and expression stay at zero; the hands take the model's mean pose (`hands_meanl` /
`hands_meanr`, zero when the file has none: GVHMR's `rich-smplx` uses flat_hand_mean=False); betas as given.
`posed_vertices` (BEDLAM): every joint's rotation as given, the full 55-joint pose (SMPL-X's order: root, 21 body,
jaw, left eye, right eye, 15 left-hand, 15 right-hand joints), no hand mean added (flat_hand_mean=True), zero
expression.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike

from unish_model.body.model import linear_blend_skinning
from unish_model.geometry import axis_angle_to_matrix

__all__ = ["SMPLX_JOINTS", "SmplxModel"]

SMPLX_JOINTS = 55


@dataclass
class SmplxModel:
    """SMPL-X in float64: `vertices(global_orient, body_pose, betas, transl)`."""

    v_template: torch.Tensor  # (V, 3)
    shapedirs: torch.Tensor  # (V, 3, B)
    posedirs: torch.Tensor  # ((J-1)*9, V*3)
    j_regressor: torch.Tensor  # (J, V)
    weights: torch.Tensor  # (V, J)
    parents: list[int]
    hands_mean: torch.Tensor  # (30, 3): 15 left-hand joints then 15 right

    @classmethod
    def from_file(cls, path: str | Path) -> SmplxModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SMPL-X model {path} not found")
        with np.load(path, allow_pickle=False) as data:
            def get(key: str) -> np.ndarray:
                if key not in data.files:
                    raise KeyError(f"SMPL-X model {path} has no '{key}' array")
                return np.asarray(data[key])
            v = get("v_template").astype(np.float64)
            n = v.shape[0]
            parents = get("kintree_table")[0].astype(np.int64)
            hands = [np.asarray(data[k], np.float64).reshape(-1) if k in data.files else np.zeros(45)
                     for k in ("hands_meanl", "hands_meanr")]
            shapedirs, posedirs = get("shapedirs").astype(np.float64), get("posedirs").astype(np.float64)
            jreg, weights = get("J_regressor").astype(np.float64), get("weights").astype(np.float64)
        if len(parents) != SMPLX_JOINTS:
            raise ValueError(f"SMPL-X model {path}: {len(parents)} joints, expected {SMPLX_JOINTS}")
        parents[0] = -1
        if posedirs.shape != (n, 3, 9 * (SMPLX_JOINTS - 1)) or jreg.shape != (SMPLX_JOINTS, n) or \
                weights.shape != (n, SMPLX_JOINTS) or shapedirs.shape[:2] != (n, 3):
            raise ValueError(f"SMPL-X model {path}: arrays do not fit {n} vertices and {SMPLX_JOINTS} joints")
        t = torch.from_numpy
        return cls(t(v), t(shapedirs), t(posedirs.reshape(n * 3, -1).T.copy()), t(jreg), t(weights),
                   [int(p) for p in parents], t(np.concatenate(hands).reshape(30, 3)))

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[-1])

    def vertices(self, global_orient: ArrayLike, body_pose: ArrayLike, betas: ArrayLike, transl: ArrayLike
                 ) -> torch.Tensor:
        """(N, V, 3) float64 from (N, 3), (N, 63), (N, b) or (b,), (N, 3); hands at the model's mean pose."""
        go = torch.as_tensor(np.asarray(global_orient), dtype=torch.float64).reshape(-1, 3)
        n = go.shape[0]
        body = torch.as_tensor(np.asarray(body_pose), dtype=torch.float64).reshape(n, 21, 3)
        full = torch.cat([go[:, None], body, torch.zeros(n, 3, 3, dtype=torch.float64),
                          self.hands_mean.expand(n, 30, 3)], dim=1)
        return self.posed_vertices(full, betas, transl)

    def posed_vertices(self, full_pose: ArrayLike, betas: ArrayLike, transl: ArrayLike) -> torch.Tensor:
        """(N, V, 3) float64 from the full pose (N, 165) or (N, 55, 3) axis-angle (every joint as given, no hand
        mean added), betas (N, b) or (b,), transl (N, 3)."""
        pose = torch.as_tensor(np.asarray(full_pose), dtype=torch.float64)
        n = pose.shape[0]
        if pose.numel() != n * SMPLX_JOINTS * 3:
            raise ValueError(f"SMPL-X full pose must be (N, {SMPLX_JOINTS * 3}) or (N, {SMPLX_JOINTS}, 3), "
                             f"got {tuple(pose.shape)}")
        b = torch.as_tensor(np.asarray(betas), dtype=torch.float64)
        b = b.expand(n, b.shape[-1]) if b.ndim == 1 else b.reshape(n, -1)
        if b.shape[-1] > self.num_betas:
            raise ValueError(f"{b.shape[-1]} betas given, the SMPL-X model has {self.num_betas} shape directions")
        verts, _, _ = linear_blend_skinning(axis_angle_to_matrix(pose.reshape(n, SMPLX_JOINTS, 3)), b,
                                            self.v_template, self.shapedirs, self.posedirs, self.j_regressor,
                                            self.weights, self.parents)
        return verts + torch.as_tensor(np.asarray(transl), dtype=torch.float64).reshape(n, 1, 3)
