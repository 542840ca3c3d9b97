"""Checking shards against the index: every indexed clip present, complete and intact, and nothing else.

The index records, per ok clip, its shard, member count and sha256 (`shards.sample.sample_digest`).
A clip passes when a sample with its key is in its shard with exactly that count and digest. A tar
damaged anywhere shows up as one of these, since Python's tarfile reads a bad header (or a zeroed
block where a header should be) as the end of the archive and a cut tar as a short one:

  missing_shard     an indexed shard file is not there
  missing_clip      an indexed clip is not in its shard (the tar ends early: cut, bad header, zeroed block)
  incomplete        a sample has fewer or more members than indexed
  damaged           a sample's bytes differ from the indexed digest (a flipped byte, an edited meta.json)
  duplicate         a key appears twice in a shard
  unindexed_sample  a sample the index does not list, in an indexed shard
  unindexed_shard   a complete-looking shard file no index row refers to
  unreadable        the tar cannot be read at all, or stops with an error
  bad_structure     the tar does not end the way a complete tar ends (checked on local files)
  temp_file         a temporary file a killed writer left (harmless: never read, removed by the next run)

`iter_checked_samples` yields the good samples of one shard and hands every problem to a callback: the
reader raises on the first (`ShardDamaged`), `verify_run` collects them all.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from shards.atomic import TMP_SUFFIX
from shards.index import INDEX_FILE
from shards.sample import sample_digest
from shards.tario import is_url, open_url, raw_samples
from shards.schema import STATUS_OK

SHARD_DIR = "shards"
TAR_BLOCK = 512


@dataclass(frozen=True)
class ExpectedClip:
    key: str
    shard: str
    members: int | None  # None: indexed before checksums existed (only presence is checked)
    sha256: str | None
    source_id: str = ""
    row: int = 0


@dataclass(frozen=True)
class Problem:
    kind: str
    shard: str
    key: str
    detail: str

    def __str__(self) -> str:
        clip = f" clip {self.key}:" if self.key else ""
        return f"{self.shard}:{clip} {self.detail}"


class ShardDamaged(ValueError):
    """A shard does not hold what the index says: the message names the shard and the clip."""

    def __init__(self, problem: Problem, url: str = ""):
        super().__init__(f"{url or problem.shard}:" + (f" clip {problem.key}:" if problem.key else "") +
                         f" {problem.detail}")
        self.problem = problem


def expected_clips(index: pa.Table) -> dict[str, dict[str, ExpectedClip]]:
    """shard name -> key -> what the index says of each ok clip in it."""
    cols = set(index.column_names)
    out: dict[str, dict[str, ExpectedClip]] = {}
    for r in index.to_pylist():
        if r["status"] != STATUS_OK or not r.get("shard"):
            continue
        members = r.get("members") if "members" in cols else None
        digest = r.get("sha256") if "sha256" in cols else None
        out.setdefault(r["shard"], {})[r["key"]] = ExpectedClip(
            r["key"], r["shard"], members, digest or None, r.get("source_id") or "", int(r.get("row") or 0))
    return out


def index_for_shard(url: str) -> str | None:
    """`<run>/index.parquet` for a shard `<run>/shards/<name>.tar` (a local path or an fsspec URL), if there is one."""
    from shards.store import exists, join

    if is_url(url):
        parent, _, _ = url.rstrip("/").rpartition("/")
        run, _, folder = parent.rpartition("/")
        if folder != SHARD_DIR or "://" not in run:
            return None
        index = join(run, INDEX_FILE)
        return index if exists(index) else None
    path = Path(url)
    if path.parent.name != SHARD_DIR:
        return None
    local = path.parent.parent / INDEX_FILE
    return str(local) if local.exists() else None


def _read_table(path: str) -> pa.Table:
    with open_url(path) as f:
        return pq.read_table(f)


def check_members(members: Mapping[str, Any], expected: ExpectedClip, shard: str) -> Problem | None:
    if expected.members is None:
        return None
    digest = sample_digest(dict(members))
    if digest.members != expected.members:
        return Problem("incomplete", shard, expected.key,
                       f"has {digest.members} members, the index says {expected.members} (a partial sample)")
    if expected.sha256 and digest.sha256 != expected.sha256:
        return Problem("damaged", shard, expected.key,
                       f"content differs from the index (sha256 {digest.sha256[:12]}, indexed {expected.sha256[:12]})")
    return None


def tar_structure_problem(path: Path) -> str | None:
    """Why a local tar is not complete, or None: headers must chain to an end-of-archive marker (two zero
    blocks) with nothing but zeros after it. Catches damage an index-less reader would take for the end."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if size % TAR_BLOCK:
        return f"size {size} is not a whole number of {TAR_BLOCK}-byte blocks (cut short)"
    try:
        with tarfile.open(path, "r:") as tf:
            members = tf.getmembers()
            end = tf.offset  # just past the last member that parsed
    except (tarfile.TarError, OSError, EOFError) as e:
        return f"not a readable tar ({e})"
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read()
    if len(tail) < 2 * TAR_BLOCK:
        return f"ends after {len(members)} members without the end-of-archive marker (cut short)"
    if tail.strip(b"\0"):
        first = end + (len(tail) - len(tail.lstrip(b"\0")))
        return (f"reading stops after {len(members)} members at byte {end}, but data follows at byte {first} "
                f"(a damaged header or a zeroed block)")
    return None


def iter_checked_samples(url: str, expected: Mapping[str, ExpectedClip] | None,
                         on_problem: Callable[[Problem], None]) -> Iterator[dict[str, Any]]:
    """The samples of one shard that match the index (all of them where `expected` is None); every
    mismatch goes to `on_problem`, including the indexed clips that never came (after the shard ends)."""
    shard = Path(url).name
    seen: set[str] = set()
    samples = raw_samples(url)
    while True:
        try:
            members = next(samples)
        except StopIteration:
            break
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # not the callback's own raise
            on_problem(Problem("unreadable", shard, "", f"reading stopped with an error: {e}"))
            break
        key = str(members["__key__"])
        if key in seen:
            on_problem(Problem("duplicate", shard, key, "appears twice in the shard"))
            continue
        seen.add(key)
        if expected is None:
            yield members
            continue
        want = expected.get(key)
        if want is None:
            on_problem(Problem("unindexed_sample", shard, key, "is in the shard but not in the index"))
            continue
        problem = check_members(members, want, shard)
        if problem:
            on_problem(problem)
            continue
        yield members
    if expected is not None:
        lost = [k for k in expected if k not in seen]
        if lost:
            why = tar_structure_problem(Path(url)) if not is_url(url) and Path(url).exists() else None
            shown = ", ".join(lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
            on_problem(Problem("missing_clip", shard, lost[0],
                               f"{len(lost)} of {len(expected)} indexed clips are not in the shard ({shown})"
                               + (f": {why}" if why else "")))


def raise_problem(url: str) -> Callable[[Problem], None]:
    def _raise(problem: Problem) -> None:
        raise ShardDamaged(problem, url)
    return _raise


@dataclass
class VerifyReport:
    run_dir: Path
    shards_checked: int = 0
    clips_checked: int = 0
    clips_ok: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not [p for p in self.problems if p.kind != "temp_file"]

    def damaged_shards(self) -> list[str]:
        return sorted({p.shard for p in self.problems if p.kind not in ("temp_file", "unindexed_shard")})


def check_shard(path: Path, expected: Mapping[str, ExpectedClip]) -> tuple[list[Problem], int]:
    """(problems, clips that passed) of one local shard against its index rows."""
    problems: list[Problem] = []
    shard = Path(path).name
    if not Path(path).exists():
        return [Problem("missing_shard", shard, k, "the shard file is missing") for k in expected], 0
    structure = tar_structure_problem(Path(path))
    good = sum(1 for _ in iter_checked_samples(str(path), expected, problems.append))
    if structure and not any(p.kind in ("missing_clip", "unreadable") for p in problems):
        problems.append(Problem("bad_structure", shard, "", structure))
    return problems, good


def verify_run(run_dir: Path | str) -> VerifyReport:
    """Check every shard of a curated run folder (or a run at an fsspec URL) against its index (see the module
    docstring; the tar structure check needs a local file)."""
    from shards.store import check_store, join, remote_files

    url = str(run_dir).rstrip("/") if is_url(run_dir) else None
    run_dir = Path(run_dir) if url is None else run_dir
    if url is not None:
        check_store(url)
        names = {r.split("/", 1)[1] for r in remote_files(url) if r.startswith(SHARD_DIR + "/") and r.count("/") == 1}
        index_path = join(url, INDEX_FILE)
        if INDEX_FILE not in remote_files(url):
            raise FileNotFoundError(f"{url} is not a curated output: missing {INDEX_FILE}")
    else:
        shard_dir = Path(run_dir) / SHARD_DIR
        names = {p.name for p in shard_dir.iterdir()} if shard_dir.is_dir() else set()
        index_path = str(Path(run_dir) / INDEX_FILE)
        if not Path(index_path).exists():
            raise FileNotFoundError(f"{run_dir} is not a curated output: missing {INDEX_FILE}")
    expected = expected_clips(_read_table(index_path))
    report = VerifyReport(run_dir)  # type: ignore[arg-type]
    for name in sorted(expected):
        problems, good, size = _check_named_shard(run_dir, name, name in names, expected[name])
        report.problems.extend(problems)
        report.shards_checked += 1
        report.clips_checked += len(expected[name])
        report.clips_ok += good
        report.bytes_read += size
    for name in sorted(names):
        if name.endswith(TMP_SUFFIX) or ".tmp-" in name:
            report.problems.append(Problem("temp_file", name, "", "a temporary file left by a killed writer"))
        elif name.endswith(".tar") and name not in expected:
            report.problems.append(Problem("unindexed_shard", name, "", "no index row refers to this shard"))
    return report


def _check_named_shard(run_dir: Path | str, name: str, present: bool,
                       expected: Mapping[str, ExpectedClip]) -> tuple[list[Problem], int, int]:
    """(problems, clips that passed, bytes) of one shard of a run, local or in a store."""
    from shards.store import filesystem, join

    if not is_url(run_dir):
        path = Path(run_dir) / SHARD_DIR / name
        problems, good = check_shard(path, expected)
        return problems, good, path.stat().st_size if path.exists() else 0
    if not present:
        return [Problem("missing_shard", name, k, "the shard object is missing") for k in expected], 0, 0
    url = join(str(run_dir), SHARD_DIR, name)
    problems: list[Problem] = []
    good = sum(1 for _ in iter_checked_samples(url, expected, problems.append))
    fs, path = filesystem(url)
    return problems, good, int(fs.info(path).get("size") or 0)


def shard_urls_checked(urls: Sequence[str]) -> list[tuple[str, Mapping[str, ExpectedClip] | None]]:
    """Pair each local shard URL with its index rows (when its run has an index); a shard of a run with an
    index that the index does not list is an error (its clips are not part of the run)."""
    tables: dict[str, dict[str, dict[str, ExpectedClip]]] = {}
    out: list[tuple[str, Mapping[str, ExpectedClip] | None]] = []
    for url in urls:
        index = index_for_shard(url)
        if index is None:
            out.append((url, None))
            continue
        if index not in tables:
            tables[index] = expected_clips(_read_table(index))
        name = url.rstrip("/").rpartition("/")[2] if is_url(url) else Path(url).name
        if name not in tables[index]:
            raise ShardDamaged(Problem("unindexed_shard", name, "", f"is not listed in {index}"), url)
        out.append((url, tables[index][name]))
    return out


__all__ = ["ExpectedClip", "Problem", "ShardDamaged", "VerifyReport", "check_members", "check_shard",
           "expected_clips", "index_for_shard", "iter_checked_samples", "raise_problem", "shard_urls_checked",
           "tar_structure_problem", "verify_run"]
