"""Windows for the evaluation: how a benchmark sequence is cut into model windows and sized, and the in-memory run
of a whole sequence through the window runner (`unish_model.runner.WindowRunner`).

A sequence is cut into windows of `window` frames (30: UniSH is trained on 30) whose starts are `stride` frames
apart (25); a last window is added, flush with the end, when the stride does not land there, so consecutive
windows share `window - stride` frames (at least 5) for the stitching.  `window >= frames` gives one pass over the
whole sequence (pi3's own video-depth evaluation feeds all 110 Bonn frames at once).  Frames are resized, aspect
kept, so the long side is `long_side` (518) and the short side is floored to a multiple of 14 (as pi3's evaluation
loader does).  After stitching, every length of window k is multiplied by its stitching scale s_k and the
sequence's one metric scale, so the whole sequence shares one unit, metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numpy.typing import NDArray

from unish_model.runner import Predictor, Window, WindowRunner
from unish_model.stitch import transform_poses

__all__ = ["Log", "WindowConfig", "model_input_size", "plan_windows", "StitchedSequence", "run_windows"]

Array = NDArray[np.float64]
Log = Callable[[str], None]


def quiet(_: str) -> None:
    """The default log: says nothing."""


@dataclass(frozen=True)
class WindowConfig:
    """How a sequence is cut into model windows and sized (see the module docstring)."""

    window: int = 30  # frames per window (UniSH is trained on 30)
    stride: int = 25  # frames between window starts: window - stride frames are shared for stitching
    long_side: int = 518  # model input, long side; the short side keeps the aspect, floored to a multiple of 14

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.stride <= self.window:
            raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window {self.window}, "
                             f"stride {self.stride}")
        if self.long_side < 14 or self.long_side % 14:
            raise ValueError(f"long_side must be a multiple of 14, got {self.long_side}")


def model_input_size(height: int, width: int, long_side: int = 518) -> tuple[int, int]:
    """(h, w) for the model: the long side becomes `long_side`, the short side keeps the aspect, floored to a
    multiple of 14 (at least 14)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"bad image size {width}x{height}")
    short = min(height, width) * long_side / max(height, width)
    short_14 = max(14, int(math.floor(short / 14 + 1e-9)) * 14)
    return (long_side, short_14) if height >= width else (short_14, long_side)


def plan_windows(n_frames: int, window: int, stride: int) -> list[NDArray[np.int64]]:
    """Frame indices of each window: starts 0, stride, 2 stride, ...; a last window flush with the end when the
    stride does not land there; one window of everything when the sequence is not longer than a window."""
    if n_frames < 1:
        raise ValueError("a sequence needs at least one frame")
    if n_frames <= window:
        return [np.arange(n_frames, dtype=np.int64)]
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return [np.arange(s, s + window, dtype=np.int64) for s in starts]


@dataclass
class StitchedSequence:
    """Per-frame results of a whole sequence in one world frame (the first window's first camera), metres."""

    n_frames: int
    c2w: Array  # (F, 4, 4)
    depth: NDArray[np.float32] | None  # (F, h, w)
    pose_cam: Array | None  # (F, 72)
    betas: Array | None  # (F, B)
    trans_cam: Array | None  # (F, 3) camera frame, in the sequence's metres
    metric_scale: float  # metres per stitched unit (median of the windows' estimates)
    window_starts: list[int]
    window_stats: list[dict[str, float | int]]


def run_windows(sequence: str, n_frames: int, load: Callable[[NDArray[np.int64]], tuple[NDArray[np.uint8],
                NDArray[np.float64] | None]], predictor: Predictor, config: WindowConfig, fps: float,
                log: Log = quiet) -> StitchedSequence:
    """Cut `n_frames` into windows, predict each (`load(indices)` gives model-size images and boxes), stitch."""
    runner = WindowRunner(predictor)
    unit = np.full(n_frames, np.nan)  # s_k of the window each frame was taken from
    c2w = np.tile(np.eye(4), (n_frames, 1, 1))
    arrays: dict[str, np.ndarray] = {}
    plan = plan_windows(n_frames, config.window, config.stride)
    for k, index in enumerate(plan):
        images, boxes = load(index)
        step = runner.run(Window(sequence, index, images, boxes, fps))
        pred, sim, new = step.prediction, step.stitched.to_global, step.new
        take = index[new]
        unit[take] = sim.scale
        c2w[take] = transform_poses(sim, np.asarray(pred.c2w, dtype=np.float64)[new])
        per_frame = {"depth": pred.depth, "pose_cam": pred.pose_cam, "betas": pred.betas,
                     "trans_cam": pred.body_translation()}
        for name, value in per_frame.items():
            if value is None:
                continue
            value = np.asarray(value)
            if name not in arrays:
                dtype = np.float32 if name == "depth" else np.float64
                arrays[name] = np.full((n_frames, *value.shape[1:]), np.nan, dtype=dtype)
            arrays[name][take] = value[new]  # lengths get the window's factor (s_k times metres) at the end
        if k % 10 == 0 or k == len(plan) - 1:  # long sequences have ~100 windows: a line every tenth
            log(f"{sequence}: window {k + 1}/{len(plan)} frames {index[0]}-{index[-1]}, "
                f"scale to world {sim.scale:.4f}")
    metres = runner.metric_scale()
    c2w[:, :3, 3] *= metres
    factor = metres * unit
    if "depth" in arrays:
        arrays["depth"] *= factor.astype(np.float32)[:, None, None]
    if "trans_cam" in arrays:
        arrays["trans_cam"] *= factor[:, None]
    return StitchedSequence(
        n_frames=n_frames, c2w=c2w, depth=arrays.get("depth"), pose_cam=arrays.get("pose_cam"),
        betas=arrays.get("betas"), trans_cam=arrays.get("trans_cam"), metric_scale=metres,
        window_starts=list(runner.starts), window_stats=[r.to_dict() for r in runner.results])
