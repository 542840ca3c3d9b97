"""`people:external`: no detector runs; detections made elsewhere (another detector's run, human annotation) are
read from the file given as `detections=` (CLI: `--stage-param people:external.detections=dets.parquet`).

A row is (source_id, time_s, x1, y1, x2, y2, score[, track_id]): the manifest's source id, the source time in
seconds, the box in upright (display) source pixels, a score in [0, 1], and optionally a track id (an integer
>= 0, on every row or on none). Formats: `.json` (a list of row objects, or {"detections": [...]}), `.jsonl`,
`.parquet` (one column per field). Each clip frame takes the rows of its source at the detection time nearest to
the frame's source time (`meta.frame_times_s`), if within `max_time_gap_s` (default half a source-frame interval:
that very frame's rows); a frame with none has nobody in it. Boxes map to model pixels through the clip's
`meta.geometry` (the decoder's resize and crop), are clipped to the frame (a box cropped away entirely is
dropped), tracked with the IoU tracker when the file has no track ids (ids given in the file are kept as they
are), and go through the same filters. The whole file is checked in `setup()`: a missing file or a malformed row
fails the run before any video, naming the file and the row (counting from 1). A clip whose source has no row at
all is an error (the file does not cover that video), not a rejection. Provenance records the file's path and
sha256 (`detections_sha256`), which key the cache.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.people.stage import PeopleStage
from tasks.people.tracker import IoUTracker
from tasks.people_filters import FrameDetections, PeopleFilterParams
from tasks.stage import ClipWindow, LabelStage, package_version, register_stage, split_params
from tasks.weights import sha256_file
from unish_model.boxes import clip_boxes

__all__ = [
    "DETECTION_COLUMNS", "TRACK_COLUMN", "DETECTION_FORMATS", "DetectionsFileError", "DetectionsNotFound",
    "ExternalConfig", "SourceDetections", "ExternalBackend", "parse_detection_row", "read_detection_rows",
    "load_detections", "match_frame_times", "source_to_model_boxes", "external_people_stage",
]


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
            "package_version": package_version("unish"),
            "detector": {**asdict(self.config), "detections_sha256": self.detections_sha256,
                         "track_ids": "file" if self.has_track_ids else "iou_tracker", "rows": self.num_rows},
        }


@register_stage("people:external")
def external_people_stage(**params: Any) -> LabelStage:
    """people from a detections file made elsewhere; params are ExternalConfig and PeopleFilterParams fields."""
    config, filters = split_params("people:external", params, ExternalConfig, PeopleFilterParams)
    return PeopleStage(ExternalBackend(config), filters)
