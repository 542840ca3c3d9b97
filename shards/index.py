"""The Parquet index (one row per clip window) and videos table (one row per manifest row)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from shards.atomic import atomic_path
from shards.schema import STATUS_ERROR, STATUS_OK, STATUS_REJECTED, empty_row

INDEX_FILE = "index.parquet"
VIDEOS_FILE = "videos.parquet"


def rows_to_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    full = []
    for row in rows:
        unknown = set(row) - set(schema.names)
        if unknown:
            raise ValueError(f"row has columns not in the schema: {sorted(unknown)}")
        full.append({**empty_row(schema), **row})
    return pa.Table.from_pylist(full, schema=schema)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temp name, fsync, rename: readers see the old file or the new one, never half."""
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp)


def write_table_if_changed(table: pa.Table, path: Path) -> bool:
    """Write the table only if the file does not already hold exactly it (a finished run, rerun, rewrites
    nothing); returns whether it wrote."""
    path = Path(path)
    if path.exists():
        try:
            if pq.read_table(path).equals(table):
                return False
        except (OSError, pa.ArrowInvalid):
            pass  # unreadable: replace it
    write_table_atomic(table, path)
    return True


def read_index(out_dir: Path | str) -> tuple[pa.Table, pa.Table]:
    """(index, videos) of a run folder, or of a run at an fsspec URL (`s3://bucket/run`)."""
    from shards.store import check_store, exists, is_url, join

    if is_url(out_dir):
        check_store(str(out_dir))  # a missing bucket or credentials: StoreError, not "not a curated output"
    else:
        out_dir = Path(out_dir)
    missing = [n for n in (INDEX_FILE, VIDEOS_FILE) if not exists(join(out_dir, n))]
    if missing:
        raise FileNotFoundError(f"{out_dir} is not a curated output: missing {', '.join(missing)}")
    return _read_parquet(join(out_dir, INDEX_FILE)), _read_parquet(join(out_dir, VIDEOS_FILE))


def _read_parquet(path: str) -> pa.Table:
    from shards.tario import open_url

    with open_url(path) as f:
        return pq.read_table(f)


@dataclass
class Funnel:
    videos_in: int = 0
    videos_ok: int = 0
    videos_error: Counter = field(default_factory=Counter)  # reason -> count
    videos_rejected: Counter = field(default_factory=Counter)  # reason -> count
    windows: int = 0
    rejected: Counter = field(default_factory=Counter)  # rule -> count
    errors: Counter = field(default_factory=Counter)  # error class -> count
    clips_written: int = 0
    bytes_written: int = 0
    shards: int = 0


def compute_funnel(index: pa.Table, videos: pa.Table) -> Funnel:
    f = Funnel()
    vids = videos.to_pylist()
    f.videos_in = len(vids)
    for v in vids:
        if v["status"] == STATUS_ERROR:
            f.videos_error[v["reason"] or "unknown"] += 1
        elif v["status"] == STATUS_REJECTED:
            f.videos_rejected[v["reason"] or "unknown"] += 1
        else:
            f.videos_ok += 1
    shards = set()
    for row in index.to_pylist():
        f.windows += 1
        if row["status"] == STATUS_OK:
            f.clips_written += 1
            f.bytes_written += row["bytes"] or 0
            shards.add(row["shard"])
        elif row["status"] == STATUS_REJECTED:
            f.rejected[row["reason"] or "unknown"] += 1
        elif row["status"] == STATUS_ERROR:
            f.errors[row["reason"] or "unknown"] += 1
    f.shards = len(shards)
    return f
