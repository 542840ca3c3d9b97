"""What `unish inspect` shows beyond the funnel: one clip (`--key`), the clips of a status or reason (`--status`,
`--reason`), and the label families actually present in the shards.

Everything here returns plain JSON-able values (the `--json` output); `flows.cli.inspect` prints them as tables.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shards.schema import STATUSES, STATUS_OK

__all__ = ["filter_rows", "family_counts", "clip_details", "describe_entry", "ROW_FIELDS"]

ROW_FIELDS = ("key", "source_id", "start_s", "end_s", "status", "reason", "message", "shard")


def filter_rows(rows: list[dict[str, Any]], status: str | None, reason: str | None) -> list[dict[str, Any]]:
    """Clip rows (not the rows of videos that failed before windowing) of a status and/or reason."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
    return [r for r in rows if r["key"] and (status is None or r["status"] == status)
            and (reason is None or (r["reason"] or "") == reason)]


def family_counts(run: Path | str, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Label family -> kept clips whose sample in the main shards holds it (read from the tar headers), and
    `<family>@<version>` -> clips of each relabelled (sidecar) version, from labels.parquet."""
    from shards.peek import family_counts as peek_counts
    from shards.sidecar import read_labels_table
    from shards.store import exists, join

    ok = [r for r in rows if r["status"] == STATUS_OK and r["shard"]]
    shards = sorted({join(run, "shards", r["shard"]) for r in ok})
    found = peek_counts([s for s in shards if exists(s)], {r["key"] for r in ok})
    counts: dict[str, int] = dict(sorted(found.items()))
    table = read_labels_table(run).to_pylist()
    sidecar = Counter(f"{r['family']}@{r['version']}" for r in table if r["status"] == STATUS_OK)
    counts.update(sorted(sidecar.items()))
    return counts


def describe_entry(value: Any) -> Any:
    """A label entry as inspect shows it: arrays by shape, dtype and range; JSON values as they are."""
    if isinstance(value, np.ndarray):
        out: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
        if value.size and value.dtype.kind in "biuf":
            finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
            if finite.size:
                out["min"], out["max"] = float(finite.min()), float(finite.max())
        return out
    return value


def clip_details(run: Path | str, row: dict[str, Any]) -> dict[str, Any]:
    """One clip: its index row, the stats its filters recorded, and its labels (read back through the checked
    reader for a kept clip; a rejected clip's staged evidence, when the run's work folder still has it)."""
    details: dict[str, Any] = {k: row[k] for k in ROW_FIELDS}
    details["stats"] = json.loads(row["stats"] or "{}")
    details["label_versions"] = json.loads(row["labels"] or "{}")
    if row["status"] == STATUS_OK and row["shard"]:
        from shards.reader import iter_members
        from shards.sample import decode_sample
        from shards.store import join

        for members in iter_members([join(run, "shards", row["shard"])]):
            if members["__key__"] == row["key"]:
                clip = decode_sample(members)
                details["frames"] = list(clip.frames.shape)
                details["labels"] = {f: {e: describe_entry(v) for e, v in sorted(entries.items())}
                                     for f, entries in sorted(clip.labels.items())}
                details["provenance"] = clip.meta.get("labels", {})
                break
    elif row["key"] and "://" not in str(run):  # a store holds no _work/: the evidence stays with the replica
        from tasks.staging import load_evidence

        hits = sorted((Path(run) / "_work" / "videos" / row["source_id"]).glob(f"*/clips/{row['key']}"))
        if hits:
            details["evidence"] = {e: describe_entry(v) for e, v in sorted(load_evidence(hits[0]).items())}
    return details
