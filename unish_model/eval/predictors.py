"""Predictors besides UniSH (`unish_model.runner.UniSHPredictor`) for the evaluation: `GroundTruthPredictor` returns
the ground truth (the `--oracle` plumbing check: zero error), and, fed with distorted arrays, tests the metrics'
response to a known error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from unish_model.eval.motion import SmplParams
from unish_model.runner import Window, WindowPrediction

__all__ = ["GroundTruthPredictor"]

Array = NDArray[np.float64]


def _static_scene(height: int, width: int) -> Array:
    """(h, w, 3) points of a bumpy wall 2-4 m in front of a camera at the origin: geometry for a fake predictor
    (every window sees the same points, so the stitching fit is the identity)."""
    v, u = np.meshgrid((np.arange(height) + 0.5) / height - 0.5, (np.arange(width) + 0.5) / width - 0.5,
                       indexing="ij")
    depth = 3.0 + 0.5 * np.sin(7 * u) * np.cos(5 * v) + u
    return np.stack([u * depth, v * depth, depth], axis=-1)


def _pinhole_points(depth: Array) -> Array:
    """(T, H, W) depth -> camera-frame points with a made-up pinhole (focal = W, centred)."""
    t, h, w = depth.shape
    v, u = np.meshgrid(np.arange(h) + 0.5 - h / 2, np.arange(w) + 0.5 - w / 2, indexing="ij")
    return np.stack([u / w * depth, v / w * depth, depth], axis=-1)


@dataclass
class GroundTruthPredictor:
    """Returns the ground truth as its prediction: a test of the plumbing (the metrics must come out zero, up to
    the depth protocol's Adam step), or, fed with distorted arrays, of the metrics' response to a known error.

    depth_of(sequence) -> (F, H, W) metres; smpl_of(sequence) -> world `SmplParams`.  The cameras are the identity
    (camera frame = world), so the SMPL parameters pass through unchanged."""

    depth_of: Callable[[str], Array] | None = None
    smpl_of: Callable[[str], SmplParams] | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def _get(self, kind: str, sequence: str, fn: Callable[[str], Any]) -> Any:
        key = f"{kind}:{sequence}"
        if key not in self._cache:
            self._cache.clear()  # one sequence at a time
            self._cache[key] = fn(sequence)
        return self._cache[key]

    def __call__(self, window: Window) -> WindowPrediction:
        idx = window.frame_index
        t = len(idx)
        depth = None
        if self.depth_of is not None:
            depth = np.asarray(self._get("depth", window.sequence, self.depth_of), dtype=np.float64)[idx]
            points, conf = _pinhole_points(depth), (depth > 0).astype(np.float64)
        else:
            h, w = window.images.shape[1:3]
            points = np.broadcast_to(_static_scene(h, w), (t, h, w, 3)).copy()
            conf = np.ones((t, h, w))
        out = WindowPrediction(world_points=points, conf=conf, c2w=np.tile(np.eye(4), (t, 1, 1)), depth=depth)
        if self.smpl_of is not None:
            smpl = self._get("smpl", window.sequence, self.smpl_of).take(idx)
            out.pose_cam = np.concatenate([smpl.global_orient, smpl.body_pose], axis=1)
            out.betas, out.trans_cam = smpl.betas, smpl.transl
        return out
