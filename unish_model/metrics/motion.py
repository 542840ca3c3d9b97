"""World-frame human motion metrics, as GVHMR and WHAM compute them on EMDB-2 and RICH.

Inputs are metres; outputs are per-frame arrays (mm, %, 10 m/s^3) so that a dataset number is
the mean over all frames of all sequences (`aggregate_motion`).

- WA-MPJPE: chunks of `chunk` frames (the last may be shorter); one similarity (with scale)
  fitted on all joints of the chunk, then the mean joint error per frame.
- W-MPJPE: same chunks, but the similarity is fitted on the chunk's first two frames only and
  applied to the whole chunk, so drift inside the chunk shows.
- RTE: root (joint 0) trajectory of the whole sequence, rigidly aligned (no scale); per-frame
  error divided by the length of the GT root path, times 100.
- Jitter: norm of the third finite difference of the predicted joints times fps^3, averaged over
  joints, divided by 10 (so the unit is 10 m/s^3).
- Foot sliding: on frames where a GT foot vertex moves less than 1 cm to the next frame (contact),
  how far the predicted vertex moves (mm).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from unish_model.metrics.align import umeyama

Array = NDArray[np.float64]

M_TO_MM = 1000.0
CHUNK_FRAMES = 100
# SMPL vertices at the heels and toes (GVHMR / WHAM foot-sliding evaluation).
SMPL_FOOT_VERTICES: tuple[int, ...] = (3216, 3387, 6617, 6787)
CONTACT_THRESHOLD_M = 0.01


def _as_frames(x: ArrayLike, name: str) -> Array:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected (frames, points, 3), got {arr.shape}")
    return arr


def _check_pair(pred: ArrayLike, gt: ArrayLike, name: str) -> tuple[Array, Array]:
    p, g = _as_frames(pred, f"pred {name}"), _as_frames(gt, f"gt {name}")
    if p.shape != g.shape:
        raise ValueError(f"{name}: pred {p.shape} and gt {g.shape} differ")
    return p, g


def joints_from_vertices(vertices: ArrayLike, j_regressor: ArrayLike) -> Array:
    """(F, V, 3) vertices and a (J, V) regressor (dense array) -> (F, J, 3) joints."""
    verts = _as_frames(vertices, "vertices")
    reg = np.asarray(j_regressor, dtype=np.float64)
    if reg.ndim != 2 or reg.shape[1] != verts.shape[1]:
        raise ValueError(f"J_regressor {reg.shape} does not match {verts.shape[1]} vertices")
    return np.einsum("jv,fvc->fjc", reg, verts)


def joint_errors(pred: ArrayLike, gt: ArrayLike) -> Array:
    """Per-frame mean Euclidean joint error, in the input unit."""
    p, g = _check_pair(pred, gt, "joints")
    return np.linalg.norm(p - g, axis=-1).mean(axis=-1)


def _chunks(n_frames: int, chunk: int) -> Iterable[slice]:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    for start in range(0, n_frames, chunk):
        yield slice(start, min(n_frames, start + chunk))


def wa_mpjpe(pred: ArrayLike, gt: ArrayLike, chunk: int = CHUNK_FRAMES) -> Array:
    """Per-frame WA-MPJPE (mm): one similarity per chunk over all its joints."""
    p, g = _check_pair(pred, gt, "joints")
    out = []
    for sl in _chunks(len(p), chunk):
        sim = umeyama(p[sl], g[sl], with_scale=True)
        out.append(joint_errors(sim.apply(p[sl]), g[sl]))
    return np.concatenate(out) * M_TO_MM if out else np.zeros(0)


def w_mpjpe(pred: ArrayLike, gt: ArrayLike, chunk: int = CHUNK_FRAMES) -> Array:
    """Per-frame W-MPJPE (mm): the similarity is fitted on the first two frames of each chunk."""
    p, g = _check_pair(pred, gt, "joints")
    out = []
    for sl in _chunks(len(p), chunk):
        head = slice(sl.start, min(sl.start + 2, sl.stop))
        sim = umeyama(p[head], g[head], with_scale=True)
        out.append(joint_errors(sim.apply(p[sl]), g[sl]))
    return np.concatenate(out) * M_TO_MM if out else np.zeros(0)


def rte(pred_root: ArrayLike, gt_root: ArrayLike) -> Array:
    """Per-frame root translation error (%) of (F, 3) trajectories, rigid alignment, no scale."""
    p = np.asarray(pred_root, dtype=np.float64)
    g = np.asarray(gt_root, dtype=np.float64)
    if p.ndim != 2 or p.shape[-1] != 3 or p.shape != g.shape:
        raise ValueError(f"rte: expected two (frames, 3) trajectories, got {p.shape}, {g.shape}")
    path_length = float(np.linalg.norm(np.diff(g, axis=0), axis=-1).sum())
    if path_length <= 0:
        raise ValueError("rte: the GT root does not move; RTE is undefined")
    aligned = umeyama(p, g, with_scale=False).apply(p)
    return np.linalg.norm(aligned - g, axis=-1) / path_length * 100.0


def jitter(joints: ArrayLike, fps: float = 30.0) -> Array:
    """Per-frame jitter (10 m/s^3) of (F, J, 3) joints in metres: F-3 values."""
    j = _as_frames(joints, "joints")
    third = j[3:] - 3 * j[2:-1] + 3 * j[1:-2] - j[:-3]
    return np.linalg.norm(third * fps**3, axis=-1).mean(axis=-1) / 10.0


def foot_sliding(
    pred_vertices: ArrayLike,
    gt_vertices: ArrayLike,
    foot_vertices: Sequence[int] = SMPL_FOOT_VERTICES,
    threshold: float = CONTACT_THRESHOLD_M,
) -> Array:
    """Predicted foot-vertex displacement (mm) on every (frame, vertex) the GT marks as contact."""
    p, g = _check_pair(pred_vertices, gt_vertices, "vertices")
    idx = list(foot_vertices)
    gt_disp = np.linalg.norm(np.diff(g[:, idx], axis=0), axis=-1)
    pred_disp = np.linalg.norm(np.diff(p[:, idx], axis=0), axis=-1)
    return pred_disp[gt_disp < threshold] * M_TO_MM


def global_motion_metrics(
    pred_joints: ArrayLike,
    gt_joints: ArrayLike,
    pred_vertices: ArrayLike | None = None,
    gt_vertices: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    fps: float = 30.0,
    chunk: int = CHUNK_FRAMES,
) -> dict[str, Array]:
    """Per-frame arrays for one sequence: wa_mpjpe, w_mpjpe, rte, jitter, and fs with vertices.

    `mask` (F,) drops bad frames first (EMDB's good_frames_mask); the rest is treated as one
    contiguous sequence, as the peers do. Joint 0 is the root.
    """
    pj, gj = _check_pair(pred_joints, gt_joints, "joints")
    keep = None if mask is None else np.asarray(mask, dtype=bool)
    if keep is not None:
        if keep.shape != (len(pj),):
            raise ValueError(f"mask {keep.shape} does not match {len(pj)} frames")
        pj, gj = pj[keep], gj[keep]
    out: dict[str, Array] = {
        "wa_mpjpe": wa_mpjpe(pj, gj, chunk),
        "w_mpjpe": w_mpjpe(pj, gj, chunk),
        "rte": rte(pj[:, 0], gj[:, 0]),
        "jitter": jitter(pj, fps),
    }
    if (pred_vertices is None) != (gt_vertices is None):
        raise ValueError("give both pred and gt vertices for foot sliding, or neither")
    if pred_vertices is not None and gt_vertices is not None:
        pv, gv = _check_pair(pred_vertices, gt_vertices, "vertices")
        if keep is not None:
            pv, gv = pv[keep], gv[keep]
        out["fs"] = foot_sliding(pv, gv)
    return out


def aggregate_motion(per_sequence: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Dataset numbers: for each metric, the mean over all frames of all sequences."""
    pooled: dict[str, list[Array]] = {}
    for seq in per_sequence:
        for key, values in seq.items():
            pooled.setdefault(key, []).append(np.asarray(values, dtype=np.float64).reshape(-1))
    out: dict[str, float] = {}
    for key, parts in pooled.items():
        allv = np.concatenate(parts)
        out[key] = float(allv.mean()) if allv.size else float("nan")
    return out
