"""Manifest reading and validation: every bad row is reported with its row number and reason;
the valid rows run."""
from __future__ import annotations

import csv
import difflib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from shards.schema import hashed_id, safe_id

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
URL = re.compile(r"^https?://[^\s]+$", re.IGNORECASE)
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KNOWN_COLUMNS = ("source", "start", "end", "id")
SourceKind = Literal["youtube", "url", "path"]


@dataclass(frozen=True)
class ManifestRow:
    row: int  # 1-based data row number (CSV line = row + 1)
    source: str  # what fetch reads: the ID, the URL, or the local file's resolved path
    kind: SourceKind
    source_id: str  # safe for keys and file names; unique per (source, span)
    start_s: float | None
    end_s: float | None
    recorded: str = ""  # what outputs record (see `recorded_source`)

    @property
    def recorded_source(self) -> str:
        """The source as shards and tables record it: the ID or URL as given, a local file by its path relative
        to the manifest, never an absolute path of this machine."""
        return self.recorded or self.source

    @property
    def span_tag(self) -> str:
        if self.start_s is None and self.end_s is None:
            return "full"
        start = round((self.start_s or 0.0) * 1000)
        end = "end" if self.end_s is None else f"{round(self.end_s * 1000)}"
        return f"{start}-{end}"


@dataclass(frozen=True)
class ManifestProblem:
    row: int  # 0 for the header / the whole file
    source: str
    reason: str

    def __str__(self) -> str:
        where = "header" if self.row == 0 else f"row {self.row}"
        return f"{where}: {self.reason}" + (f" (source {self.source!r})" if self.source else "")


@dataclass(frozen=True)
class Manifest:
    path: str
    rows: list[ManifestRow]
    problems: list[ManifestProblem]


def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets save a BOM
            reader = csv.DictReader(f)
            records = []
            for rec in reader:
                if None in rec:  # more cells than header columns
                    rec["__extra__"] = rec.pop(None)
                records.append(rec)
            if reader.fieldnames is None:
                return []
            return records
    if suffix in (".jsonl", ".ndjson"):
        records = []
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    obj = {"__invalid__": f"not JSON: {e.msg}"}
                if not isinstance(obj, dict):
                    obj = {"__invalid__": "not a JSON object"}
                records.append(obj)
        return records
    if suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    raise ValueError(f"manifest {path}: unsupported format {suffix!r} (use .csv, .jsonl or .parquet)")


def _parse_time(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number of seconds") from None
    if not math.isfinite(t):
        raise ValueError(f"{name} {value!r} is not finite")
    if t < 0:
        raise ValueError(f"{name} {t} is negative")
    return t


def classify_source(source: str, base: Path) -> tuple[SourceKind, str]:
    """(kind, resolved source). Raises ValueError with a reason for anything else."""
    if YOUTUBE_ID.match(source):
        return "youtube", source
    if URL.match(source):
        return "url", source
    if re.search(r"[;&|`$<>\n\r\\\"'*?]", source):
        raise ValueError("source has characters that are not allowed (not a YouTube ID, URL or plain path)")
    path = Path(source)
    if not path.is_absolute():
        path = (base / path).resolve()
    if path.is_dir():
        raise ValueError(f"source {path} is a folder, not a video file")
    if path.exists() or "/" in source or path.suffix:
        return "path", str(path)
    raise ValueError("source is not an 11-character YouTube ID, an http(s) URL, or an existing path")


def record_source(kind: SourceKind, source: str, resolved: str, base: Path) -> str:
    """What outputs record for a source (`ManifestRow.recorded_source`): IDs and URLs as given, a local path
    relative to the manifest's folder (an absolute path in the manifest is made relative to it)."""
    if kind != "path":
        return source
    if not Path(source).is_absolute():
        return source  # as written: its default id hashes this text
    return Path(os.path.relpath(resolved, Path(base).resolve())).as_posix()


def kind_of_recorded(source: str) -> SourceKind:
    """The kind of a source as recorded (without looking at the filesystem)."""
    if YOUTUBE_ID.match(source):
        return "youtube"
    if URL.match(source):
        return "url"
    return "path"


def default_source_id(source: str) -> str:
    """The source id a manifest row without `id` gets for this (recorded) source."""
    return safe_id(_default_source_id(kind_of_recorded(source), source), 64)


def _default_source_id(kind: SourceKind, source: str) -> str:
    if kind == "youtube":
        return source
    if kind == "url":
        return hashed_id(Path(source.split("?")[0]).stem or "url", source)
    return hashed_id(Path(source).stem, source)


def _span_text(start: float | None, end: float | None) -> str:
    return f"{start or 0:g}-{'end' if end is None else f'{end:g}'} s"


def overlapping_row(rows: list[ManifestRow], source_id: str, start: float | None, end: float | None
                    ) -> ManifestRow | None:
    """The first earlier row of the same source id whose span overlaps [start, end) (None = open end).
    Clip keys are `{source_id}-{start_ms}-{end_ms}`, so overlapping spans of one id could make one key twice."""
    lo, hi = start or 0.0, math.inf if end is None else end
    for r in rows:
        if r.source_id == source_id and lo < (math.inf if r.end_s is None else r.end_s) and (r.start_s or 0.0) < hi:
            return r
    return None


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest; problems are collected, never raised (except an unreadable file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist")
    records = _read_records(path)
    problems: list[ManifestProblem] = []
    columns: set[str] = set()
    for rec in records:
        columns.update(k for k in rec if not k.startswith("__"))
    unknown = sorted(columns - set(KNOWN_COLUMNS))
    for col in unknown:
        close = difflib.get_close_matches(col, KNOWN_COLUMNS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(ManifestProblem(0, "", f"unknown column {col!r} is ignored{hint}"))
    if records and "source" not in columns:
        problems.append(ManifestProblem(0, "", "no 'source' column"))

    rows: list[ManifestRow] = []
    seen_spans: dict[tuple[str, float | None, float | None], int] = {}
    seen_ids: dict[str, int] = {}
    owner: dict[str, str] = {}  # source id -> the source it stands for
    base = path.parent
    for i, rec in enumerate(records, 1):
        source = str(rec.get("source") or "").strip()
        try:
            if "__invalid__" in rec:
                raise ValueError(rec["__invalid__"])
            if "__extra__" in rec:
                raise ValueError("more cells than header columns")
            if not source:
                raise ValueError("empty source")
            kind, resolved = classify_source(source, base)
            start = _parse_time(rec.get("start"), "start")
            end = _parse_time(rec.get("end"), "end")
            if start is not None and end is not None and end <= start:
                raise ValueError(f"end ({end}) <= start ({start})")
            user_id = rec.get("id")
            if user_id not in (None, ""):
                user_id = str(user_id)
                if not USER_ID.match(user_id):
                    raise ValueError(f"id {user_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
                source_id = user_id
            else:
                # Hash the source as written (not the resolved path) so keys survive moving the folder.
                source_id = _default_source_id(kind, source)
            span = (resolved, start, end)
            if span in seen_spans:
                raise ValueError(f"duplicate of row {seen_spans[span]}")
            # Two spans of one source share the download; their ids must differ only when given.
            if user_id and source_id in seen_ids:
                raise ValueError(f"id {source_id!r} already used by row {seen_ids[source_id]}")
            source_id = safe_id(source_id, 64)
            if owner.get(source_id, resolved) != resolved:
                raise ValueError(f"id {source_id!r} already stands for another source ({owner[source_id]})")
            clash = overlapping_row(rows, source_id, start, end)
            if clash is not None:
                raise ValueError(f"span {_span_text(start, end)} overlaps row {clash.row}'s span "
                                 f"{_span_text(clash.start_s, clash.end_s)} of the same source: their clips would "
                                 f"share keys; merge the two rows into one span, or give them different ids")
        except ValueError as e:
            problems.append(ManifestProblem(i, source, str(e)))
            continue
        seen_spans[span] = i
        if user_id:
            seen_ids[source_id] = i
        owner[source_id] = resolved
        rows.append(ManifestRow(i, resolved, kind, source_id, start, end, record_source(kind, source, resolved, base)))
    return Manifest(str(path), rows, problems)
