"""Stitch per-window reconstructions into one world frame and one metric scale.

UniSH (like pi3) reconstructs each window of 30 frames in its own world frame (the window's first camera) and
its own unit; AlignNet then gives each window its own metric scale.  The official demo concatenates windows as
they are.  Here consecutive windows share a few frames, and the overlap ties them together:

1. For the frames two windows share, the same pixel is the same surface point in both windows' point maps.
   A weighted, outlier-trimmed Umeyama fit on those pairs gives the similarity S_k (scale, rotation,
   translation) that maps window k's frame onto the stitched ("global") frame, which is window 0's.
2. Window k's metric scale m_k (metres per window-k unit) says one global unit is m_k / s_k metres.  The
   stitched sequence uses one metric scale M, the median over windows of m_k / s_k.
3. Every length (points, camera centres, SMPL translations) of window k becomes M * s_k * (R_k x + t_k) in
   metres; rotations compose with R_k; intrinsics are unchanged.

Without shared frames (stride >= window) there is nothing to fit: the new window's first camera is placed on the
previous window's last camera, and its unit is taken from the metric scales (m_k / M).

All arrays are numpy float64 inside; pure functions plus `Stitcher`, a small state holder for streaming
windows one at a time (it keeps only the previous window's overlap frames).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from unish_model.metrics.align import Similarity

__all__ = [
    "Similarity", "umeyama", "robust_umeyama", "similarity_matrix", "similarity_from_matrix", "compose",
    "inverse", "transform_poses", "overlap_pairs", "WindowGeometry", "StitchedWindow", "Stitcher",
    "stitch_windows", "body_to_world",
]

Array = NDArray[np.float64]


# ----------------------------------------------------------------------------------------------- similarities


def umeyama(src: ArrayLike, dst: ArrayLike, weights: ArrayLike | None = None, with_scale: bool = True) -> Similarity:
    """Weighted least-squares similarity with dst ~ s R src + t (Umeyama 1991; det R = +1).

    src, dst (..., 3) are flattened into one set; weights (...) >= 0 (None: all 1)."""
    x = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    y = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if x.shape != y.shape:
        raise ValueError(f"umeyama: src has {x.shape[0]} points, dst has {y.shape[0]}")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (len(x),) or (w < 0).any():
        raise ValueError("umeyama: need one non-negative weight per point")
    total = w.sum()
    if len(x) < 3 or total <= 0:
        raise ValueError(f"umeyama: need at least 3 weighted points, got {len(x)} (weight {total:g})")
    w = w / total
    mx, my = w @ x, w @ y
    x0, y0 = x - mx, y - my
    cov = (y0 * w[:, None]).T @ x0
    u, d, vt = np.linalg.svd(cov)
    fix = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[2] = -1.0
    rot = (u * fix) @ vt
    var_x = float(w @ (x0**2).sum(1))
    scale = float((d * fix).sum() / var_x) if with_scale and var_x > 0 else 1.0
    return Similarity(scale=scale, rotation=rot, translation=my - scale * rot @ mx)


def robust_umeyama(src: ArrayLike, dst: ArrayLike, weights: ArrayLike | None = None, with_scale: bool = True,
                   iterations: int = 4, inlier_factor: float = 3.0) -> tuple[Similarity, NDArray[np.bool_]]:
    """Umeyama, refitted on the pairs whose residual is within `inlier_factor` x the weighted median residual
    (floored at 1e-9 of the set's spread); returns the fit and the final inlier mask."""
    x = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    y = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    inliers = w > 0
    sim = umeyama(x[inliers], y[inliers], w[inliers], with_scale)
    spread = float(np.sqrt(((y - y.mean(0)) ** 2).sum(1).mean())) + 1e-12
    for _ in range(iterations):
        residual = np.linalg.norm(sim.apply(x) - y, axis=1)
        cutoff = inlier_factor * max(_weighted_median(residual[w > 0], w[w > 0]), 1e-9 * spread)
        new = (w > 0) & (residual <= cutoff)
        if new.sum() < 3 or (new == inliers).all():
            break
        inliers = new
        sim = umeyama(x[inliers], y[inliers], w[inliers], with_scale)
    return sim, inliers


def _weighted_median(values: Array, weights: Array) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def similarity_matrix(sim: Similarity) -> Array:
    """4x4 [[s R, t], [0, 1]]."""
    m = np.eye(4)
    m[:3, :3] = sim.scale * sim.rotation
    m[:3, 3] = sim.translation
    return m


def similarity_from_matrix(m: ArrayLike) -> Similarity:
    m = np.asarray(m, dtype=np.float64)
    scale = float(np.cbrt(np.linalg.det(m[:3, :3])))
    return Similarity(scale=scale, rotation=m[:3, :3] / scale, translation=m[:3, 3].copy())


def compose(a: Similarity, b: Similarity) -> Similarity:
    """a after b: x -> a(b(x))."""
    return Similarity(scale=a.scale * b.scale, rotation=a.rotation @ b.rotation,
                      translation=a.scale * a.rotation @ b.translation + a.translation)


def inverse(a: Similarity) -> Similarity:
    rt = a.rotation.T
    return Similarity(scale=1.0 / a.scale, rotation=rt, translation=-(rt @ a.translation) / a.scale)


def transform_poses(sim: Similarity, c2w: ArrayLike) -> Array:
    """Camera-to-world poses (..., 4, 4) moved by a similarity: rotations turn, centres move and scale.
    The camera frame keeps its own scale, so (camera-frame) local points must be scaled by sim.scale too."""
    p = np.asarray(c2w, dtype=np.float64)
    out = np.array(p, copy=True)
    out[..., :3, :3] = sim.rotation @ p[..., :3, :3]
    out[..., :3, 3] = sim.apply(p[..., :3, 3])
    return out


# ----------------------------------------------------------------------------------------------- windows


@dataclass
class WindowGeometry:
    """One window's reconstruction in its own world frame and unit."""

    frames: NDArray[np.int64]  # (T,) global frame indices, increasing
    c2w: Array  # (T, 4, 4) camera-to-world in the window's frame
    points: Array  # (T, H, W, 3) world points in the window's frame
    conf: Array  # (T, H, W) non-negative weights (e.g. sigmoid of the confidence logits)
    metric_scale: float = 1.0  # metres per window unit (1.0 if the window is already metric)


@dataclass
class StitchedWindow:
    to_global: Similarity  # window frame -> global frame (global unit = window 0's unit)
    metres_per_unit: float  # this window's estimate of metres per global unit: m_k / s_k
    overlap: int  # frames shared with the previous window (0 for the first or a chained window)
    inlier_share: float = 1.0  # share of the overlap pairs the robust fit kept
    residual_rms: float = 0.0  # RMS of the inlier residuals, global units

    def to_dict(self) -> dict[str, float | int]:
        return {"scale": self.to_global.scale, "metres_per_unit": self.metres_per_unit, "overlap": self.overlap,
                "inlier_share": self.inlier_share, "residual_rms": self.residual_rms}


def overlap_pairs(prev_frames: ArrayLike, new_frames: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices (into prev, into new) of the frames both windows hold."""
    prev_f, new_f = np.asarray(prev_frames), np.asarray(new_frames)
    _, i_prev, i_new = np.intersect1d(prev_f, new_f, assume_unique=True, return_indices=True)
    return i_prev.astype(np.int64), i_new.astype(np.int64)


def _subsample(n: int, max_points: int) -> NDArray[np.int64]:
    # a fixed stride keeps the result a pure function of its inputs
    step = max(1, int(np.ceil(n / max_points)))
    return np.arange(0, n, step)


@dataclass
class Stitcher:
    """Streams windows in order; keeps only the previous window's (last `keep_last`) frames, points and
    confidences, in the global frame.

    add(window) -> StitchedWindow; metric_scale() -> the one metric scale (metres per global unit)."""

    max_points: int = 50_000  # pairs used per fit
    min_conf: float = 0.0  # pairs with a lower weight in either window are ignored
    keep_last: int | None = None  # frames of the previous window kept for the next fit (None: all)
    iterations: int = 4
    inlier_factor: float = 3.0
    results: list[StitchedWindow] = field(default_factory=list)
    _prev: WindowGeometry | None = None  # previous window, already in the global frame

    def add(self, window: WindowGeometry) -> StitchedWindow:
        if self._prev is None:
            result = StitchedWindow(Similarity(1.0, np.eye(3), np.zeros(3)), float(window.metric_scale), 0)
        else:
            result = self._align(self._prev, window)
        self.results.append(result)
        # only the tail the next window can share, in the input's precision: memory stays below one window
        tail = slice(-self.keep_last if self.keep_last else None, None)
        points = np.asarray(window.points)
        dtype = points.dtype if points.dtype in (np.float32, np.float64) else np.float64
        self._prev = WindowGeometry(
            frames=np.asarray(window.frames)[tail], c2w=transform_poses(result.to_global, window.c2w[tail]),
            points=result.to_global.apply(points[tail]).astype(dtype),
            conf=np.asarray(window.conf[tail], dtype=dtype), metric_scale=result.metres_per_unit)
        return result

    def _align(self, prev: WindowGeometry, new: WindowGeometry) -> StitchedWindow:
        i_prev, i_new = overlap_pairs(prev.frames, new.frames)
        if len(i_new) == 0:
            return self._chain(prev, new)
        src = np.asarray(new.points, dtype=np.float64)[i_new].reshape(-1, 3)
        dst = np.asarray(prev.points, dtype=np.float64)[i_prev].reshape(-1, 3)
        w = np.minimum(np.asarray(new.conf, dtype=np.float64)[i_new].reshape(-1),
                       np.asarray(prev.conf, dtype=np.float64)[i_prev].reshape(-1))
        finite = np.isfinite(src).all(1) & np.isfinite(dst).all(1) & np.isfinite(w)
        keep = np.flatnonzero(finite & (w > self.min_conf))
        keep = keep[_subsample(len(keep), self.max_points)]
        if len(keep) < 3:
            return self._chain(prev, new)
        sim, inliers = robust_umeyama(src[keep], dst[keep], w[keep], iterations=self.iterations,
                                      inlier_factor=self.inlier_factor)
        residual = np.linalg.norm(sim.apply(src[keep][inliers]) - dst[keep][inliers], axis=1)
        return StitchedWindow(sim, float(new.metric_scale) / sim.scale, len(i_new), float(inliers.mean()),
                              float(np.sqrt((residual**2).mean())))

    def _chain(self, prev: WindowGeometry, new: WindowGeometry) -> StitchedWindow:
        # no shared frames: put the new first camera on the previous last one, unit from the metric scales
        scale = float(new.metric_scale) / prev.metric_scale
        last = np.asarray(prev.c2w[-1], dtype=np.float64)
        first = np.asarray(new.c2w[0], dtype=np.float64)
        rot = last[:3, :3] @ first[:3, :3].T
        sim = Similarity(scale, rot, last[:3, 3] - scale * rot @ first[:3, 3])
        return StitchedWindow(sim, prev.metric_scale, 0)

    def metric_scale(self) -> float:
        """The stitched sequence's metres per global unit: median of the windows' estimates."""
        if not self.results:
            raise ValueError("no windows stitched yet")
        return float(np.median([r.metres_per_unit for r in self.results]))


def stitch_windows(windows: list[WindowGeometry], **options: float) -> tuple[list[StitchedWindow], float]:
    """All windows at once: per-window similarities to the global frame and the one metric scale."""
    stitcher = Stitcher(**options)  # type: ignore[arg-type]
    results = [stitcher.add(w) for w in windows]
    return results, stitcher.metric_scale()


# ----------------------------------------------------------------------------------------------- bodies


def body_to_world(c2w: ArrayLike, orient_cam: ArrayLike, transl_cam: ArrayLike,
                  pelvis_rest: ArrayLike) -> tuple[Array, Array]:
    """SMPL parameters in a camera frame -> world frame through the rigid c2w (..., 4, 4).

    SMPL rotates about the rest pelvis j0 (which depends on betas), so for v_world = R v_cam + t:
    orient_world = R @ orient_cam and transl_world = R (transl_cam + j0) + t - j0."""
    c2w = np.asarray(c2w, dtype=np.float64)
    rot, t = c2w[..., :3, :3], c2w[..., :3, 3]
    j0 = np.asarray(pelvis_rest, dtype=np.float64)
    orient = rot @ np.asarray(orient_cam, dtype=np.float64)
    transl = np.einsum("...ij,...j->...i", rot, np.asarray(transl_cam, dtype=np.float64) + j0) + t - j0
    return orient, transl
