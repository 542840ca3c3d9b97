"""World motion (EMDB-2, RICH), as GVHMR / WHAM measure it.

Every frame at the dataset's rate (30 fps), windows as `windows.py` cuts them, the person boxes of the sequence
scaled to the model size.  Per window: camera-frame SMPL (pose, betas, unshifted translation) and cameras; after
stitching, the root turns with the stitched camera and the translation moves as the pelvis does
(`unish_model.runner.smpl_to_world`), the camera-frame translation scaled by the window's factor to the sequence's
metres.  Joints: the evaluation J_regressor (of the SMPL model given) on the posed vertices, for prediction and
ground truth alike; then `unish_model.metrics.motion` (chunks of 100 frames, the dataset's frame mask).  Per
sequence the mean of the per-frame metrics; the dataset number is the mean over all frames of all sequences.
The datasets' own glue (layout checks, ground truth, boxes) is next to their readers: `unish_model.benchmarks.emdb`
and `unish_model.benchmarks.rich`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from unish_model.body import BodyModel
from unish_model.eval.frames import FrameSource, resize_frames
from unish_model.eval.results import BenchmarkResult, SequenceResult, Sink
from unish_model.eval.windows import Log, StitchedSequence, WindowConfig, model_input_size, quiet, run_windows
from unish_model.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from unish_model.metrics.motion import SMPL_FOOT_VERTICES, aggregate_motion, foot_sliding, global_motion_metrics
from unish_model.runner import Predictor, smpl_to_world

__all__ = [
    "MOTION_COLUMNS", "SmplParams", "MotionSequence", "predict_motion", "world_smpl", "smpl_joints",
    "motion_per_frame", "evaluate_motion",
]

Array = NDArray[np.float64]
MOTION_COLUMNS = ("wa_mpjpe", "w_mpjpe", "rte", "jitter", "fs")


@dataclass(frozen=True)
class SmplParams:
    """SMPL parameters per frame (axis-angle), in one frame of reference."""

    global_orient: Array  # (F, 3)
    body_pose: Array  # (F, 69)
    betas: Array  # (F, B)
    transl: Array  # (F, 3)

    def __post_init__(self) -> None:
        n = len(self.global_orient)
        for name in ("body_pose", "betas", "transl"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SmplParams: {name} has {len(getattr(self, name))} frames, global_orient {n}")

    def __len__(self) -> int:
        return len(self.global_orient)

    def take(self, index: NDArray[np.int64]) -> SmplParams:
        return SmplParams(self.global_orient[index], self.body_pose[index], self.betas[index], self.transl[index])

    @staticmethod
    def make(global_orient: Any, body_pose: Any, betas: Any, transl: Any) -> SmplParams:
        """Arrays as given; body_pose 63 (SMPL-X body) is padded with identity hands to SMPL's 69; one betas
        vector is repeated per frame."""
        go = np.asarray(global_orient, dtype=np.float64).reshape(-1, 3)
        bp = np.asarray(body_pose, dtype=np.float64).reshape(len(go), -1)
        if bp.shape[1] == 63:
            bp = np.concatenate([bp, np.zeros((len(go), 6))], axis=1)
        if bp.shape[1] != 69:
            raise ValueError(f"body_pose must have 63 or 69 values per frame, got {bp.shape[1]}")
        b = np.asarray(betas, dtype=np.float64)
        b = np.tile(b.reshape(1, -1), (len(go), 1)) if b.ndim == 1 else b.reshape(len(go), -1)
        return SmplParams(go, bp, b, np.asarray(transl, dtype=np.float64).reshape(-1, 3))


@dataclass
class MotionSequence:
    """One world-motion sequence ready to run: frames, person boxes, GT joints."""

    name: str
    frames: FrameSource
    boxes: Array  # (F, 4) xyxy in the frames' pixels, every frame filled
    gt_joints: Array  # (F, 24, 3) metres, world
    gt_feet: Array | None  # (F, 4, 3) SMPL foot vertices (heels, toes), world; None: no foot sliding
    mask: NDArray[np.bool_] | None  # (F,) frames that count
    fps: float = 30.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.boxes.shape != (n, 4) or self.gt_joints.shape[:1] != (n,):
            raise ValueError(f"{self.name}: {n} frames but boxes {self.boxes.shape}, joints {self.gt_joints.shape}")


def predict_motion(seq: MotionSequence, predictor: Predictor, config: WindowConfig = WindowConfig(),
                   log: Log = quiet) -> StitchedSequence:
    h, w = seq.frames.size
    size = model_input_size(h, w, config.long_side)
    box_scale = np.array([size[1] / w, size[0] / h] * 2)

    def load(index: NDArray[np.int64]) -> tuple[NDArray[np.uint8], Array]:
        return resize_frames(seq.frames.read(index), size), seq.boxes[index] * box_scale

    stitched = run_windows(seq.name, len(seq.frames), load, predictor, config, seq.fps, log)
    if stitched.pose_cam is None or stitched.betas is None or stitched.trans_cam is None:
        raise ValueError(f"{seq.name}: the predictor returned no SMPL parameters")
    return stitched


def world_smpl(stitched: StitchedSequence, body: BodyModel) -> SmplParams:
    """Camera-frame SMPL + stitched cameras -> world SMPL (`unish_model.runner.smpl_to_world`)."""
    assert stitched.pose_cam is not None and stitched.betas is not None and stitched.trans_cam is not None
    pose = torch.from_numpy(stitched.pose_cam).reshape(-1, 24, 3)
    root_cam = axis_angle_to_matrix(pose[:, 0]).numpy()
    betas = stitched.betas
    root_world, transl = smpl_to_world(stitched.c2w, root_cam, stitched.trans_cam, betas, body)
    orient = matrix_to_axis_angle(torch.from_numpy(root_world)).numpy()
    return SmplParams(orient, pose[:, 1:].reshape(-1, 69).numpy().astype(np.float64), betas.astype(np.float64),
                      transl)


def smpl_joints(body: BodyModel, params: SmplParams, regressor: torch.Tensor | None = None, chunk: int = 128
                ) -> tuple[Array, Array | None]:
    """Evaluation joints (F, 24, 3) = J_regressor @ posed vertices, and the foot vertices (F, 4, 3) used by
    foot sliding (None for a mesh without SMPL's vertex count)."""
    reg = body.J_regressor if regressor is None else regressor
    with_feet = body.num_vertices > max(SMPL_FOOT_VERTICES)
    joints, feet = [], []
    dtype = body.v_template.dtype
    for a in range(0, len(params), chunk):
        sl = slice(a, a + chunk)
        go, bp, betas, transl = (torch.from_numpy(np.ascontiguousarray(x[sl])).to(dtype) for x in
                                 (params.global_orient, params.body_pose, params.betas, params.transl))
        # matrices and (n, 23, 3): BodyModel reads a (3, 3) global_orient as one matrix, so 3 frames of
        # axis-angle would be misread
        out = body(axis_angle_to_matrix(go), bp.reshape(-1, 23, 3), betas, transl)
        verts = out.vertices.double()
        joints.append(torch.einsum("jv,fvc->fjc", reg.double(), verts).numpy())
        if with_feet:
            feet.append(verts[:, list(SMPL_FOOT_VERTICES)].numpy())
    return np.concatenate(joints), (np.concatenate(feet) if with_feet else None)


def motion_per_frame(pred_joints: Array, gt_joints: Array, mask: NDArray[np.bool_] | None, fps: float,
                     pred_feet: Array | None = None, gt_feet: Array | None = None) -> dict[str, Array]:
    """Per-frame metric arrays of one sequence (`metrics.motion`); fs when both foot-vertex sets are given."""
    out = global_motion_metrics(pred_joints, gt_joints, mask=mask, fps=fps)
    if pred_feet is not None and gt_feet is not None:
        keep = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        out["fs"] = foot_sliding(pred_feet[keep], gt_feet[keep], foot_vertices=range(pred_feet.shape[1]))
    return out


def evaluate_motion(benchmark: str, sequences: Iterable[MotionSequence], predictor: Predictor, body: BodyModel,
                    config: WindowConfig = WindowConfig(), log: Log = quiet, sink: Sink | None = None,
                    protocol: Mapping[str, Any] | None = None) -> BenchmarkResult:
    """World motion (EMDB-2, RICH): per sequence the mean of the per-frame metrics; the dataset number is the
    mean over all frames of all sequences."""
    rows: list[SequenceResult] = []
    pooled: list[dict[str, Array]] = []
    for seq in sequences:
        stitched = predict_motion(seq, predictor, config, log)
        params = world_smpl(stitched, body)
        joints, feet = smpl_joints(body, params)
        per_frame = motion_per_frame(joints, seq.gt_joints, seq.mask, seq.fps, feet, seq.gt_feet)
        pooled.append(per_frame)
        metrics = {k: float(np.mean(v)) if len(v) else float("nan") for k, v in per_frame.items()}
        counted = int(len(seq.gt_joints) if seq.mask is None else np.count_nonzero(seq.mask))
        rows.append(SequenceResult(seq.name, counted, metrics, {
            **seq.info, "windows": len(stitched.window_starts), "metric_scale": stitched.metric_scale,
            "mean_inlier_share": float(np.mean([s["inlier_share"] for s in stitched.window_stats]))}))
        log(f"{seq.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        if sink is not None:
            arrays: dict[str, np.ndarray] = {
                "pred_joints": joints, "gt_joints": seq.gt_joints, "global_orient": params.global_orient,
                "body_pose": params.body_pose, "betas": params.betas, "transl": params.transl,
                "c2w": stitched.c2w, "mask": np.ones(len(joints), bool) if seq.mask is None else seq.mask}
            if feet is not None and seq.gt_feet is not None:
                arrays.update(pred_feet=feet, gt_feet=seq.gt_feet)
            sink(seq.name, arrays)
    overall = aggregate_motion(pooled) if pooled else {}
    proto = {"chunk": 100, "window": config.window, "stride": config.stride, "long_side": config.long_side,
             "joints": "J_regressor on posed vertices", "dataset mean": "over all frames of all sequences",
             **(protocol or {})}
    return BenchmarkResult(benchmark, MOTION_COLUMNS, rows, overall, proto)
