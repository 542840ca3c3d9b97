"""Removing withdrawn videos from a run folder or a release folder: the on-disk steps, each idempotent.

A takedown first writes a plan (what to remove, and the needles that prove it gone) and then applies it step by
step; every step looks at the disk and does only what is still to do, so a plan applied twice, or applied again
after a crash at any point, ends in the same files. What a run loses for a withdrawn video:

  shards/*.tar, _work/unindexed/*.tar   its samples: a shard holding only them is deleted; a shard that also
                                        holds other clips is rewritten without them under a temporary name and
                                        renamed (the bytes a shard writer gives for the remaining samples)
  labels/<family>/<version>/            the sidecar shard and status rows of its clips, the same way
  labels.parquet                        rebuilt from the sidecars left
  index.parquet                         its clip rows
  videos.parquet                        its rows become `rejected:withdrawn` rows that keep only the row number
  _work/downloads/<id>, _work/videos/<id>   the download, staged clips, markers and caches

Nothing here knows about Prefect or the command line (flows/takedown.py orchestrates, locks and journals).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from shards.atomic import TMP_SUFFIX, atomic_path, fsync_file, temp_path
from shards.blocklist import withdrawn_video_row
from shards.index import INDEX_FILE, VIDEOS_FILE
from shards.release import read_release, write_release
from shards.runfolder import LOG_DIR
from shards.scan import Needle, middle_slice
from shards.sidecar import LABELS_DIR, ROWS_SUFFIX, write_labels_table
from shards.writer import FIXED_MTIME

SHARD_DIR = "shards"
WORK_DIR = "_work"
WORK_SUBDIRS = ("downloads", "videos")  # per source id: _work/<sub>/<source_id>/
UNINDEXED = Path(WORK_DIR) / "unindexed"
KEY_RE = re.compile(r"^(?P<sid>[A-Za-z0-9_-]+)-(?P<start>\d{9,})-(?P<end>\d{9,})$")
FRAME_RE = re.compile(r"^frames\.(\d{3})\.jpg$")
FRAMES_PER_CLIP = 3  # frames of each removed clip whose bytes the scan looks for
DOWNLOAD_SLICES = (0.25, 0.5, 0.75)

Fault = Callable[[str], None]


def _no_fault(point: str) -> None:
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_id_of_key(key: str) -> str | None:
    m = KEY_RE.match(key)
    return m.group("sid") if m else None


# ------------------------------------------------------------------------------------------ what to remove


@dataclass
class Match:
    """What names the withdrawn videos in one place: source ids, sources (as recorded) and clip keys."""

    source_ids: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    def removes_key(self, key: str) -> bool:
        return key in self.keys or source_id_of_key(key) in self.source_ids

    def removes(self, source_id: str | None = None, source: str | None = None, key: str | None = None) -> bool:
        return bool((source_id and source_id in self.source_ids) or (source and source in self.sources)
                    or (key and self.removes_key(key)))


def match_rows(rows: Iterable[Mapping[str, Any]], tokens: set[str]) -> Match:
    """Rows (index, videos or release clips) that a token names by source id, source or key, widened to every
    row of the same source (one video listed under two ids is one video) and of the same source id."""
    rows = list(rows)
    m = Match()
    for r in rows:
        if r.get("source_id") in tokens or r.get("source") in tokens or r.get("key") in tokens:
            if r.get("source_id"):
                m.source_ids.add(r["source_id"])
            if r.get("source"):
                m.sources.add(r["source"])
    changed = True
    while changed:  # a source shared by two ids, an id shared by two spans: take the closure
        changed = False
        for r in rows:
            sid, src = r.get("source_id"), r.get("source")
            if (sid and sid in m.source_ids) or (src and src in m.sources):
                if sid and sid not in m.source_ids:
                    m.source_ids.add(sid)
                    changed = True
                if src and src not in m.sources:
                    m.sources.add(src)
                    changed = True
    m.keys = {r["key"] for r in rows if r.get("key") and m.removes(r.get("source_id"), r.get("source"))}
    return m


@dataclass
class FileAction:
    path: str  # relative to the target folder
    action: str  # delete | rewrite
    before_sha256: str
    removed: int  # samples (or rows) removed
    kept: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tar_samples(path: Path) -> list[tuple[str, list[tarfile.TarInfo]]]:
    """The samples of a shard, in order: (key, members), grouped as WebDataset groups them (by the name up to
    its first dot, consecutive members)."""
    out: list[tuple[str, list[tarfile.TarInfo]]] = []
    with tarfile.open(path, "r:") as tf:
        for member in tf:
            key = member.name.partition(".")[0]
            if out and out[-1][0] == key:
                out[-1][1].append(member)
            else:
                out.append((key, [member]))
    return out


def frame_needles(path: Path, match: Match, per_clip: int = FRAMES_PER_CLIP) -> list[Needle]:
    """Byte slices of a few frames of every removed clip in a shard (first, middle, last)."""
    needles: list[Needle] = []
    with tarfile.open(path, "r:") as tf:
        by_key: dict[str, list[tarfile.TarInfo]] = {}
        for member in tf:
            key, _, name = member.name.partition(".")
            if FRAME_RE.match(name) and match.removes_key(key):
                by_key.setdefault(key, []).append(member)
        for key, frames in by_key.items():
            frames.sort(key=lambda m: m.name)
            for member in _spread(frames, per_clip):
                f = tf.extractfile(member)
                piece = middle_slice(f.read()) if f else None
                if piece:
                    needles.append(Needle("bytes", piece, f"{member.name.partition('.')[2]} of {key}"))
    return needles


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else [items[0]]


def staged_needles(clip_dir: Path, per_clip: int = FRAMES_PER_CLIP) -> list[Needle]:
    frames = sorted(clip_dir.glob("frames.[0-9][0-9][0-9].jpg"))
    out = []
    for p in _spread(frames, per_clip):
        piece = middle_slice(p.read_bytes())
        if piece:
            out.append(Needle("bytes", piece, f"{p.name} of staged {clip_dir.name}"))
    return out


def download_needles(path: Path) -> list[Needle]:
    out = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        for at in DOWNLOAD_SLICES:
            f.seek(max(0, int(size * at) - 32))
            piece = middle_slice(f.read(512), 64, 0.5)
            if piece:
                out.append(Needle("bytes", piece, f"byte {int(size * at)} of download {path.name}"))
    return out


@dataclass
class RunPlan:
    """What a takedown removes from one run folder (built before anything is removed; journalled)."""

    source_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    index_rows: int = 0
    video_rows: list[int] = field(default_factory=list)  # manifest row numbers that become withdrawn rows
    shards: list[FileAction] = field(default_factory=list)
    sidecars: list[FileAction] = field(default_factory=list)
    work: list[str] = field(default_factory=list)  # _work entries (folders), and log files naming the videos, to delete

    def empty(self) -> bool:
        return not (self.index_rows or self.video_rows or self.shards or self.sidecars or self.work)

    def match(self) -> Match:
        return Match(set(self.source_ids), set(self.sources), set(self.keys))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RunPlan":
        d = dict(d)
        d["shards"] = [FileAction(**a) for a in d.get("shards", [])]
        d["sidecars"] = [FileAction(**a) for a in d.get("sidecars", [])]
        return cls(**d)

    def merged(self, other: "RunPlan") -> "RunPlan":
        """This plan plus what `other` adds (this one's records win: they were taken before any removal)."""
        def files(a: list[FileAction], b: list[FileAction]) -> list[FileAction]:
            have = {x.path for x in a}
            return sorted(a + [x for x in b if x.path not in have], key=lambda x: x.path)

        return RunPlan(
            sorted(set(self.source_ids) | set(other.source_ids)), sorted(set(self.sources) | set(other.sources)),
            sorted(set(self.keys) | set(other.keys)), max(self.index_rows, other.index_rows),
            sorted(set(self.video_rows) | set(other.video_rows)), files(self.shards, other.shards),
            files(self.sidecars, other.sidecars), sorted(set(self.work) | set(other.work)))


def _read(path: Path) -> pa.Table | None:
    return pq.read_table(path) if path.exists() else None


def run_rows(run: Path) -> list[dict[str, Any]]:
    """Index and videos rows of a run, and the sources its staged clips record (for videos a killed run never
    indexed)."""
    rows: list[dict[str, Any]] = []
    for name in (INDEX_FILE, VIDEOS_FILE):
        table = _read(run / name)
        if table is not None:
            cols = [c for c in ("key", "source_id", "source") if c in table.column_names]
            rows += table.select(cols).to_pylist()
    videos = run / WORK_DIR / "videos"
    if videos.is_dir():
        for sid_dir in sorted(p for p in videos.iterdir() if p.is_dir()):
            meta = next(iter(sorted(sid_dir.glob("*/clips/*/meta.json"))), None)
            if meta is not None:
                try:
                    m = json.loads(meta.read_text())
                    rows.append({"key": "", "source_id": m.get("source_id") or sid_dir.name, "source": m.get("source")})
                except (OSError, ValueError):
                    pass
    return rows


def all_shards(run: Path) -> list[Path]:
    out = []
    for folder in (run / SHARD_DIR, run / UNINDEXED):
        if folder.is_dir():
            out += sorted(folder.glob("*.tar"))
    return out


def plan_run(run: Path, match: Match) -> tuple[RunPlan, list[Needle]]:
    """What to remove from a run for the matched videos, and the needles that the scan must not find after."""
    run = Path(run)
    plan = RunPlan(source_ids=sorted(match.source_ids), sources=sorted(match.sources))
    keys: set[str] = set(match.keys)
    needles: list[Needle] = []
    index = _read(run / INDEX_FILE)
    if index is not None:
        for r in index.select(["key", "source_id", "source"]).to_pylist():
            if match.removes(r["source_id"], r["source"], r["key"] or None):
                plan.index_rows += 1
                if r["key"]:
                    keys.add(r["key"])
    videos = _read(run / VIDEOS_FILE)
    if videos is not None:
        plan.video_rows = sorted({r["row"] for r in videos.select(["row", "source_id", "source"]).to_pylist()
                                  if match.removes(r["source_id"], r["source"])})
    removed_shards: dict[str, str] = {}  # shard name -> delete | rewrite
    for path in all_shards(run):
        samples = [k for k, _ in tar_samples(path)]
        removed = [k for k in samples if match.removes_key(k)]
        if not removed:
            continue
        kept = len(samples) - len(removed)
        plan.shards.append(FileAction(str(path.relative_to(run)), "rewrite" if kept else "delete", sha256_file(path),
                                      len(removed), kept))
        removed_shards[path.name] = plan.shards[-1].action
        keys.update(removed)
        needles += frame_needles(path, match)
    labels = run / LABELS_DIR
    for vdir in sorted(p for p in labels.glob("*/*") if p.is_dir()) if labels.is_dir() else []:
        # Per main shard, a sidecar tar and its status rows: gone with the main shard, else without the clips.
        for path in sorted(vdir.glob("*.tar")) + sorted(vdir.glob(f"*{ROWS_SUFFIX}")):
            main = path.name if path.suffix == ".tar" else path.name[: -len(ROWS_SUFFIX)] + ".tar"
            if path.suffix == ".tar":
                keys_in = [k for k, _ in tar_samples(path)]
            else:
                keys_in = [r["key"] for r in json.loads(path.read_text())]
            removed = sum(match.removes_key(k) for k in keys_in)
            main_gone = removed_shards.get(main) == "delete"
            if removed or main_gone:
                plan.sidecars.append(FileAction(str(path.relative_to(run)), "delete" if main_gone else "rewrite",
                                                sha256_file(path), removed, len(keys_in) - removed))
    for sub in WORK_SUBDIRS:
        for sid in sorted(match.source_ids):
            d = run / WORK_DIR / sub / sid
            if d.exists():
                plan.work.append(str(d.relative_to(run)))
                for clip_dir in sorted(d.glob("*/clips/*")) if sub == "videos" else []:
                    keys.add(clip_dir.name)
                    needles += staged_needles(clip_dir)
                for f in sorted(d.glob("*.mp4")) if sub == "downloads" else []:
                    needles += download_needles(f)
    plan.keys = sorted(keys)
    plan.work += log_files_naming(run, [*match.source_ids, *match.sources, *keys])
    plan.shards.sort(key=lambda a: a.path)
    plan.sidecars.sort(key=lambda a: a.path)
    return plan, needles


def log_files_naming(run: Path, tokens: Iterable[str]) -> list[str]:
    """The run's log files (`logs/*.log`) that mention any token: diagnostics, deleted whole rather than edited."""
    needles = [t.encode() for t in tokens if t]
    out = []
    for path in sorted((run / LOG_DIR).glob("*.log")) if (run / LOG_DIR).is_dir() else []:
        data = path.read_bytes()
        if any(n in data for n in needles):
            out.append(str(path.relative_to(run)))
    return out


# ------------------------------------------------------------------------------------------ doing it


def rewrite_tar_without(path: Path, drop: Callable[[str], bool], fault: Fault = _no_fault, point: str = "shard"
                        ) -> bool:
    """Rewrite a shard without the samples `drop` names (temporary name, fsync, rename), with the bytes a shard
    writer gives for the remaining samples in their order. Returns whether it changed anything."""
    samples = tar_samples(path)
    if not any(drop(k) for k, _ in samples):
        return False
    tmp = temp_path(path)
    try:
        with tarfile.open(path, "r:") as src:
            writer = wds.TarWriter(str(tmp), encoder=False, mtime=FIXED_MTIME)
            try:
                for n, (key, members) in enumerate(k for k in samples if not drop(k[0])):
                    sample: dict[str, Any] = {"__key__": key}
                    for m in members:
                        f = src.extractfile(m)
                        sample[m.name[len(key) + 1:]] = f.read() if f else b""
                    writer.write(sample)
                    if n == 0:
                        writer.stream.flush()
                        fault(f"{point}-partial")  # a temporary shard half written
            finally:
                writer.close()
        fsync_file(tmp)
        fault(point)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def filter_rows_file(path: Path, drop: Callable[[str], bool], fault: Fault = _no_fault) -> bool:
    rows = json.loads(path.read_text())
    kept = [r for r in rows if not drop(r["key"])]
    if len(kept) == len(rows):
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(json.dumps(kept, sort_keys=True, indent=1).encode())
        fault("sidecar-rows")
    return True


def remove_path(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return True
    if path.exists() or path.is_symlink():
        path.unlink()
        return True
    return False


def _write_table(table: pa.Table, path: Path, fault: Fault, point: str) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)  # as curation writes it (shards.index.write_table_atomic)
        fault(point)


def filter_tables(run: Path, match: Match, fault: Fault = _no_fault) -> dict[str, bool]:
    """index.parquet without the videos' rows; videos.parquet with their rows replaced by withdrawn rows."""
    written = {INDEX_FILE: False, VIDEOS_FILE: False}
    index = _read(run / INDEX_FILE)
    if index is not None:
        rows = index.to_pylist()
        kept = [r for r in rows if not match.removes(r.get("source_id"), r.get("source"), r.get("key") or None)]
        if len(kept) != len(rows):
            _write_table(pa.Table.from_pylist(kept, schema=index.schema), run / INDEX_FILE, fault, "index")
            written[INDEX_FILE] = True
    videos = _read(run / VIDEOS_FILE)
    if videos is not None:
        rows = videos.to_pylist()
        hit = [match.removes(r.get("source_id"), r.get("source")) for r in rows]
        new = [{**{c: None for c in videos.column_names}, **withdrawn_video_row(r["row"])} if h else r
               for r, h in zip(rows, hit)]
        if any(hit):  # a withdrawn row has no source and no id left: a rerun finds nothing to replace
            _write_table(pa.Table.from_pylist(new, schema=videos.schema), run / VIDEOS_FILE, fault, "videos")
            written[VIDEOS_FILE] = True
    return written


def dead_temp_files(run: Path, plan: RunPlan) -> list[Path]:
    """Temporary files of the shards and sidecars the plan touches, or of the withdrawn videos' shards: left by a
    killed writer (the caller holds the run's lock), and possibly holding the videos' bytes."""
    stems = {Path(a.path).name.partition(".")[0] for a in plan.shards + plan.sidecars}
    folders = [run / SHARD_DIR, run / UNINDEXED] + sorted(p for p in (run / LABELS_DIR).glob("*/*") if p.is_dir())
    out = []
    for folder in folders:
        for tmp in sorted(folder.glob(f"*{TMP_SUFFIX}")) if folder.is_dir() else []:
            stem = tmp.name.partition(".")[0]
            if stem in stems or any(stem.startswith(f"{sid}-") for sid in plan.source_ids):
                out.append(tmp)
    return out


def apply_run(run: Path, plan: RunPlan, fault: Fault = _no_fault) -> dict[str, int]:
    """Carry out a plan (again, if need be): only what is still to do is done. Returns what this call did."""
    run = Path(run)
    match = plan.match()
    done = {"temp_files": 0, "shards_deleted": 0, "shards_rewritten": 0, "sidecars_deleted": 0,
            "sidecars_rewritten": 0, "work": 0, "tables": 0}
    for tmp in dead_temp_files(run, plan):
        done["temp_files"] += remove_path(tmp)
    for a in plan.shards:
        path = run / a.path
        if a.action == "delete":
            if remove_path(path):
                done["shards_deleted"] += 1
                fault("shard-delete")
        elif path.exists() and rewrite_tar_without(path, match.removes_key, fault, "shard-rewrite"):
            done["shards_rewritten"] += 1
    for a in plan.sidecars:
        path = run / a.path
        if a.action == "delete":
            done["sidecars_deleted"] += remove_path(path)
        elif path.exists() and path.suffix == ".tar":
            done["sidecars_rewritten"] += rewrite_tar_without(path, match.removes_key, fault, "sidecar")
        elif path.exists():
            done["sidecars_rewritten"] += filter_rows_file(path, match.removes_key, fault)
    if (run / LABELS_DIR).is_dir():
        done["tables"] += write_labels_table(run)
    done["tables"] += sum(filter_tables(run, match, fault).values())
    for rel in plan.work:
        if remove_path(run / rel):
            done["work"] += 1
            fault("work")
    return done


# ------------------------------------------------------------------------------------------ releases


@dataclass
class ReleasePlan:
    source_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    clips: int = 0
    manifest_rows: int = 0
    files_before: dict[str, str] = field(default_factory=dict)  # name -> sha256 before

    def empty(self) -> bool:
        return not (self.clips or self.manifest_rows)

    def match(self) -> Match:
        return Match(set(self.source_ids), set(self.sources), set(self.keys))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ReleasePlan":
        return cls(**dict(d))

    def merged(self, other: "ReleasePlan") -> "ReleasePlan":
        return ReleasePlan(sorted(set(self.source_ids) | set(other.source_ids)),
                           sorted(set(self.sources) | set(other.sources)), sorted(set(self.keys) | set(other.keys)),
                           max(self.clips, other.clips), max(self.manifest_rows, other.manifest_rows),
                           {**other.files_before, **self.files_before})


def _manifest_removed(row: Mapping[str, Any], match: Match) -> bool:
    return bool(row.get("source") in match.sources or (row.get("id") and row["id"] in match.source_ids))


def plan_release(rel: Path, match: Match) -> ReleasePlan:
    info, clips, manifest = read_release(rel)
    removed = [c for c in clips if match.removes(c["source_id"], c["source"], c["key"])]
    widened = Match(match.source_ids | {c["source_id"] for c in removed},
                    match.sources | {c["source"] for c in removed}, match.keys | {c["key"] for c in removed})
    rows = [r for r in manifest if _manifest_removed(r, widened)]
    plan = ReleasePlan(sorted(widened.source_ids), sorted(widened.sources), sorted(widened.keys), len(removed),
                       len(rows))
    if not plan.empty():
        plan.files_before = {p.name: sha256_file(p) for p in sorted(Path(rel).iterdir()) if p.is_file()
                             and not p.name.startswith(".")}
    return plan


def apply_release(rel: Path, plan: ReleasePlan, fault: Fault = _no_fault) -> list[str]:
    """Drop the videos' clip rows and manifest rows and render the card again; returns the files rewritten."""
    match = plan.match()
    info, clips, manifest = read_release(rel)
    clips = [c for c in clips if not match.removes(c["source_id"], c["source"], c["key"])]
    manifest = [r for r in manifest if not _manifest_removed(r, match)]
    return write_release(rel, info, clips, manifest, fault)


__all__ = ["FileAction", "KEY_RE", "Match", "ReleasePlan", "RunPlan", "all_shards", "apply_release", "apply_run",
           "dead_temp_files", "download_needles", "filter_tables", "frame_needles", "match_rows", "plan_release",
           "plan_run", "remove_path", "rewrite_tar_without", "run_rows", "sha256_file", "source_id_of_key",
           "staged_needles", "tar_samples"]
