"""Clip keys, statuses and the index's columns: the one place these facts live."""
from __future__ import annotations

import hashlib
import re

import pyarrow as pa

# The model's input: 30 frames at 6 fps (5 s windows), 518x294 landscape (W x H), patch 14.
WINDOW_SECONDS = 5.0
WINDOW_FPS = 6.0
WINDOW_FRAMES = 30
MODEL_LONG_SIDE = 518
MODEL_SHORT_SIDE = 294

# Label families (member prefixes) that training reads; each family's entries are described where it is
# written: people (tasks/people), masks (shards/mask_codec), depth (shards/depth_codec), keypoints
# (tasks/keypoints); gt and gt_depth by the BEDLAM converter (synthetic ground truth, see unish_model/train/data.py).
PEOPLE = "people"
MASKS = "masks"
DEPTH = "depth"
KEYPOINTS = "keypoints"
GT = "gt"
GT_DEPTH = "gt_depth"

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
STATUS_ERROR = "error"
STATUSES = (STATUS_OK, STATUS_REJECTED, STATUS_ERROR)

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(text: str, max_len: int = 48) -> str:
    """A source id for keys and file names: [A-Za-z0-9_-] only (WebDataset splits keys at dots)."""
    cleaned = _SAFE.sub("_", text).strip("_")[:max_len]
    return cleaned or "source"


def hashed_id(prefix: str, text: str) -> str:
    """A stable id for a source with no natural one (an URL, a local path): readable stem + hash."""
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"{safe_id(prefix, 32)}_{digest}"


def clip_key(source_id: str, start_s: float, end_s: float) -> str:
    """`{source_id}-{start_ms:09d}-{end_ms:09d}`, as DESIGN.md fixes it."""
    if "." in source_id:
        raise ValueError(f"source id {source_id!r} contains a dot")
    return f"{source_id}-{round(start_s * 1000):09d}-{round(end_s * 1000):09d}"


# One row per clip window (and per video that failed before windowing, with key "" and no times).
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),  # as recorded: ID, URL, or a local path relative to the manifest (older runs: absolute)
        ("source_id", pa.string()),
        ("row", pa.int64()),  # 1-based manifest data row
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("shard", pa.string()),  # shard file name relative to the output's shards/ folder
        ("n_frames", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),  # bytes of the sample in its shard
        ("members", pa.int32()),  # member files of the sample (frames, meta, labels): checked on read
        ("sha256", pa.string()),  # digest of the sample's members (shards.sample.sample_digest): checked on read
        ("labels", pa.string()),  # JSON: label family -> version
        ("stats", pa.string()),  # JSON: what the filters looked at
    ]
)

# One row per manifest row: the video's fate.
VIDEOS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("row", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("path", pa.string()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("rotation", pa.int32()),
        ("n_windows", pa.int32()),
        ("n_ok", pa.int32()),
        ("start_s", pa.float64()),  # the span the manifest row asked for (null: from the start / to the end);
        ("end_s", pa.float64()),  # a release's manifest.csv repeats it (runs curated before have no such column)
    ]
)


def empty_row(schema: pa.Schema) -> dict:
    """A row with every column present (None for unknown), so tables stay rectangular."""
    return {name: None for name in schema.names}
