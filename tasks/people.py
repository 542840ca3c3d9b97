"""people: detect and track persons over a clip window, then apply the paper's filters.

Two detector backends share one interface (`detect(frames) -> per-frame FrameDetections`):
- `yolo` (paper profile): an Ultralytics YOLO detection checkpoint from the weights folder, persons
  only, with Ultralytics' ByteTrack over the window's frames;
- `hog` (lite profile, offline, CPU): OpenCV's HOG people detector with its built-in SVM and a
  simple IoU tracker. It only finds upright, roughly pedestrian-sized people (about 96 px or taller
  at the model size), misses unusual poses (dance, sitting, lying, seen from above), and its scores
  are an SVM margin, not a probability: use it for laptops and demos, not for a release.

A third backend runs no detector: `external` reads detections made elsewhere (another detector's run,
human annotation) from the file given as `detections=` (CLI: `--stage-param
people:external.detections=dets.parquet`). A row is (source_id, time_s, x1, y1, x2, y2, score[, track_id]):
the manifest's source id, the source time in seconds, the box in upright (display) source pixels, a score
in [0, 1], and optionally a track id (an integer >= 0, on every row or on none). Formats: `.json` (a list
of row objects, or {"detections": [...]}), `.jsonl`, `.parquet` (one column per field). Each clip frame
takes the rows of its source at the detection time nearest to the frame's source time (`meta.frame_times_s`),
if within `max_time_gap_s` (default half a source-frame interval: that very frame's rows); a frame with
none has nobody in it. Boxes map to model pixels through the clip's `meta.geometry` (the decoder's resize
and crop), are clipped to the frame (a box cropped away entirely is dropped), tracked with the IoU tracker
when the file has no track ids, and go through the same filters. The whole file is checked in `setup()`:
a missing file or a malformed row fails the run before any video, naming the file and the row (counting
from 1). A clip whose source has no row at all is an error (the file does not cover that video), not a
rejection. Provenance records the file's path and sha256 (`detections_sha256`), which key the cache.

Every window gets a fresh tracker, so track ids start at 1 and nothing carries over from one video
or window to the next (track ids given in an external file are kept as they are). The filters
themselves live in `tasks.people_filters`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.people_filters import FrameDetections, PeopleFilterParams, PeopleVerdict, evaluate_people
from tasks.stage import ClipRejected, ClipWindow, LabelStage, register_stage, split_params
from tasks.weights import (
    REGISTRY,
    WeightsMissing,
    how_to_get,
    prepare_ultralytics_env,
    require,
    sha256_file,
    weights_path,
)
from unish_model.boxes import box_iou, clip_boxes

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


# ------------------------------------------------------------------------------------------ external

# The columns of a detections file; `track_id` is optional (all rows have it, or none does).
DETECTION_COLUMNS: tuple[str, ...] = ("source_id", "time_s", "x1", "y1", "x2", "y2", "score")
TRACK_COLUMN = "track_id"
DETECTION_FORMATS = (".json", ".jsonl", ".parquet")


class DetectionsFileError(ValueError):
    """The detections file is missing, unreadable or has a malformed row; the message names file and row."""


class DetectionsNotFound(LookupError):
    """The detections file has no row for a clip's source: it does not cover that video."""


@dataclass
class ExternalConfig:
    # The detections file: .json (a list of row objects, or {"detections": [...]}), .jsonl (one row
    # object per line) or .parquet (one column per field). Rows: source_id, time_s (source seconds),
    # x1 y1 x2 y2 (upright source pixels), score in [0, 1], optional track_id (an integer >= 0).
    detections: str = ""
    # A clip frame takes the detections of the nearest detection time of its source, if it lies within
    # this many seconds; None: half a source-frame interval, i.e. detections of that very source frame.
    # Raise it for sparse annotations (e.g. 0.5 / annotation rate) so they stand for nearby frames.
    max_time_gap_s: float | None = None
    iou_match: float = 0.3  # IoU tracker (used when the file has no track ids)
    max_lost: int = 5


@dataclass(frozen=True)
class SourceDetections:
    """One source's rows, grouped by time: `times` (K,) ascending; `rows[k]` indexes the rows of time k."""

    times: np.ndarray
    rows: tuple[np.ndarray, ...]
    boxes: np.ndarray  # (N,4) xyxy, upright source pixels
    scores: np.ndarray  # (N,)
    track_ids: np.ndarray  # (N,) int64, -1 where the file has no track ids


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def parse_detection_row(
    row: Any, n: int, path: Path | str, with_track: bool
) -> tuple[str, float, list[float], float, int]:
    """One row -> (source_id, time_s, [x1, y1, x2, y2], score, track_id or -1); `n` counts from 1."""

    def bad(why: str) -> DetectionsFileError:
        return DetectionsFileError(f"{path}: row {n}: {why}")

    if not isinstance(row, dict):
        raise bad(f"expected an object with fields {', '.join(DETECTION_COLUMNS)}, got {type(row).__name__}")
    missing = [c for c in DETECTION_COLUMNS if row.get(c) is None]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    source_id = row["source_id"]
    if not isinstance(source_id, str) or not source_id:
        raise bad(f"source_id must be a non-empty string, got {source_id!r}")
    values = {}
    for c in DETECTION_COLUMNS[1:]:
        v = row[c]
        if not _is_number(v) or not np.isfinite(float(v)):
            raise bad(f"{c} must be a finite number, got {v!r}")
        values[c] = float(v)
    if values["time_s"] < 0:
        raise bad(f"time_s must be >= 0, got {values['time_s']}")
    if not (values["x2"] > values["x1"] and values["y2"] > values["y1"]):
        raise bad(f"box must have x2 > x1 and y2 > y1, got {[values[c] for c in ('x1', 'y1', 'x2', 'y2')]}")
    if not 0.0 <= values["score"] <= 1.0:
        raise bad(f"score must be in [0, 1], got {values['score']}")
    track = -1
    if with_track:
        t = row.get(TRACK_COLUMN)
        if t is None:
            raise bad("track_id missing, but other rows have one: give it on every row or on none")
        if not _is_number(t) or not float(t).is_integer() or float(t) < 0:
            raise bad(f"track_id must be an integer >= 0, got {t!r}")
        track = int(t)
    return source_id, values["time_s"], [values[c] for c in ("x1", "y1", "x2", "y2")], values["score"], track


def _rows_from_parquet(path: Path) -> list[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DetectionsFileError(f"{path}: cannot read as Parquet ({e})") from None
    missing = [c for c in DETECTION_COLUMNS if c not in table.column_names]
    if missing:
        raise DetectionsFileError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(table.column_names)})")
    return table.select([c for c in (*DETECTION_COLUMNS, TRACK_COLUMN) if c in table.column_names]).to_pylist()


def _rows_from_json(path: Path, lines: bool) -> list[Any]:
    import json

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DetectionsFileError(f"{path}: cannot read ({e})") from None
    if lines:  # JSON Lines: row n is the n-th non-blank line
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DetectionsFileError(f"{path}: line {i}: not JSON ({e})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DetectionsFileError(f"{path}: not JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("detections"), list):
        data = data["detections"]
    if not isinstance(data, list):
        raise DetectionsFileError(
            f'{path}: expected a list of rows (or {{"detections": [...]}}), got {type(data).__name__}'
        )
    return data


def read_detection_rows(path: Path) -> list[Any]:
    """The file's rows as dicts, in file order (row n = the n-th record, counting from 1)."""
    suffix = path.suffix.lower()
    if suffix not in DETECTION_FORMATS:
        raise DetectionsFileError(f"{path}: unknown detections format {suffix!r}; use {', '.join(DETECTION_FORMATS)}")
    if not path.is_file():
        raise DetectionsFileError(f"{path}: detections file not found")
    if suffix == ".parquet":
        return _rows_from_parquet(path)
    return _rows_from_json(path, lines=suffix == ".jsonl")


def load_detections(path: Path) -> tuple[dict[str, SourceDetections], bool, int]:
    """Read and check every row: ({source_id: its detections}, whether the file has track ids, row count)."""
    rows = read_detection_rows(path)
    with_track = any(isinstance(r, dict) and r.get(TRACK_COLUMN) is not None for r in rows)
    parsed = [parse_detection_row(r, n, path, with_track) for n, r in enumerate(rows, 1)]
    by_source: dict[str, list[tuple[float, list[float], float, int]]] = {}
    for source_id, time_s, box, score, track in parsed:
        by_source.setdefault(source_id, []).append((time_s, box, score, track))
    out: dict[str, SourceDetections] = {}
    for source_id, items in by_source.items():
        # Group at microsecond resolution: one frame's rows may carry times that differ by float noise.
        ticks = np.array([round(t * 1e6) for t, _, _, _ in items], np.int64)
        order = np.argsort(ticks, kind="stable")
        uniq, first = np.unique(ticks[order], return_index=True)
        groups = tuple(np.split(order, first[1:]))
        out[source_id] = SourceDetections(
            times=uniq.astype(np.float64) / 1e6,
            rows=groups,
            boxes=np.array([b for _, b, _, _ in items], np.float64).reshape(-1, 4),
            scores=np.array([s for _, _, s, _ in items], np.float32),
            track_ids=np.array([t for _, _, _, t in items], np.int64),
        )
    return out, with_track, len(parsed)


def match_frame_times(det_times: np.ndarray, frame_times: np.ndarray, max_gap_s: float) -> np.ndarray:
    """For each frame time, the index of the nearest detection time within `max_gap_s`, else -1.
    A frame exactly between two detection times takes the earlier."""
    det_times = np.asarray(det_times, np.float64)
    frame_times = np.asarray(frame_times, np.float64)
    out = np.full(len(frame_times), -1, np.int64)
    if len(det_times) == 0:
        return out
    right = np.clip(np.searchsorted(det_times, frame_times), 0, len(det_times) - 1)
    left = np.clip(right - 1, 0, len(det_times) - 1)
    take_left = np.abs(frame_times - det_times[left]) <= np.abs(det_times[right] - frame_times)
    best = np.where(take_left, left, right)
    # A tiny slack so a gap of exactly max_gap_s survives float rounding of stored times.
    ok = np.abs(det_times[best] - frame_times) <= max_gap_s + 1e-9
    out[ok] = best[ok]
    return out


def source_to_model_boxes(boxes: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """Boxes (N,4) in upright source pixels -> model-frame pixels, through the decoder's resize and crop.

    Uses the resize the decoder really did (to `scaled_size`, per axis) and its crop offset, so a box
    lands on the same pixels as the person in the stored frames.
    """
    from tasks.decode import FrameGeometry

    g = FrameGeometry(**{k: geometry[k] for k in FrameGeometry.__dataclass_fields__})
    sw, sh = g.scaled_size
    sw, sh = max(sw, g.out_width), max(sh, g.out_height)
    sx, sy = sw / g.src_width, sh / g.src_height
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0] * sx - g.crop_x, b[:, 1] * sy - g.crop_y, b[:, 2] * sx - g.crop_x,
                     b[:, 3] * sy - g.crop_y], axis=1)


class ExternalBackend:
    """Detections made elsewhere (another detector's run, human annotation), read from a file."""

    name = "external"

    def __init__(self, config: ExternalConfig | None = None):
        self.config = config or ExternalConfig()
        self.path: Path | None = None
        self.detections: dict[str, SourceDetections] | None = None
        self.has_track_ids = False
        self.num_rows = 0
        self.detections_sha256: str | None = None
        self._stat: tuple[int, int] | None = None

    def setup(self) -> None:
        if self.detections is not None:
            return
        c = self.config
        if not c.detections:
            raise DetectionsFileError("people:external needs a detections file: detections=<path to .json, .jsonl "
                                      "or .parquet> (CLI: --stage-param people:external.detections=PATH)")
        if c.max_time_gap_s is not None and not c.max_time_gap_s >= 0:
            raise ValueError(f"people:external max_time_gap_s must be >= 0, got {c.max_time_gap_s}")
        path = Path(c.detections).expanduser().resolve()
        detections, has_track, n = load_detections(path)
        st = path.stat()
        self.path, self.has_track_ids, self.num_rows = path, has_track, n
        self.detections_sha256 = sha256_file(path)
        self._stat = (st.st_mtime_ns, st.st_size)
        self.detections = detections

    def _check_unchanged(self) -> None:
        # The stage (and its fingerprint, which holds the file's sha256) is built once per worker: a file
        # edited afterwards would label with stale rows under the old fingerprint, so refuse instead.
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError as e:
            raise DetectionsFileError(f"{self.path}: detections file vanished after it was loaded ({e})") from None
        if (st.st_mtime_ns, st.st_size) != self._stat:
            raise DetectionsFileError(f"{self.path}: detections file changed after it was loaded; start a new run")

    def max_gap_s(self, meta: dict[str, Any]) -> float:
        if self.config.max_time_gap_s is not None:
            return float(self.config.max_time_gap_s)
        fps = meta.get("source_fps")
        if not fps or not float(fps) > 0:
            raise ValueError("people:external: the clip's meta has no source_fps to derive the time tolerance "
                             "from; pass max_time_gap_s")
        return 0.5 / float(fps)

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        raise TypeError("people:external reads detections by source and time: call detect_clip(clip)")

    def detect_clip(self, clip: ClipWindow) -> list[FrameDetections]:
        """The file's detections at each clip frame's source time, in model pixels, with track ids."""
        self.setup()
        self._check_unchanged()
        assert self.detections is not None and self.path is not None
        t_count, height, width = clip.frames.shape[:3]
        geometry = clip.meta.get("geometry")
        if not geometry:
            raise ValueError(f"people:external: clip {clip.key!r} has no meta['geometry'] to map source pixels to "
                             "model pixels (clips staged by the curation flow carry it)")
        if (geometry["out_width"], geometry["out_height"]) != (width, height):
            raise ValueError(f"people:external: clip {clip.key!r} frames are {width}x{height} but its geometry "
                             f"says {geometry['out_width']}x{geometry['out_height']}")
        frame_times = np.asarray(clip.frame_times_s, np.float64).reshape(-1)
        if len(frame_times) != t_count:
            raise ValueError(f"people:external: clip {clip.key!r} has {t_count} frames but {len(frame_times)} times")
        source = self.detections.get(clip.source_id)
        if source is None:
            raise DetectionsNotFound(f"{self.path} has no detections for source_id {clip.source_id!r} (clip "
                                     f"{clip.key}); it lists {len(self.detections)} sources")
        which = match_frame_times(source.times, frame_times, self.max_gap_s(clip.meta))
        tracker = None if self.has_track_ids else IoUTracker(self.config.iou_match, self.config.max_lost)
        out: list[FrameDetections] = []
        for k in which:
            idx = source.rows[k] if k >= 0 else np.zeros(0, np.int64)
            boxes, keep = clip_boxes(source_to_model_boxes(source.boxes[idx], geometry), width, height)
            boxes, scores, ids = boxes[keep], source.scores[idx][keep], source.track_ids[idx][keep]
            if tracker is not None:
                ids = tracker.update(boxes)
            out.append(FrameDetections.make(boxes, scores, ids))
        return out

    def provenance(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "weights": None,  # no model runs here; the file below is what decides the output
            "weights_sha256": None,
            "detections": str(self.path or self.config.detections),
            "detections_sha256": self.detections_sha256,
            "package_version": _package_version("unish"),
            "detector": {**asdict(self.config), "detections_sha256": self.detections_sha256,
                         "track_ids": "file" if self.has_track_ids else "iou_tracker", "rows": self.num_rows},
        }


def _package_version(dist: str) -> str:
    import importlib.metadata

    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} (version unknown)"



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

    def evaluate(self, frames: np.ndarray, clip: ClipWindow | None = None) -> PeopleVerdict:
        """Detect, track and filter. Backends that read detections by source and time (`detect_clip`,
        as people:external) need the clip; the others see the frames only."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"people: frames must be (T,H,W,3) uint8 with T > 0, got {frames.shape} {frames.dtype}")
        if not self._ready:
            self.setup()
        detect_clip = getattr(self.backend, "detect_clip", None)
        if detect_clip is not None:
            if clip is None:
                raise TypeError(f"people:{self.backend.name} needs the clip (source id, frame times, geometry)")
            detections = detect_clip(clip)
        else:
            detections = self.backend.detect(frames)
        if len(detections) != len(frames):
            raise RuntimeError(
                f"people:{self.backend.name} gave {len(detections)} frames of detections for {len(frames)}"
            )
        height, width = frames.shape[1:3]
        return evaluate_people(detections, width, height, self.filters)

    def provenance(self) -> dict[str, Any]:
        p = self.backend.provenance()
        detector = p.pop("detector")
        return {**p, "params": {"detector": detector, "filters": self.filters.as_dict()}, "version": self.version}

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        verdict = self.evaluate(clip.frames, clip)
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




@register_stage("people:yolo")
def yolo_people_stage(**params: Any) -> LabelStage:
    """people with YOLO + ByteTrack; params are YoloConfig and PeopleFilterParams fields."""
    config, filters = split_params("people:yolo", params, YoloConfig, PeopleFilterParams)
    return PeopleStage(YoloBackend(config), filters)


@register_stage("people:hog")
def hog_people_stage(**params: Any) -> LabelStage:
    """people with OpenCV HOG + an IoU tracker; params are HogConfig and PeopleFilterParams fields."""
    config, filters = split_params("people:hog", params, HogConfig, PeopleFilterParams)
    return PeopleStage(HogBackend(config), filters)


@register_stage("people:external")
def external_people_stage(**params: Any) -> LabelStage:
    """people from a detections file made elsewhere; params are ExternalConfig and PeopleFilterParams fields."""
    config, filters = split_params("people:external", params, ExternalConfig, PeopleFilterParams)
    return PeopleStage(ExternalBackend(config), filters)


__all__ = [
    "BackendUnavailable",
    "DETECTION_COLUMNS",
    "DetectionsFileError",
    "DetectionsNotFound",
    "DetectorBackend",
    "ExternalBackend",
    "ExternalConfig",
    "HogBackend",
    "HogConfig",
    "IoUTracker",
    "PeopleStage",
    "PeopleStageParams",
    "YoloBackend",
    "YoloConfig",
    "external_people_stage",
    "hog_descriptor_class",
    "hog_people_stage",
    "load_detections",
    "match_frame_times",
    "source_to_model_boxes",
    "yolo_people_stage",
]
