"""Closed-form point-set alignment (Umeyama), as the motion benchmarks use it.

`umeyama(src, dst)` returns the similarity (or rigid transform) that maps `src` onto `dst` in the
least-squares sense: dst ~ s * R @ src + t. Everything is float64 numpy: these sets are small
(a chunk of 100 frames x 24 joints), and the metric should not depend on float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation."""

    scale: float
    rotation: Array  # (3, 3), det +1
    translation: Array  # (3,)

    def apply(self, points: ArrayLike) -> Array:
        """Transform points of shape (..., 3)."""
        pts = np.asarray(points, dtype=np.float64)
        return self.scale * pts @ self.rotation.T + self.translation


def umeyama(src: ArrayLike, dst: ArrayLike, with_scale: bool = True) -> Similarity:
    """Least-squares similarity (with_scale) or rigid transform taking src (..., 3) onto dst.

    All leading dimensions are flattened into one point set. Follows Umeyama (1991): the
    rotation comes from the SVD of the cross-covariance, with a reflection fix so det(R) = +1.
    """
    x = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    y = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if x.shape != y.shape:
        raise ValueError(f"umeyama: src has {x.shape[0]} points, dst has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("umeyama: empty point sets")
    mx, my = x.mean(axis=0), y.mean(axis=0)
    x0, y0 = x - mx, y - my
    n = x.shape[0]
    cov = y0.T @ x0 / n
    u, d, vt = np.linalg.svd(cov)
    fix = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[2] = -1.0
    rot = (u * fix) @ vt
    if with_scale:
        var_x = float((x0**2).sum() / n)
        # A source collapsed to one point: any scale fits equally well; keep 1 so nothing blows up.
        scale = float((d * fix).sum() / var_x) if var_x > 0 else 1.0
    else:
        scale = 1.0
    trans = my - scale * rot @ mx
    return Similarity(scale=scale, rotation=rot, translation=trans)


def align_points(src: ArrayLike, dst: ArrayLike, with_scale: bool = True) -> Array:
    """src (..., 3) moved onto dst by the best similarity (or rigid) transform over all points."""
    return umeyama(src, dst, with_scale=with_scale).apply(src)
