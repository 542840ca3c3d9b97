"""The window runner: UniSH over a sequence one window at a time, stitched into one world frame and one metric scale.

`unish infer` (flows/infer_cmd.py: windows decoded from a video, streamed to disk) and the evaluation
(`unish_model.eval`: benchmark sequences, in memory) both run their windows through `WindowRunner`:

1. a `Predictor` reconstructs the `Window` (its frames at the model size, person boxes, fps) in the window's own
   frame (its first camera) and unit: `UniSHPredictor` runs the model; tests and the evaluation's oracle use
   others;
2. `unish_model.stitch.Stitcher` fits the similarity from that frame to the first window's on the frames two
   windows share (or chains on the cameras across a gap) and keeps the windows' metric estimates;
3. the step says which of the window's frames are new: a frame two windows hold is taken from the earlier one.

After the last window, `WindowRunner.metric_scale()` is the one metric scale (the median of the windows'
estimates); each consumer scales its lengths by it.  `smpl_to_world` turns the camera-frame SMPL of the stitched
frames into the world frame, for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from unish_model.boxes import whole_frame
from unish_model.stitch import StitchedWindow, Stitcher, WindowGeometry, body_to_world

__all__ = [
    "Window", "WindowPrediction", "Predictor", "UniSHPredictor", "WindowStep", "WindowRunner", "smpl_to_world",
]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Window:
    """What a predictor sees: one window of a sequence at the model's input size."""

    sequence: str
    frame_index: NDArray[np.int64]  # (T,) indices into the sequence, increasing
    images: NDArray[np.uint8]  # (T, h, w, 3) RGB
    boxes: NDArray[np.float64] | None  # (T, 4) xyxy person boxes in `images` pixels; None: no person given
    fps: float


@dataclass
class WindowPrediction:
    """One window's reconstruction in its own frame (its first camera) and its own unit.

    world_points / conf / c2w drive the stitching; the rest is optional: depth for video depth, the SMPL arrays for
    motion, everything for `unish infer`'s outputs."""

    world_points: NDArray[np.floating]  # (T, h, w, 3) window frame
    conf: NDArray[np.floating]  # (T, h, w) >= 0 weights for the stitching fit (0: unusable pixel)
    c2w: NDArray[np.floating]  # (T, 4, 4) camera-to-window-frame
    depth: NDArray[np.floating] | None = None  # (T, h', w') (any size: the evaluation resizes it to the GT)
    pose_cam: NDArray[np.floating] | None = None  # (T, 72) axis-angle, root in the camera frame
    betas: NDArray[np.floating] | None = None  # (T, 10)
    trans_cam: NDArray[np.floating] | None = None  # (T, 3) camera frame, as the predictor gives it (see shift)
    shift: NDArray[np.floating] | None = None  # (T,) z-shift in trans_cam (UniSH's, official); None: none
    local_points: NDArray[np.floating] | None = None  # (T, h, w, 3) camera frame, before the z-shift
    point_conf: NDArray[np.floating] | None = None  # (T, h, w) sigmoid confidence
    masks: NDArray[np.bool_] | None = None  # (T, h, w) confident and in front of the camera
    intrinsics: NDArray[np.floating] | None = None  # (T, 3, 3) pixels
    focal: NDArray[np.floating] | None = None  # (T,) relative to the half image diagonal
    metric_scale: float = 1.0  # the window's own estimate of metres per window unit (AlignNet)

    def body_translation(self) -> NDArray[np.floating] | None:
        """trans_cam without the z-shift: the SMPL translation in the camera frame of world_points and c2w."""
        if self.trans_cam is None or self.shift is None:
            return self.trans_cam
        out = np.array(self.trans_cam, copy=True)
        out[:, 2] -= self.shift
        return out


class Predictor(Protocol):
    def __call__(self, window: Window) -> WindowPrediction: ...


@dataclass
class UniSHPredictor:
    """UniSH (`unish_model.pipeline.UniSH`, official or random weights) as a predictor.  Without boxes the whole
    frame is the person box."""

    model: Any
    device: str = "cpu"
    solver: str = "torch"
    box_scale: float = 1.0

    def __call__(self, window: Window) -> WindowPrediction:
        from unish_model.pipeline import person_inputs

        dev = torch.device(self.device)
        images = torch.from_numpy(np.ascontiguousarray(window.images)).to(dev).permute(0, 3, 1, 2).float()
        images = images.div_(255.0)[None]
        t, _, h, w = images.shape[1:]
        boxes = window.boxes if window.boxes is not None else np.tile(whole_frame(h, w), (t, 1))
        patches, bbox_px = person_inputs(images, torch.as_tensor(boxes, dtype=torch.float32, device=dev)[None],
                                         self.box_scale)
        out = self.model.infer(images, patches, bbox_px, fps=window.fps, solver=self.solver)

        def np_(x: torch.Tensor) -> np.ndarray:
            return x[0].detach().float().cpu().numpy()

        point_conf = np_(out.point_conf)
        masks = out.masks[0].cpu().numpy().astype(bool)
        return WindowPrediction(
            world_points=np_(out.world_points), conf=point_conf * masks, c2w=np_(out.c2ws_cano),
            depth=np_(out.depth_map), pose_cam=np_(out.pose_cam), betas=np_(out.betas), trans_cam=np_(out.trans_cam),
            shift=np_(out.shift), local_points=np_(out.local_points), point_conf=point_conf, masks=masks,
            intrinsics=np_(out.intrinsics), focal=np_(out.focal), metric_scale=float(out.scale[0, 0]))


@dataclass
class WindowStep:
    """One window through the runner."""

    index: int  # the window's number in the run, from 0
    window: Window
    prediction: WindowPrediction
    stitched: StitchedWindow  # to_global: window frame -> world frame (before the metric scale), overlap, fit
    new: NDArray[np.bool_]  # (T,) the window's frames no earlier window gave


class WindowRunner:
    """Runs windows in increasing frame order: predict, stitch, mark the new frames.  A gap between windows (a
    window skipped at a shot cut) is allowed: the stitcher chains on the cameras there.

    keep_last: frames of the previous window kept for the next fit (None: all; `window - stride` is enough when
    every window starts `stride` after the previous one)."""

    def __init__(self, predictor: Predictor, keep_last: int | None = None) -> None:
        self.predictor = predictor
        self.stitcher = Stitcher(keep_last=keep_last)
        self.starts: list[int] = []  # first frame of each window
        self.own_scales: list[float] = []  # each prediction's metric_scale
        self._last_frame = -1

    @property
    def results(self) -> list[StitchedWindow]:
        return self.stitcher.results

    def run(self, window: Window) -> WindowStep:
        index = np.asarray(window.frame_index)
        pred = self.predictor(window)
        stitched = self.stitcher.add(WindowGeometry(
            frames=index, c2w=np.asarray(pred.c2w, dtype=np.float64), points=np.asarray(pred.world_points),
            conf=np.asarray(pred.conf), metric_scale=1.0))
        new = index > self._last_frame
        self._last_frame = max(self._last_frame, int(index.max()))
        self.starts.append(int(index[0]))
        self.own_scales.append(float(pred.metric_scale))
        return WindowStep(len(self.starts) - 1, window, pred, stitched, new)

    def metric_scale(self) -> float:
        """Metres per world unit for the whole sequence: the median of the windows' estimates."""
        return self.stitcher.metric_scale()


def smpl_to_world(c2w: ArrayLike, root_cam: ArrayLike, trans_cam: ArrayLike, betas: ArrayLike,
                  body: Any = None) -> tuple[Array, Array]:
    """Camera-frame SMPL -> world frame through the cameras c2w (F, 4, 4): (root rotation (F, 3, 3), translation
    (F, 3)).  The root turns with the camera; SMPL rotates about the shape's rest pelvis, so the translation moves
    as the pelvis does (`unish_model.stitch.body_to_world`).  trans_cam must be the unshifted translation (in the
    frame of the points and cameras).  Without a body model the pelvis is unknown: the official R t + t_c2w."""
    if body is None:
        pelvis = np.zeros(3)
    else:
        shape = torch.as_tensor(np.asarray(betas)).to(body.v_template.dtype)
        pelvis = body.rest_joints(shape)[:, 0].double().numpy()
    return body_to_world(c2w, root_cam, trans_cam, pelvis)
