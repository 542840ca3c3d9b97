"""Run UniSH over the evaluation benchmarks and score it with the peers' protocols.

The metrics and the dataset readers live in `unish_model.metrics` and `unish_model.benchmarks`; this module is the
model-running side: it cuts each benchmark sequence into windows, asks a `Predictor` (UniSH, or a fake one in
tests) for every window, stitches the windows into one world frame and one metric scale, and hands the result to
the metric functions.  Torch and numpy only (images are read with OpenCV when it is installed, else Pillow).

Windows (all benchmarks).  UniSH is trained on 30-frame windows, so a sequence is cut into windows of `window`
frames (30) whose starts are `stride` frames apart (25); a last window is added, flush with the end, when the
stride does not land there.  Consecutive windows share `window - stride` frames (at least 5), and
`unish_model.stitch.Stitcher` fits the similarity from each window's frame (its first camera, its own metric
estimate) to the first window's on the shared frames' point maps; the stitched sequence takes one metric scale,
the median of the windows' estimates.  A frame two windows hold is taken from the earlier one.  Frames are fed at
the dataset's frame rate (AlignNet's time positions use the real fps) and resized, aspect kept, so the long side is
`long_side` (518) and the short side is floored to a multiple of 14 (as pi3's evaluation loader does), with a
bilinear, antialiased resize.  `window >= frames` gives one pass over the whole sequence (pi3's own video-depth
evaluation feeds all 110 frames at once).

Bonn (video depth).  Frames sorted()[30:140] (the reader).  110 frames, windows 0-29, 25-54, 50-79, 75-104 and
80-109.  No person boxes: the whole frame is the person box (the human branch does not touch the depth).  The depth
is UniSH's `depth_map` (local z + the recovered shift, metres); window k's depth is multiplied by the stitching
scale s_k and the sequence's metric scale, so all 110 frames share one unit before the protocol's single
scale&shift alignment over the whole sequence (`metrics.depth.evaluate_sequence`).

EMDB-2 and RICH (world motion).  Every frame at 30 fps, windows as above.  Person boxes: EMDB's `bboxes` (frames
whose box is invalid, i.e. empty or outside `good_frames_mask`, take the box interpolated from their neighbours);
RICH: `bbx_xys` of GVHMR's `rich_test_preproc.pt` (square boxes, full-resolution pixels, scaled to the frames
read), or, without that file, the whole frame.  Per window: camera-frame SMPL (pose, betas, unshifted translation)
and cameras; after stitching, the root turns with the stitched camera and the translation moves as the pelvis does
(`stitch.body_to_world`), with the camera-frame pelvis scaled by the window's factor to the sequence's metres.
Joints: J_regressor (of the SMPL model given) on the posed vertices, for prediction and ground truth alike.
Ground truth: EMDB: SMPL of the annotated gender when such a model is given (else the neutral one); RICH:
gendered SMPL-X (hands at the model's mean pose, as GVHMR's `rich-smplx`) -> SMPL vertices through the
smplx2smpl map -> SMPL J_regressor.  Then `metrics.motion` (chunks of 100 frames, EMDB's good-frame mask).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from unish_model.benchmarks.bonn import BONN_SEQUENCES, BonnSequence, read_bonn_sequence
from unish_model.benchmarks.emdb import EMDB_FPS, EmdbSequence, list_emdb
from unish_model.benchmarks.rich import RICH_FPS, RichSequence, read_rich_labels
from unish_model.body import BodyModel, SmplxModel
from unish_model.boxes import fill_boxes, whole_frame
from unish_model.geometry import axis_angle_to_matrix
from unish_model.metrics.depth import DepthResult, aggregate_depth, evaluate_sequence
from unish_model.metrics.motion import SMPL_FOOT_VERTICES, aggregate_motion, foot_sliding, global_motion_metrics
from unish_model.geometry import matrix_to_axis_angle
from unish_model.stitch import Stitcher, WindowGeometry, body_to_world, transform_poses

__all__ = [
    "BenchmarkLayoutError", "WindowConfig", "Window", "WindowPrediction", "Predictor", "UniSHPredictor",
    "GroundTruthPredictor", "SmplParams", "StitchedSequence", "SequenceResult", "BenchmarkResult",
    "MotionSequence", "ImageFrames", "VideoFrames", "model_input_size", "plan_windows",
    "resize_frames", "read_rgb", "run_windows", "bonn_sequences", "bonn_depth_of", "evaluate_bonn",
    "predict_motion", "rich_sequences", "rich_frames", "load_rich_preproc",
    "emdb_sequences", "emdb_gt_smpl", "emdb_motion_sequence", "RichData", "find_rich", "rich_gt_smpl",
    "rich_motion_sequence", "load_smplx2smpl", "world_smpl", "smpl_joints", "motion_per_frame",
    "evaluate_motion", "METRIC_LABELS", "BONN_COLUMNS", "MOTION_COLUMNS",
]

Array = NDArray[np.float64]
Log = Callable[[str], None]
Sink = Callable[[str, dict[str, np.ndarray]], None]

METRIC_LABELS: dict[str, str] = {
    "abs_rel": "Abs Rel", "delta_1.25": "δ<1.25", "rmse": "RMSE (m)", "log_rmse": "log RMSE", "sq_rel": "Sq Rel",
    "wa_mpjpe": "WA-MPJPE (mm)", "w_mpjpe": "W-MPJPE (mm)", "rte": "RTE (%)", "jitter": "Jitter (10 m/s³)",
    "fs": "FS (mm)",
}
BONN_COLUMNS = ("abs_rel", "delta_1.25", "rmse", "log_rmse")
MOTION_COLUMNS = ("wa_mpjpe", "w_mpjpe", "rte", "jitter", "fs")


class BenchmarkLayoutError(ValueError):
    """The folder given does not hold the benchmark in the expected layout (the message says what is missing)."""


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------- windows, images


@dataclass(frozen=True)
class WindowConfig:
    """How a sequence is cut into model windows (see the module docstring)."""

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


def read_rgb(path: str | Path) -> NDArray[np.uint8]:
    """An image file as (H, W, 3) uint8 RGB (OpenCV when installed, else Pillow)."""
    path = Path(path)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: not a readable image")
        return np.ascontiguousarray(img[..., ::-1])
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err


def resize_frames(frames: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8, bilinear with antialiasing (torch, so the result does not depend
    on which image library is installed)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == tuple(size):
        return np.ascontiguousarray(frames, dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class FrameSource(Protocol):
    """Random access to a sequence's frames (indices increase from window to window)."""

    def __len__(self) -> int: ...

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames `read` returns."""
        ...

    def read(self, indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        """(T, H, W, 3) uint8 RGB."""
        ...


@dataclass
class ImageFrames:
    """Frames stored as image files, one per frame."""

    paths: Sequence[Path]
    _size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            h, w = read_rgb(self.paths[0]).shape[:2]
            self._size = (int(h), int(w))
        return self._size

    def read(self, indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        frames = [read_rgb(self.paths[int(i)]) for i in indices]
        for i, f in zip(indices, frames):
            if f.shape[:2] != self.size:
                raise ValueError(f"{self.paths[int(i)]}: size {f.shape[1]}x{f.shape[0]} differs from the "
                                 f"sequence's {self.size[1]}x{self.size[0]}")
        return np.stack(frames)


class VideoFrames:
    """Chosen frames (`frame_ids`, increasing) of a video file, decoded forward once (OpenCV); windows may go back
    by their overlap, which is served from a small cache of recent frames."""

    def __init__(self, path: str | Path, frame_ids: NDArray[np.int64]) -> None:
        self.path = Path(path)
        self.frame_ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        if len(self.frame_ids) and (np.diff(self.frame_ids) <= 0).any():
            raise ValueError(f"{self.path}: frame ids must increase")
        self._cap: Any = None
        self._next = 0  # index of the next video frame the decoder returns
        self._cache: dict[int, NDArray[np.uint8]] = {}  # sequence index -> frame
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def _open(self) -> Any:
        try:
            import cv2
        except ImportError as err:
            raise ImportError(f"reading {self.path} needs OpenCV (pip install opencv-python-headless)") from err
        if not self.path.is_file():
            raise FileNotFoundError(f"video {self.path} not found")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise ValueError(f"{self.path}: OpenCV cannot open this video")
        return cap

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            frame = self.read(np.zeros(1, dtype=np.int64))[0]
            self._size = (int(frame.shape[0]), int(frame.shape[1]))
        return self._size

    def read(self, indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        indices = np.asarray(indices, dtype=np.int64)
        for i in sorted(set(int(i) for i in indices) - set(self._cache)):
            target = int(self.frame_ids[i])
            if self._cap is None or target < self._next:
                if self._cap is not None:
                    self._cap.release()
                self._cap, self._next = self._open(), 0
            while True:
                ok, bgr = self._cap.read()
                if not ok:
                    raise ValueError(f"{self.path}: has no frame {target} (ends at {self._next - 1})")
                self._next += 1
                if self._next - 1 == target:
                    self._cache[i] = np.ascontiguousarray(bgr[..., ::-1])
                    break
        out = np.stack([self._cache[int(i)] for i in indices])
        lowest = int(indices.min())
        for k in [k for k in self._cache if k < lowest]:
            del self._cache[k]
        return out


# ----------------------------------------------------------------------------------------------- predictors


@dataclass(frozen=True)
class Window:
    """What a predictor sees: one window of a sequence at the model's input size."""

    sequence: str
    frame_index: NDArray[np.int64]  # (T,) indices into the sequence
    images: NDArray[np.uint8]  # (T, h, w, 3) RGB
    boxes: NDArray[np.float64] | None  # (T, 4) xyxy person boxes in `images` pixels; None: no person given
    fps: float


@dataclass
class WindowPrediction:
    """One window's reconstruction in its own frame (its first camera) and its own metric estimate.

    world_points / conf drive the stitching; depth is needed for video depth, the SMPL arrays for motion."""

    world_points: NDArray[np.floating]  # (T, h, w, 3) metres, window frame
    conf: NDArray[np.floating]  # (T, h, w) >= 0 weights for the stitching fit (0: unusable pixel)
    c2w: NDArray[np.floating]  # (T, 4, 4) camera-to-window-frame, metres
    depth: NDArray[np.floating] | None = None  # (T, h', w') metres (any size: it is resized to the GT)
    pose_cam: NDArray[np.floating] | None = None  # (T, 72) axis-angle, root in the camera frame
    betas: NDArray[np.floating] | None = None  # (T, 10)
    trans_cam: NDArray[np.floating] | None = None  # (T, 3) metres, camera frame, consistent with world_points


class Predictor(Protocol):
    def __call__(self, window: Window) -> WindowPrediction: ...


@dataclass
class UniSHPredictor:
    """UniSH (`unish_model.pipeline.UniSH`, official or random weights) as a predictor."""

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
        boxes = window.boxes if window.boxes is not None else np.tile([0.0, 0.0, w, h], (t, 1))
        patches, bbox_px = person_inputs(images, torch.as_tensor(boxes, dtype=torch.float32, device=dev)[None],
                                         self.box_scale)
        out = self.model.infer(images, patches, bbox_px, fps=window.fps, solver=self.solver)

        def np_(x: torch.Tensor) -> np.ndarray:
            return x[0].detach().float().cpu().numpy()

        trans_cam = np_(out.trans_cam)
        trans_cam[:, 2] -= np_(out.shift)  # official trans_cam carries + shift in z; the world uses the unshifted
        return WindowPrediction(
            world_points=np_(out.world_points), conf=np_(out.point_conf) * np_(out.masks.float()),
            c2w=np_(out.c2ws_cano), depth=np_(out.depth_map), pose_cam=np_(out.pose_cam), betas=np_(out.betas),
            trans_cam=trans_cam)


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


# ----------------------------------------------------------------------------------------------- stitching


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
                log: Log = _quiet) -> StitchedSequence:
    """Cut `n_frames` into windows, predict each (`load(indices)` gives model-size images and boxes), stitch."""
    stitcher = Stitcher()
    filled = np.zeros(n_frames, dtype=bool)
    unit = np.full(n_frames, np.nan)  # s_k of the window each frame was taken from
    c2w = np.tile(np.eye(4), (n_frames, 1, 1))
    arrays: dict[str, np.ndarray] = {}
    starts: list[int] = []
    plan = plan_windows(n_frames, config.window, config.stride)
    for k, index in enumerate(plan):
        images, boxes = load(index)
        pred = predictor(Window(sequence, index, images, boxes, fps))
        geometry = WindowGeometry(frames=index, c2w=np.asarray(pred.c2w, dtype=np.float64),
                                  points=np.asarray(pred.world_points), conf=np.asarray(pred.conf), metric_scale=1.0)
        sim = stitcher.add(geometry).to_global
        starts.append(int(index[0]))
        new = ~filled[index]
        take = index[new]
        unit[take] = sim.scale
        c2w[take] = transform_poses(sim, np.asarray(pred.c2w, dtype=np.float64)[new])
        for name in ("depth", "pose_cam", "betas", "trans_cam"):
            value = getattr(pred, name)
            if value is None:
                continue
            value = np.asarray(value)
            if name not in arrays:
                dtype = np.float32 if name == "depth" else np.float64
                arrays[name] = np.full((n_frames, *value.shape[1:]), np.nan, dtype=dtype)
            arrays[name][take] = value[new]  # lengths get the window's factor (s_k times metres) at the end
        filled[take] = True
        if k % 10 == 0 or k == len(plan) - 1:  # long sequences have ~100 windows: a line every tenth
            log(f"{sequence}: window {k + 1}/{len(plan)} frames {index[0]}-{index[-1]}, "
                f"scale to world {sim.scale:.4f}")
    metres = stitcher.metric_scale()
    c2w[:, :3, 3] *= metres
    factor = metres * unit
    if "depth" in arrays:
        arrays["depth"] *= factor.astype(np.float32)[:, None, None]
    if "trans_cam" in arrays:
        arrays["trans_cam"] *= factor[:, None]
    return StitchedSequence(
        n_frames=n_frames, c2w=c2w, depth=arrays.get("depth"), pose_cam=arrays.get("pose_cam"),
        betas=arrays.get("betas"), trans_cam=arrays.get("trans_cam"), metric_scale=metres, window_starts=starts,
        window_stats=[r.to_dict() for r in stitcher.results])


# ----------------------------------------------------------------------------------------------- results


@dataclass
class SequenceResult:
    name: str
    frames: int  # frames that count in the metrics
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkResult:
    benchmark: str  # bonn | emdb | rich
    columns: tuple[str, ...]  # metric keys shown in tables, in order
    sequences: list[SequenceResult]
    overall: dict[str, float]
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark, "protocol": self.protocol,
            "sequences": [{"name": s.name, "frames": s.frames, "metrics": s.metrics, "info": s.info}
                          for s in self.sequences],
            "overall": self.overall,
        }

    def table_rows(self) -> list[list[str]]:
        """[sequence, frames, column values...] per sequence, then the overall row (formatted)."""
        rows = [[s.name, str(s.frames), *(_fmt(s.metrics.get(c)) for c in self.columns)] for s in self.sequences]
        total = sum(s.frames for s in self.sequences)
        rows.append(["overall", str(total), *(_fmt(self.overall.get(c)) for c in self.columns)])
        return rows

    def to_markdown(self, title: str | None = None) -> str:
        head = ["sequence", "frames", *(METRIC_LABELS.get(c, c) for c in self.columns)]
        lines = [f"# {title or self.benchmark}", ""]
        for key, value in self.protocol.items():
            lines.append(f"- {key}: {value}")
        lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        rows = self.table_rows()
        for row in rows[:-1]:
            lines.append("| " + " | ".join(row) + " |")
        lines.append("| " + " | ".join(f"**{v}**" for v in rows[-1]) + " |")
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


# ----------------------------------------------------------------------------------------------- Bonn


def bonn_sequences(root: str | Path, names: Sequence[str] | None = None, max_sequences: int | None = None
                   ) -> list[BonnSequence]:
    """The benchmark's sequences (all five, or `names`, the first `max_sequences`); layout errors name the folder."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkLayoutError(f"Bonn root {root} is not a folder")
    chosen = list(names) if names else list(BONN_SEQUENCES)
    unknown = [n for n in chosen if n not in BONN_SEQUENCES]
    if unknown:
        raise BenchmarkLayoutError(f"not Bonn evaluation sequences: {unknown}; the benchmark's are {BONN_SEQUENCES}")
    if max_sequences is not None:
        chosen = chosen[:max_sequences]
    missing = [n for n in chosen if not (root / f"rgbd_bonn_{n}").is_dir()]
    if missing:
        raise BenchmarkLayoutError(
            f"{root} does not have the Bonn RGB-D Dynamic layout: missing "
            f"{', '.join(f'rgbd_bonn_{n}/' for n in missing)} (each with rgb/ and depth/ PNGs, TUM layout; "
            "download from https://www.ipb.uni-bonn.de/data/rgbd-dynamic-dataset/)")
    try:
        return [read_bonn_sequence(root, n) for n in chosen]
    except (FileNotFoundError, ValueError) as err:
        raise BenchmarkLayoutError(str(err)) from err


def bonn_depth_of(sequences: Sequence[BonnSequence]) -> Callable[[str], Array]:
    """GT depth by sequence name (for `GroundTruthPredictor`)."""
    by_name = {s.name: s for s in sequences}
    return lambda name: by_name[name].load_depth()


def evaluate_bonn(sequences: Sequence[BonnSequence], predictor: Predictor, config: WindowConfig = WindowConfig(),
                  align: str = "scale&shift", fps: float = 30.0, log: Log = _quiet, sink: Sink | None = None
                  ) -> BenchmarkResult:
    """Video depth on Bonn: stitched per-window depth, one alignment per sequence, pixel-weighted dataset mean."""
    rows: list[SequenceResult] = []
    depth_results: list[DepthResult] = []
    for seq in sequences:
        rgb = seq.load_rgb()
        size = model_input_size(rgb.shape[1], rgb.shape[2], config.long_side)
        images = resize_frames(rgb, size)
        del rgb
        stitched = run_windows(seq.name, len(images), lambda idx: (images[idx], None), predictor, config, fps, log)
        if stitched.depth is None:
            raise ValueError(f"{seq.name}: the predictor returned no depth")
        gt = seq.load_depth()
        result = evaluate_sequence(stitched.depth, gt, align)
        depth_results.append(result)
        rows.append(SequenceResult(seq.name, len(gt), dict(result.metrics), {
            "valid_pixels": result.valid_pixels, "align_scale": result.scale, "align_shift": result.shift,
            "adam_steps": result.steps_run, "windows": len(stitched.window_starts),
            "window_starts": stitched.window_starts, "metric_scale": stitched.metric_scale,
            "input_size": [int(size[1]), int(size[0])]}))
        log(f"{seq.name}: abs_rel {result.metrics['abs_rel']:.4f}, delta<1.25 {result.metrics['delta_1.25']:.4f}")
        if sink is not None:
            sink(seq.name, {"pred_depth": stitched.depth, "c2w": stitched.c2w.astype(np.float32)})
    overall = aggregate_depth(depth_results) if depth_results else {}
    protocol = {"frames": "sorted()[30:140]", "align": align, "max_depth": 70.0, "window": config.window,
                "stride": config.stride, "long_side": config.long_side, "fps": fps,
                "dataset mean": "per-sequence metrics weighted by valid pixels"}
    return BenchmarkResult("bonn", BONN_COLUMNS, rows, overall, protocol)


# ----------------------------------------------------------------------------------------------- motion


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
                   log: Log = _quiet) -> StitchedSequence:
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
    """Camera-frame SMPL + stitched cameras -> world SMPL: the root turns with the camera; the translation moves as
    the pelvis does (SMPL rotates about the shape's rest pelvis)."""
    assert stitched.pose_cam is not None and stitched.betas is not None and stitched.trans_cam is not None
    pose = torch.from_numpy(stitched.pose_cam).reshape(-1, 24, 3)
    root_cam = axis_angle_to_matrix(pose[:, 0]).numpy()
    betas = stitched.betas
    pelvis = body.rest_joints(torch.from_numpy(betas).to(body.v_template.dtype))[:, 0].double().numpy()
    root_world, transl = body_to_world(stitched.c2w, root_cam, stitched.trans_cam, pelvis)
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
                    config: WindowConfig = WindowConfig(), log: Log = _quiet, sink: Sink | None = None,
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


# ----------------------------------------------------------------------------------------------- EMDB


def emdb_sequences(root: str | Path, split: int | None = 2, names: Sequence[str] | None = None,
                   max_sequences: int | None = None) -> list[EmdbSequence]:
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkLayoutError(f"EMDB root {root} is not a folder")
    if not any(root.glob("P*/*/P*_data.pkl")):
        raise BenchmarkLayoutError(
            f"{root} does not have the EMDB layout: no P<k>/<sequence>/P<k>_<sequence>_data.pkl files (with images/ "
            "next to each); download EMDB from https://eth-ait.github.io/emdb/ (registration required)")
    try:
        seqs = list_emdb(root, split)
    except ValueError as err:
        raise BenchmarkLayoutError(str(err)) from err
    if names:
        missing = sorted(set(names) - {s.name for s in seqs})
        if missing:
            raise BenchmarkLayoutError(f"{root}: no EMDB{split or ''} sequence named {missing}")
        seqs = [s for s in seqs if s.name in set(names)]
    if not seqs:
        raise BenchmarkLayoutError(f"{root}: no sequence has the emdb{split} flag set")
    return seqs[:max_sequences] if max_sequences is not None else seqs


def emdb_gt_smpl(seq: EmdbSequence) -> SmplParams:
    return SmplParams.make(seq.poses_root, seq.poses_body, seq.betas, seq.trans)


def emdb_motion_sequence(seq: EmdbSequence, gt_body: BodyModel, eval_body: BodyModel, gt_body_name: str = ""
                         ) -> MotionSequence:
    """GT joints from the annotation's SMPL (gt_body, of the annotated gender when available) regressed with the
    evaluation J_regressor (eval_body's, SMPL neutral as GVHMR); boxes from the annotation."""
    paths = seq.image_paths
    if len(paths) != seq.n_frames:
        raise BenchmarkLayoutError(f"{seq.folder}/images: {len(paths)} jpg files for {seq.n_frames} annotated frames")
    frames = ImageFrames(paths)
    h, w = frames.size
    if seq.bboxes is not None:
        boxes, valid = fill_boxes(seq.bboxes, seq.good_frames_mask, fallback=whole_frame(h, w))
        box_source = "annotation"
    else:
        boxes, valid = fill_boxes(np.full((seq.n_frames, 4), np.nan), fallback=whole_frame(h, w))
        box_source = "whole frame (no bboxes in the annotation)"
    joints, feet = smpl_joints(gt_body, emdb_gt_smpl(seq), regressor=eval_body.J_regressor)
    return MotionSequence(seq.name, frames, boxes, joints, feet, seq.good_frames_mask.copy(), EMDB_FPS, {
        "fps": EMDB_FPS, "gender": seq.gender, "gt_body": gt_body_name or seq.gender, "boxes": box_source,
        "valid_boxes": int(valid.sum())})


# ----------------------------------------------------------------------------------------------- RICH

def load_smplx2smpl(path: str | Path) -> torch.Tensor:
    """The (6890, V_smplx) map from SMPL-X to SMPL vertices: GVHMR's `smplx2smpl_sparse.pt` (a sparse torch tensor,
    loaded with weights_only) or an `.npz` / `.npy` with one dense array (key `matrix` if several)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"smplx2smpl map {path} not found")
    if path.suffix in (".npz", ".npy"):
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                key = "matrix" if "matrix" in data.files else data.files[0]
                data = data[key]
        return torch.from_numpy(np.asarray(data, dtype=np.float64))
    try:
        with warnings.catch_warnings():  # torch announces its (wanted) sparse invariant check
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            m = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        raise ValueError(f"{path}: cannot load with weights_only=True: {err}") from err
    if not isinstance(m, torch.Tensor) or m.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D tensor, got {type(m).__name__}")
    return m.double().coalesce() if m.is_sparse else m.double()


def _map_vertices(mapping: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """(S, X) map @ (N, X, 3) vertices -> (N, S, 3), in one (sparse) matmul."""
    n, x = verts.shape[:2]
    flat = verts.permute(1, 0, 2).reshape(x, n * 3)
    out = torch.sparse.mm(mapping, flat) if mapping.is_sparse else mapping @ flat
    return out.reshape(-1, n, 3).permute(1, 0, 2)


@dataclass
class RichData:
    """Where RICH's prepared files are (GVHMR's `hmr4d_support` layout)."""

    root: Path
    labels: Path
    preproc: Path | None  # rich_test_preproc.pt (person boxes), optional
    video_dir: Path | None  # <support>/video/<vid>/video.mp4 (frames indexed by frame_id)
    images_dir: Path | None  # <root>/images/<vid>/*.jpg|png (one image per label frame, or indexed by frame_id)


def find_rich(root: str | Path) -> RichData:
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkLayoutError(f"RICH root {root} is not a folder")
    for support in (root / "hmr4d_support", root):
        if (support / "rich_test_labels.pt").is_file():
            break
    else:
        raise BenchmarkLayoutError(
            f"{root} does not have RICH as GVHMR prepares it: no hmr4d_support/rich_test_labels.pt (nor "
            "rich_test_labels.pt); get RICH from https://rich.is.tue.mpg.de (registration) and GVHMR's "
            "hmr4d_support files (rich_test_labels.pt, rich_test_preproc.pt, video/)")
    preproc = support / "rich_test_preproc.pt"
    video_dir = support / "video"
    images_dir = root / "images"
    if not video_dir.is_dir() and not images_dir.is_dir():
        raise BenchmarkLayoutError(f"{root}: no frames: expected {video_dir}/<vid>/video.mp4 (GVHMR) or "
                                   f"{images_dir}/<vid>/ image folders")
    return RichData(root, support / "rich_test_labels.pt", preproc if preproc.is_file() else None,
                    video_dir if video_dir.is_dir() else None, images_dir if images_dir.is_dir() else None)


def rich_sequences(data: RichData, names: Sequence[str] | None = None, max_sequences: int | None = None
                   ) -> list[RichSequence]:
    try:
        labels = read_rich_labels(data.labels)
    except (FileNotFoundError, ValueError) as err:
        raise BenchmarkLayoutError(str(err)) from err
    if names:
        missing = sorted(set(names) - set(labels))
        if missing:
            raise BenchmarkLayoutError(f"{data.labels}: no sequence {missing}")
    seqs = [s for vid, s in labels.items() if not names or vid in set(names)]
    if not seqs:
        raise BenchmarkLayoutError(f"{data.labels}: no sequences")
    return seqs[:max_sequences] if max_sequences is not None else seqs


def load_rich_preproc(path: Path | None) -> Mapping[str, Any]:
    if path is None:
        return {}
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        raise ValueError(f"{path}: cannot load with weights_only=True: {err}") from err
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict of sequences, got {type(raw).__name__}")
    return raw


def rich_frames(data: RichData, seq: RichSequence) -> FrameSource:
    if data.video_dir is not None and (data.video_dir / seq.vid / "video.mp4").is_file():
        return VideoFrames(data.video_dir / seq.vid / "video.mp4", seq.frame_id)
    if data.images_dir is not None and (data.images_dir / seq.vid).is_dir():
        folder = data.images_dir / seq.vid
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(paths) == len(seq.frame_id):
            return ImageFrames(paths)
        if len(paths) > int(seq.frame_id.max()):
            return ImageFrames([paths[int(i)] for i in seq.frame_id])
        raise BenchmarkLayoutError(f"{data.images_dir / seq.vid}: {len(paths)} images for {len(seq.frame_id)} "
                                   f"labelled frames (ids up to {int(seq.frame_id.max())})")
    raise BenchmarkLayoutError(f"RICH {seq.vid}: no video.mp4 under {data.video_dir} and no image folder under "
                               f"{data.images_dir}")


def rich_gt_smpl(seq: RichSequence) -> SmplParams:
    """RICH's SMPL-X parameters read as SMPL ones (identity hands): the oracle's input."""
    return SmplParams.make(seq.global_orient, seq.body_pose, seq.betas[..., :10], seq.transl)


def rich_motion_sequence(data: RichData, seq: RichSequence, preproc: Mapping[str, Any], smplx: SmplxModel,
                         smplx2smpl: torch.Tensor, eval_body: BodyModel, chunk: int = 64) -> MotionSequence:
    frames = rich_frames(data, seq)
    h, w = frames.size
    entry = preproc.get(seq.vid)
    if entry is not None and "bbx_xys" in entry:
        xys = np.asarray(torch.as_tensor(entry["bbx_xys"]).double().numpy()).reshape(-1, 3)
        full_w = float(np.asarray(torch.as_tensor(entry["img_wh"]).double().numpy()).reshape(-1)[0]) \
            if "img_wh" in entry else float(w)
        s = w / full_w
        boxes = np.stack([xys[:, 0] - xys[:, 2] / 2, xys[:, 1] - xys[:, 2] / 2,
                          xys[:, 0] + xys[:, 2] / 2, xys[:, 1] + xys[:, 2] / 2], axis=1) * s
        boxes, _ = fill_boxes(boxes, fallback=whole_frame(h, w))
        box_source = "rich_test_preproc.pt bbx_xys"
    else:
        boxes = np.tile(whole_frame(h, w), (len(frames), 1))
        box_source = "whole frame (no rich_test_preproc.pt entry)"
    if smplx2smpl.shape[1] != smplx.num_vertices or smplx2smpl.shape[0] != eval_body.num_vertices:
        raise ValueError(f"smplx2smpl map {tuple(smplx2smpl.shape)} does not fit SMPL-X ({smplx.num_vertices}) -> "
                         f"SMPL ({eval_body.num_vertices})")
    joints, feet = [], []
    with_feet = eval_body.num_vertices > max(SMPL_FOOT_VERTICES)
    reg = eval_body.J_regressor.double()
    betas = seq.betas if seq.betas.ndim == 1 else seq.betas.reshape(len(seq.frame_id), -1)
    for a in range(0, len(seq.frame_id), chunk):
        sl = slice(a, a + chunk)
        vx = smplx.vertices(seq.global_orient[sl], seq.body_pose[sl], betas if betas.ndim == 1 else betas[sl],
                            seq.transl[sl])
        vs = _map_vertices(smplx2smpl, vx)
        joints.append(torch.einsum("jv,fvc->fjc", reg, vs).numpy())
        if with_feet:
            feet.append(vs[:, list(SMPL_FOOT_VERTICES)].numpy())
    return MotionSequence(seq.vid, frames, boxes, np.concatenate(joints),
                          np.concatenate(feet) if with_feet else None, None, RICH_FPS,
                          {"fps": RICH_FPS, "gender": seq.gender, "boxes": box_source})
