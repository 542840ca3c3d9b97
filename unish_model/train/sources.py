"""Where training clips come from: shard lists resolved from run folders, brace patterns or fsspec URLs.

A *run* is a curated (or BEDLAM) output folder: `index.parquet` beside `shards/`, and label versions under
`labels/`. Given a run, the shards are the ones its index lists with ok clips, each with its clip count
and the digests the reader checks. Given bare shards (a folder of tars, `data/shard-{0000..0099}.tar`,
`s3://bucket/shards/*.tar`), clip counts come from reading the tars' headers once.
"""
from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow.parquet as pq
from braceexpand import braceexpand

from shards.index import INDEX_FILE
from shards.sidecar import LABELS_DIR, MAIN_VERSION, VERSION_FILE, check_family, check_version
from shards.tario import is_url, open_url
from shards.verify import ExpectedClip, expected_clips

SHARD_DIR = "shards"
LATEST = "latest"


@dataclass(frozen=True)
class ShardInfo:
    url: str  # a local path or an fsspec URL
    clips: int  # samples in the shard (ok clips, for a run's shard)
    run: str | None = None  # the run folder it belongs to, if any
    expected: Mapping[str, ExpectedClip] | None = field(default=None, compare=False, repr=False)


def _fs(url: str):
    from shards.store import filesystem  # one place builds a store's filesystem (options, endpoint)

    return filesystem(url)


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_url(base) else str(Path(base).joinpath(*parts))


def _exists(url: str) -> bool:
    if not is_url(url):
        return Path(url).exists()
    fs, inner = _fs(url)
    return fs.exists(inner)


def _isdir(url: str) -> bool:
    if not is_url(url):
        return Path(url).is_dir()
    fs, inner = _fs(url)
    return fs.isdir(inner)


def _glob(pattern: str) -> list[str]:
    if not is_url(pattern):
        return sorted(str(p) for p in Path(pattern).parent.glob(Path(pattern).name))
    fs, inner = _fs(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(inner))


def count_samples(url: str) -> int:
    """Samples in a tar: distinct keys of consecutive member names (headers only where the file is local)."""
    keys = 0
    last = None
    with open_url(url) as f:
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            for member in tf:
                key = member.name.split(".", 1)[0]
                if key != last:
                    keys += 1
                    last = key
    return keys


def read_run(run: str) -> list[ShardInfo]:
    """The shards of a run with ok clips, in the index's order, with their counts and digests."""
    with open_url(_join(run, INDEX_FILE)) as f:
        table = pq.read_table(f)
    expected = expected_clips(table)
    return [ShardInfo(_join(run, SHARD_DIR, name), len(clips), run, clips) for name, clips in expected.items()]


def run_of_shard(url: str) -> str | None:
    """The run folder of `<run>/shards/<name>.tar`, if it has an index."""
    parent = posixpath.dirname(url) if is_url(url) else str(Path(url).parent)
    if posixpath.basename(parent.rstrip("/")) != SHARD_DIR:
        return None
    run = posixpath.dirname(parent) if is_url(url) else str(Path(parent).parent)
    return run if _exists(_join(run, INDEX_FILE)) else None


def resolve_shards(specs: str | Sequence[str]) -> list[ShardInfo]:
    """Shards from run folders, folders of tars, brace patterns, globs or single tars (local or fsspec URLs).
    A shard of a run is read with that run's index (counts and digests) whichever way it was named."""
    if isinstance(specs, str):
        specs = [specs]
    runs: dict[str, dict[str, ShardInfo]] = {}
    out: list[ShardInfo] = []
    for spec in specs:
        for item in braceexpand(str(spec)):
            item = item.rstrip("/")
            if _isdir(item):
                if _exists(_join(item, INDEX_FILE)):
                    out.extend(_run_shards(item, runs).values())
                    continue
                urls = _glob(_join(item, "*.tar"))
            elif any(c in item for c in "*?["):
                urls = _glob(item)
            else:
                urls = [item]
            if not urls:
                raise FileNotFoundError(f"no shards at {item}")
            for url in urls:
                run = run_of_shard(url)
                if run is None:
                    out.append(ShardInfo(url, count_samples(url)))
                    continue
                name = posixpath.basename(url)
                shards = _run_shards(run, runs)
                if name not in {posixpath.basename(s.url) for s in shards.values()}:
                    raise FileNotFoundError(f"{url} is not listed in {_join(run, INDEX_FILE)} (not part of the run)")
                out.append(shards[name])
    seen: set[str] = set()
    unique = [s for s in out if not (s.url in seen or seen.add(s.url))]  # type: ignore[func-returns-value]
    return unique


def _run_shards(run: str, cache: dict[str, dict[str, ShardInfo]]) -> dict[str, ShardInfo]:
    if run not in cache:
        cache[run] = {posixpath.basename(s.url): s for s in read_run(run)}
    return cache[run]


# ----------------------------------------------------------------------------------------- label versions


def label_version_names(run: str, family: str) -> list[str]:
    base = _join(run, LABELS_DIR, check_family(family))
    if not _isdir(base):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in _glob(_join(base, "*"))]
    return sorted(n for n in names if _exists(_join(base, n, VERSION_FILE)))


def _version_complete(run: str, family: str, version: str, shards: Sequence[str]) -> bool:
    return all(_exists(_join(run, LABELS_DIR, family, version, name)) for name in shards)


def _created(run: str, family: str, version: str) -> float:
    url = _join(run, LABELS_DIR, family, version, VERSION_FILE)
    if not is_url(url):
        return Path(url).stat().st_mtime
    fs, inner = _fs(url)
    info = fs.info(inner)
    return float(info.get("mtime") or info.get("LastModified", 0) or 0)


def choose_versions(run: str, wanted: Mapping[str, str], shards: Sequence[str]) -> dict[str, str]:
    """family -> sidecar version to read for one run: `main` (the curation's own labels, no sidecar), a
    version id, or `latest` (the most recently created version complete for every shard of the run; main
    when there is none)."""
    chosen: dict[str, str] = {}
    for family, want in wanted.items():
        check_family(family)
        if want == MAIN_VERSION:
            continue
        if want == LATEST:
            done = [v for v in label_version_names(run, family) if _version_complete(run, family, v, shards)]
            if done:
                chosen[family] = max(done, key=lambda v: _created(run, family, v))
            continue
        check_version(want)
        if not _exists(_join(run, LABELS_DIR, family, want, VERSION_FILE)):
            raise FileNotFoundError(f"no label version {family}/{want} in {run}")
        chosen[family] = want
    return chosen


def sidecar_url(run: str, family: str, version: str, shard: str) -> str:
    return _join(run, LABELS_DIR, family, version, shard)


__all__ = ["LATEST", "ShardInfo", "choose_versions", "count_samples", "label_version_names", "read_run",
           "resolve_shards", "run_of_shard", "sidecar_url"]
