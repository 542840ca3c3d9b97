"""Object storage (s3://, gs://, memory://, file://, any fsspec URL) for runs and releases.

Object stores have no rename and no lock, and curation needs both (staging, markers, `.unish.lock`, partial
shards). So a folder named by a URL is worked on in a local *replica* (`replica_path`: the store cache, keyed by
the URL, the path inside the bucket kept so that `releases.json`'s relative paths hold) and *published*:

  pull     the store's objects into the replica (tables and small files; with `shards=True` the shards too),
           each downloaded only where the replica's copy differs
  publish  every object written whole or not at all (`publish_file`): S3 and GCS take one PUT (a multipart
           upload is completed last and aborted on failure); other stores get `NAME.tmp-<uuid>` and a move
  push     the replica back: shards and sidecar files first, then the tables, the index last (so a reader never
           sees an index naming a shard that is not there), then objects no longer in the replica are deleted
           (only under shards/ and labels/: the store may hold other things beside the run)

A push that did not finish leaves `PUSH_PENDING` in the replica: the replica is then ahead of the store, the next
command does not pull over it and pushes again. The replica is the resume state of a curation (`_work/`); with it
lost, a rerun redoes the videos and, shards being byte-deterministic, publishes nothing new.

Credentials and endpoints come from the standard configuration of each fsspec backend (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL, ~/.aws), plus `UNISH_STORAGE_OPTIONS` (a JSON
object of options for every URL, e.g. {"endpoint_url": "http://127.0.0.1:9000"}); `filesystem` is the one place
that builds a store's filesystem. No Prefect, no torch here.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from shards.atomic import TMP_SUFFIX, atomic_path
from shards.tario import is_url

STORAGE_OPTIONS_ENV = "UNISH_STORAGE_OPTIONS"
CACHE_ENV = "UNISH_STORE_CACHE"  # where replicas live (default: ~/.cache/unish/store)
PUSH_PENDING = ".unish-push-pending"  # in a replica: its push did not finish (the replica is ahead of the store)
DIGEST_KEY = "sha256"  # object metadata (S3): the content's sha256, so an unchanged file is not uploaded again
PART_BYTES = 64 * 2**20  # S3 multipart part size: files of two parts or more go up in parts, completed last

# Stores whose single upload is atomic: an object appears whole when its PUT (or multipart upload) completes.
ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs"})
# Never published: local-only state of a replica (work, logs, the lock, a takedown's journal, markers).
LOCAL_ONLY = ("_work", "logs", "_takedown", ".unish.lock", PUSH_PENDING)
# Published after everything else, in this order: the tables name shards and label versions; the index last.
TABLES_LAST = ("curate.json", "blocklist.json", "releases.json", "labels.parquet", "videos.parquet",
               "clips.parquet", "clips.csv", "manifest.csv", "README.md", "release.json", "index.parquet")
# Where a push deletes objects the replica no longer has (the run's own files; never anything else).
MANAGED_DIRS = ("shards", "labels")


class StoreError(OSError):
    """The store cannot be used (no such bucket, no credentials, refused): one line naming the URL."""


class StoreMissing(StoreError, FileNotFoundError):
    """No such bucket or object: still a FileNotFoundError for the readers that expect one of a missing file."""


def storage_options() -> dict[str, Any]:
    """Options for every store from UNISH_STORAGE_OPTIONS; the backends read their own standard settings."""
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError as e:
        raise StoreError(f"{STORAGE_OPTIONS_ENV} is not a JSON object: {e}") from None
    if not isinstance(options, dict):
        raise StoreError(f"{STORAGE_OPTIONS_ENV} is not a JSON object")
    return options


def filesystem(url: str) -> tuple[Any, str]:
    """(the fsspec filesystem, the path inside it) of a URL. Listings are not cached: another process (a curate,
    a takedown) may have written since."""
    import fsspec

    protocol = fsspec.core.split_protocol(url)[0] or "file"
    if protocol in ("file", "local", "memory"):
        return fsspec.core.url_to_fs(url)  # nothing to connect to: no options
    return fsspec.core.url_to_fs(url, **{**storage_options(), "use_listings_cache": False})


def join(base: str | Path, *parts: str) -> str:
    """A path or URL below `base` (URLs keep their `//`, which Path would fold)."""
    return posixpath.join(str(base), *parts) if is_url(base) else str(Path(base).joinpath(*parts))


def describe_error(url: str, e: BaseException) -> str:
    """One line naming the URL and what the store said (a missing bucket, missing credentials, ...)."""
    name = type(e).__name__
    text = str(e).strip().splitlines()[0] if str(e).strip() else name
    if name == "NoCredentialsError" or "credentials" in text.lower():
        return f"{url}: no credentials for the store ({text}); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile"
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower() or "specified bucket" in text.lower():
        return f"{url}: the bucket does not exist ({text})"
    return f"{url}: {name}: {text}"


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn a backend's error (botocore, aiohttp, a missing bucket) into a StoreError naming the URL."""
    try:
        yield
    except StoreError:
        raise
    except FileNotFoundError as e:  # a missing bucket is a FileNotFoundError in s3fs
        raise StoreMissing(describe_error(url, e)) from e
    except PermissionError as e:
        raise StoreError(describe_error(url, e)) from e
    except Exception as e:  # noqa: BLE001 - every backend has its own error classes; all become one line
        if type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "fsspec"):
            raise StoreError(describe_error(url, e)) from e
        raise


def exists(url: str) -> bool:
    if not is_url(url):
        return Path(url).exists()
    fs, path = filesystem(url)
    with store_errors(url):
        return bool(fs.exists(path))


def read_bytes(url: str) -> bytes:
    if not is_url(url):
        return Path(url).read_bytes()
    fs, path = filesystem(url)
    with store_errors(url):
        return fs.cat_file(path)


def check_store(url: str) -> None:
    """Fail at once, naming the URL, when the store cannot be used (no such bucket, no credentials)."""
    fs, path = filesystem(url)
    if not _protocols(fs) & ATOMIC_PUT:
        return  # local disks and memory: nothing to connect to
    bucket = path.split("/", 1)[0]
    with store_errors(url):
        fs.ls(bucket, detail=False)  # lists: the bucket, the credentials and the permissions are checked here


def _protocols(fs: Any) -> set[str]:
    p = fs.protocol
    return set(p) if isinstance(p, (tuple, list)) else {p}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def publish_file(local: Path, url: str, digest: str | None = None) -> None:
    """Upload one file so that `url` holds the old object or the new one, never a part (see the module docstring)."""
    fs, path = filesystem(url)
    with store_errors(url):
        if _protocols(fs) & ATOMIC_PUT:
            extra = {"Metadata": {DIGEST_KEY: digest or file_sha256(local)}} if "s3" in _protocols(fs) else {}
            if extra:
                fs.put_file(str(local), path, chunksize=PART_BYTES, **extra)
            else:
                fs.put_file(str(local), path)
            return
        tmp = f"{path}.tmp-{secrets.token_hex(6)}"  # beside the final name: same store, same bucket
        try:
            fs.put_file(str(local), tmp)
            fs.mv(tmp, path)  # a rename on local disks; a whole-object copy elsewhere
        except BaseException:
            try:
                if fs.exists(tmp):
                    fs.rm(tmp)
            except Exception:  # noqa: BLE001 - the upload's own error is the one to report
                pass
            raise


def _remote_digest(fs: Any, path: str) -> str | None:
    if "s3" not in _protocols(fs):
        return None
    try:
        return (fs.metadata(path) or {}).get(DIGEST_KEY)
    except (FileNotFoundError, AttributeError):
        return None


def same_content(local: Path, url: str, digest: str | None = None) -> bool:
    """Whether the object at `url` holds exactly the bytes of `local` (by the recorded sha256 where the store
    keeps one, else by reading it)."""
    fs, path = filesystem(url)
    with store_errors(url):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return False
        if info.get("type") == "directory" or int(info.get("size") or 0) != local.stat().st_size:
            return False
        remote = _remote_digest(fs, path)
        if remote is not None:
            return remote == (digest or file_sha256(local))
        return hashlib.sha256(fs.cat_file(path)).hexdigest() == (digest or file_sha256(local))


def download_file(url: str, local: Path) -> None:
    """The object at `url` into `local`, written whole or not at all."""
    fs, path = filesystem(url)
    local.parent.mkdir(parents=True, exist_ok=True)
    with store_errors(url), atomic_path(local) as tmp:
        fs.get_file(path, str(tmp))


# ------------------------------------------------------------------------------------------------ replicas
def replica_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "unish" / "store")


def replica_path(url: str) -> Path:
    """The local folder that stands for `url`: `<cache>/<protocol>/<bucket>/<path>`, so two URLs in one bucket
    keep their relative positions (a run's `releases.json` names its releases relative to the run)."""
    import fsspec

    protocol, rest = fsspec.core.split_protocol(url)
    parts = [p for p in rest.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise StoreError(f"{url}: not a folder URL (bucket and path, no . or .. parts)")
    return replica_root() / (protocol or "file") / Path(*parts)


def _relative_files(folder: Path) -> list[str]:
    """Files of a replica to publish, as posix paths relative to it (local-only state and temp files left out)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel.split("/")[0] in LOCAL_ONLY or p.name.endswith(TMP_SUFFIX) or ".tmp-" in p.name:
            continue
        out.append(rel)
    return out


def _push_order(rel: str) -> tuple[int, str]:
    name = rel.rsplit("/", 1)[-1]
    if "/" not in rel and name in TABLES_LAST:
        return 1 + TABLES_LAST.index(name), rel
    return 0, rel


def remote_files(url: str) -> list[str]:
    """Every object under a folder URL, as posix paths relative to it (empty when there is none)."""
    fs, path = filesystem(url)
    path = path.rstrip("/")
    with store_errors(url):
        if not fs.exists(path):
            return []
        found = fs.find(path)
    return sorted(posixpath.relpath(f, path) for f in found if not f.endswith("/"))


@dataclass
class SyncReport:
    uploaded: list[str] = field(default_factory=list)
    unchanged: int = 0
    deleted: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)


def push(folder: Path, url: str) -> SyncReport:
    """Publish a replica to its URL: changed files only, the index last, then delete what the replica no longer
    has under MANAGED_DIRS (see the module docstring). Marks the replica while a push is under way."""
    folder = Path(folder)
    report = SyncReport()
    marker = folder / PUSH_PENDING
    marker.touch()
    for rel in sorted(_relative_files(folder), key=_push_order):
        local = folder / rel
        digest = file_sha256(local)
        target = join(url, rel)
        if same_content(local, target, digest):
            report.unchanged += 1
            continue
        publish_file(local, target, digest)
        report.uploaded.append(rel)
    have = set(_relative_files(folder))
    fs, base = filesystem(url)
    for rel in remote_files(url):
        if rel.split("/")[0] in MANAGED_DIRS and rel not in have:
            with store_errors(url):
                fs.rm_file(posixpath.join(base.rstrip("/"), rel))
            report.deleted.append(rel)
    marker.unlink()
    return report


def pull(url: str, folder: Path, shards: bool = False) -> SyncReport:
    """Bring a replica up to the store: every object (shards only with `shards`) whose bytes differ from the
    replica's. Nothing local is deleted, and a replica whose push did not finish is left as it is (it is newer)."""
    folder = Path(folder)
    report = SyncReport()
    if (folder / PUSH_PENDING).exists():
        return report
    for rel in remote_files(url):
        if rel.split("/")[0] in LOCAL_ONLY or (not shards and rel.split("/")[0] in MANAGED_DIRS):
            continue
        local = folder / rel
        if local.is_file() and same_content(local, join(url, rel)):
            report.unchanged += 1
            continue
        download_file(join(url, rel), local)
        report.downloaded.append(rel)
    return report


def local_folder(target: str | Path, shards: bool = False, work: Path | None = None) -> tuple[Path, str | None]:
    """(the local folder to work in, the URL to push it to afterwards, or None for a plain local folder). For a
    URL: its replica (`work`, or `replica_path`), pulled first (see `pull`)."""
    if not is_url(target):
        return Path(target), None
    url = str(target).rstrip("/")
    check_store(url)
    folder = Path(work) if work is not None else replica_path(url)
    folder.mkdir(parents=True, exist_ok=True)
    pull(url, folder, shards=shards)
    return folder, url


__all__ = ["ATOMIC_PUT", "CACHE_ENV", "LOCAL_ONLY", "PART_BYTES", "PUSH_PENDING", "STORAGE_OPTIONS_ENV", "StoreError", "StoreMissing",
           "SyncReport", "check_store", "download_file", "exists", "filesystem", "is_url", "join", "local_folder",
           "publish_file", "pull", "push", "read_bytes", "remote_files", "replica_path", "same_content",
           "storage_options", "store_errors"]
