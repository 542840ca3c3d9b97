"""people: detect and track persons over a clip window, then apply the paper's filters.

Two detector backends share one interface (`detect(frames) -> per-frame FrameDetections`):
- `yolo` (paper profile): an Ultralytics YOLO detection checkpoint from the weights folder, persons
  only, with Ultralytics' ByteTrack over the window's frames;
- `hog` (lite profile, offline, CPU): OpenCV's HOG people detector with its built-in SVM and a
  simple IoU tracker. It only finds upright, roughly pedestrian-sized people (about 96 px or taller
  at the model size), misses unusual poses (dance, sitting, lying, seen from above), and its scores
  are an SVM margin, not a probability: use it for laptops and demos, not for a release.

Every window gets a fresh tracker, so track ids start at 1 and nothing carries over from one video
or window to the next. The filters themselves live in `tasks.people_filters`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.people_filters import FrameDetections, PeopleFilterParams, PeopleVerdict, box_iou, evaluate_people
from tasks.stage import ClipRejected, ClipWindow, LabelStage, register_stage
from tasks.weights import (
    REGISTRY,
    WeightsMissing,
    how_to_get,
    prepare_ultralytics_env,
    require,
    sha256_file,
    weights_path,
)

# Before anything can import ultralytics: offline, no auto-install, weights-only checkpoint loading.
prepare_ultralytics_env()

log = logging.getLogger(__name__)

STAGE_VERSION = "1"


class DetectorBackend(Protocol):
    name: str

    def setup(self) -> None: ...

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        """(T,H,W,3) uint8 RGB -> one FrameDetections per frame, track ids from a tracker fresh for this call."""
        ...

    def provenance(self) -> dict[str, Any]: ...


class BackendUnavailable(RuntimeError):
    """The backend's library is missing a part it needs; the message says what to install."""


# ---------------------------------------------------------------------------------------------- yolo


@dataclass
class YoloConfig:
    # A registry name (file in the weights folder), a local .pt path, or a model .yaml. A .yaml builds
    # random weights: for tests of the plumbing only, never a default.
    weights: str = "yolo11n"
    person_class: int | None = None  # None: the class the checkpoint names "person"
    imgsz: int = 640
    # Raw detections down to this score go to ByteTrack, whose second association uses the low-score
    # ones (Ultralytics' own `track()` default); the filters count people at their own threshold.
    detect_conf: float = 0.1
    nms_iou: float = 0.7
    max_det: int = 300
    device: str | None = None  # None: Ultralytics picks (first GPU, else CPU)
    fp16: bool = False  # half-precision compute on a GPU (Ultralytics' `quantize=16`)
    batch: int = 30  # frames per forward pass
    tracker: str = "bytetrack.yaml"
    tracker_overrides: dict[str, float] = field(default_factory=dict)


def _resolve_yolo_weights(weights: str) -> tuple[str, Path | None]:
    """(what to hand to YOLO(), local file or None for a yaml); never lets Ultralytics download."""
    if weights in REGISTRY:
        path = require(weights)
        return str(path), path
    if weights.endswith((".yaml", ".yml")):
        return weights, None
    path = Path(weights).expanduser()
    if not path.is_file():
        hint = how_to_get(REGISTRY["yolo11n"], weights_path("yolo11n"))
        raise WeightsMissing(
            f"YOLO weights {weights!r} not found: give a registry name ({', '.join(n for n in REGISTRY if 'yolo' in n)}) "
            f"or a local .pt file; for the default: {hint}"
        )
    return str(path), path


def _enforce_ultralytics_switches() -> None:
    """If ultralytics was imported before this module set its switches, apply them to the live modules."""
    import ultralytics.nn.tasks as un_tasks
    import ultralytics.utils as un_utils
    import ultralytics.utils.checks as un_checks

    if not un_tasks.SAFE_LOAD or un_checks.AUTOINSTALL:
        log.warning("ultralytics was imported before unish set its switches; applying them in place")
        un_tasks.SAFE_LOAD = un_utils.SAFE_LOAD = True
        un_checks.AUTOINSTALL = un_utils.AUTOINSTALL = False


class YoloBackend:
    name = "yolo"

    def __init__(self, config: YoloConfig | None = None):
        self.config = config or YoloConfig()
        self.model: Any = None
        self.person_class: int = -1
        self.weights_sha256: str | None = None
        self._tracker_cfg: Any = None

    def setup(self) -> None:
        if self.model is not None:
            return
        source, path = _resolve_yolo_weights(self.config.weights)  # raises before ultralytics loads anything
        from ultralytics import YOLO
        from ultralytics.utils import YAML, IterableSimpleNamespace
        from ultralytics.utils.checks import check_yaml

        _enforce_ultralytics_switches()
        model = YOLO(source)
        if model.task != "detect":
            raise ValueError(f"{source}: a {model.task} model; people:yolo needs a detection checkpoint")
        names = {int(k): str(v) for k, v in model.names.items()}
        if self.config.person_class is not None:
            if self.config.person_class not in names:
                raise ValueError(f"person_class {self.config.person_class} not among the model's {len(names)} classes")
            self.person_class = self.config.person_class
        else:
            matches = [k for k, v in names.items() if v.lower() == "person"]
            if not matches:
                raise ValueError(
                    f"{source}: no class named 'person' (classes {list(names.values())[:5]}...); pass person_class"
                )
            self.person_class = matches[0]
        cfg = dict(YAML.load(check_yaml(self.config.tracker)))
        cfg.update(self.config.tracker_overrides)
        if cfg.get("tracker_type") != "bytetrack":
            raise ValueError(f"people:yolo tracks with ByteTrack; {self.config.tracker} is {cfg.get('tracker_type')!r}")
        self._tracker_cfg = IterableSimpleNamespace(**cfg)
        self.weights_sha256 = sha256_file(path) if path is not None else None
        self.model = model

    def new_tracker(self) -> Any:
        from ultralytics.trackers.byte_tracker import BYTETracker

        return BYTETracker(args=self._tracker_cfg)

    def predict(self, frames: np.ndarray) -> list[Any]:
        """Ultralytics' predictor on RGB frames (it expects BGR arrays); one Results per frame."""
        self.setup()
        c = self.config
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        results: list[Any] = []
        for i in range(0, len(bgr), max(1, c.batch)):
            results += self.model.predict(
                bgr[i : i + c.batch],
                imgsz=c.imgsz,
                conf=c.detect_conf,
                iou=c.nms_iou,
                classes=[self.person_class],
                max_det=c.max_det,
                device=c.device,
                verbose=False,
                **({"quantize": 16} if c.fp16 else {}),
            )
        return results

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        results = self.predict(frames)
        # A fresh ByteTrack per window. (`YOLO.track()` on a list of frames would reset its tracker at
        # every frame, since each list item counts as a new source; so we drive the tracker ourselves.)
        tracker = self.new_tracker()
        out: list[FrameDetections] = []
        for res in results:
            boxes = res.boxes.cpu().numpy()
            ids = np.full(len(boxes), -1, np.int64)
            tracks = tracker.update(boxes, res.orig_img)  # rows: x1 y1 x2 y2 id score cls det_index
            for row in np.asarray(tracks).reshape(-1, 8):
                ids[int(row[7])] = int(row[4])
            out.append(FrameDetections.make(boxes.xyxy, boxes.conf, ids))
        return out

    def provenance(self) -> dict[str, Any]:
        import ultralytics

        return {
            "backend": self.name,
            "weights": self.config.weights,
            "weights_sha256": self.weights_sha256,
            "package_version": f"ultralytics {ultralytics.__version__}",
            "detector": {**asdict(self.config), "person_class": self.person_class},
        }


# ----------------------------------------------------------------------------------------------- hog


@dataclass
class HogConfig:
    win_stride: int = 8
    padding: int = 8
    scale: float = 1.05  # image pyramid step
    hit_threshold: float = 0.0  # SVM margin a window needs
    group_threshold: float = 2.0  # OpenCV's rectangle grouping (detectMultiScale's finalThreshold)
    # The 64x128 detection window has a margin around the person; shrink boxes to the body as
    # OpenCV's own people-detect sample does (share of width per side, share of height per side).
    shrink_x: float = 0.15
    shrink_y: float = 0.05
    iou_match: float = 0.3  # tracker: least IoU to continue a track
    max_lost: int = 5  # tracker: frames a track survives without a match


def hog_descriptor_class() -> Any:
    """OpenCV's HOGDescriptor, or BackendUnavailable naming the fix (OpenCV 5's main wheels dropped it)."""
    import cv2

    cls = getattr(cv2, "HOGDescriptor", None)
    if cls is None:
        raise BackendUnavailable(
            f"OpenCV {cv2.__version__} has no HOGDescriptor (OpenCV 5 moved the HOG people detector out of "
            f"opencv-python); install opencv-contrib-python-headless=={cv2.__version__.split('-')[0]}.* "
            "or an OpenCV 4.x build to use people:hog"
        )
    return cls


class IoUTracker:
    """Greedy IoU association between consecutive frames; ids start at 1 for every new tracker."""

    def __init__(self, iou_match: float = 0.3, max_lost: int = 5):
        self.iou_match = iou_match
        self.max_lost = max_lost
        self._boxes: dict[int, np.ndarray] = {}
        self._lost: dict[int, int] = {}
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        ids = np.full(len(boxes), -1, np.int64)
        track_ids = list(self._boxes)
        if track_ids and len(boxes):
            iou = box_iou(np.stack([self._boxes[t] for t in track_ids]), boxes)
            pairs = sorted(
                ((iou[i, j], i, j) for i in range(len(track_ids)) for j in range(len(boxes))), reverse=True
            )
            used_t: set[int] = set()
            for v, i, j in pairs:
                if v < self.iou_match:
                    break
                if i in used_t or ids[j] >= 0:
                    continue
                used_t.add(i)
                ids[j] = track_ids[i]
        for j in np.flatnonzero(ids < 0):
            ids[j] = self._next_id
            self._next_id += 1
        matched = set(int(t) for t in ids)
        for t in track_ids:
            if t not in matched:
                self._lost[t] += 1
                if self._lost[t] > self.max_lost:
                    del self._boxes[t], self._lost[t]
        for j, t in enumerate(ids):
            self._boxes[int(t)] = boxes[j]
            self._lost[int(t)] = 0
        return ids


class HogBackend:
    name = "hog"

    def __init__(self, config: HogConfig | None = None):
        self.config = config or HogConfig()
        self._hog: Any = None

    def setup(self) -> None:
        if self._hog is not None:
            return
        cls = hog_descriptor_class()
        hog = cls()
        hog.setSVMDetector(cls.getDefaultPeopleDetector())
        self._hog = hog

    def detect_frame(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (N,4) xyxy float32, scores (N,)) for one RGB frame; score = logistic(SVM margin)."""
        self.setup()
        c = self.config
        bgr = np.ascontiguousarray(frame_rgb[..., ::-1])  # HOG takes the strongest gradient over channels
        rects, weights = self._hog.detectMultiScale(
            bgr,
            hitThreshold=c.hit_threshold,
            winStride=(c.win_stride, c.win_stride),
            padding=(c.padding, c.padding),
            scale=c.scale,
            groupThreshold=c.group_threshold,
        )
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        margins = np.asarray(weights, np.float32).reshape(-1)
        x, y, w, h = rects.T
        h_img, w_img = frame_rgb.shape[:2]
        boxes = np.stack(
            [x + c.shrink_x * w, y + c.shrink_y * h, x + (1 - c.shrink_x) * w, y + (1 - c.shrink_y) * h], axis=1
        )
        boxes = np.clip(boxes, 0, [w_img, h_img, w_img, h_img]).astype(np.float32)
        scores = (1.0 / (1.0 + np.exp(-margins.astype(np.float64)))).astype(np.float32)
        return boxes, scores

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        tracker = IoUTracker(self.config.iou_match, self.config.max_lost)
        out = []
        for frame in frames:
            boxes, scores = self.detect_frame(frame)
            out.append(FrameDetections.make(boxes, scores, tracker.update(boxes)))
        return out

    def provenance(self) -> dict[str, Any]:
        import cv2

        return {
            "backend": self.name,
            "weights": "opencv-default-people-detector",
            "weights_sha256": None,  # built into OpenCV
            "package_version": f"opencv {cv2.__version__}",
            "detector": asdict(self.config),
        }


# --------------------------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class PeopleStageParams:
    """Everything that changes the stage's output: the flow's cache key is built from it."""

    backend: str
    detector: dict[str, Any]
    filters: PeopleFilterParams
    weights_sha256: str | None


class PeopleStage:
    """The `people` labelling stage: detect + track, filter, and write the tracked box per frame."""

    name = "people"
    version = STAGE_VERSION

    def __init__(self, backend: DetectorBackend, filters: PeopleFilterParams | None = None):
        self.backend = backend
        self.filters = filters or PeopleFilterParams()
        self._ready = False

    def setup(self) -> None:
        self.backend.setup()
        self._ready = True

    @property
    def params(self) -> PeopleStageParams:
        p = self.backend.provenance()
        return PeopleStageParams(p["backend"], p["detector"], self.filters, p.get("weights_sha256"))

    def evaluate(self, frames: np.ndarray) -> PeopleVerdict:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"people: frames must be (T,H,W,3) uint8 with T > 0, got {frames.shape} {frames.dtype}")
        if not self._ready:
            self.setup()
        detections = self.backend.detect(frames)
        height, width = frames.shape[1:3]
        return evaluate_people(detections, width, height, self.filters)

    def provenance(self) -> dict[str, Any]:
        p = self.backend.provenance()
        detector = p.pop("detector")
        return {**p, "params": {"detector": detector, "filters": self.filters.as_dict()}, "version": self.version}

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        verdict = self.evaluate(clip.frames)
        clip.provenance[self.name] = self.provenance()
        stats = {**verdict.stats, "backend": self.backend.name}
        if not verdict.kept:
            assert verdict.rule is not None
            raise ClipRejected(verdict.rule, verdict.detail, stats)
        clip.labels[self.name] = {
            "box": verdict.box.astype(np.float32),
            "score": verdict.score.astype(np.float32),
            "present": verdict.present.astype(bool),
            "track_id": np.asarray(verdict.track_id, np.int64),
            "stats": stats,
        }
        return clip


def _split_params(params: dict[str, Any], config_cls: type) -> tuple[Any, PeopleFilterParams]:
    filter_names = {f.name for f in fields(PeopleFilterParams)}
    config_names = {f.name for f in fields(config_cls)}
    unknown = set(params) - filter_names - config_names
    if unknown:
        raise TypeError(f"unknown people-stage parameters: {', '.join(sorted(unknown))}")
    config = config_cls(**{k: v for k, v in params.items() if k in config_names})
    filters = PeopleFilterParams(**{k: v for k, v in params.items() if k in filter_names})
    return config, filters


@register_stage("people:yolo")
def yolo_people_stage(**params: Any) -> LabelStage:
    """people with YOLO + ByteTrack; params are YoloConfig and PeopleFilterParams fields."""
    config, filters = _split_params(params, YoloConfig)
    return PeopleStage(YoloBackend(config), filters)


@register_stage("people:hog")
def hog_people_stage(**params: Any) -> LabelStage:
    """people with OpenCV HOG + an IoU tracker; params are HogConfig and PeopleFilterParams fields."""
    config, filters = _split_params(params, HogConfig)
    return PeopleStage(HogBackend(config), filters)


__all__ = [
    "BackendUnavailable",
    "DetectorBackend",
    "HogBackend",
    "HogConfig",
    "IoUTracker",
    "PeopleStage",
    "PeopleStageParams",
    "YoloBackend",
    "YoloConfig",
    "hog_descriptor_class",
    "hog_people_stage",
    "yolo_people_stage",
]
