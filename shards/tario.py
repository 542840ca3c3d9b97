"""Reading a shard's samples as raw members, from a local path or any fsspec URL (s3://, gs://, memory://).

The reading is WebDataset's convention, done with the standard library's streaming tar reader (importing
`webdataset` imports torch, seconds of start-up for `unish inspect` and `unish verify`): regular files only,
`__...__` metadata entries skipped, a member `dir/key.a.b` belongs to sample `dir/key` as entry `a.b`, and
consecutive members with one key make one sample. Member names stay as written (no lower-casing), so a sample
read back has exactly the members, and therefore the digest, that the writer recorded. Shards are written with
WebDataset's TarWriter (shards/writer.py).
"""
from __future__ import annotations

import re
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

_KEY_ENTRY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # key (up to the first dot of the name), entry
_META = re.compile(r"__[^/]*__($|/)")


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


@contextmanager
def open_url(url: str | Path, mode: str = "rb") -> Iterator[IO[bytes]]:
    """A local file, or an fsspec URL (imported only when one is used)."""
    if not is_url(url):
        with open(url, mode) as f:
            yield f
        return
    import fsspec

    with fsspec.open(str(url), mode) as f:
        yield f


def _tar_members(stream: IO[bytes], url: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file of a tar stream, in order; a damaged header raises tarfile's error."""
    tar = tarfile.open(fileobj=stream, mode="r|*")
    for info in tar:
        name = info.name
        if not info.isreg() or not name or ("/" not in name and name.startswith("__") and name.endswith("__")) \
                or _META.match(name):
            continue
        try:
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
        except Exception as e:  # name the shard in the message, as WebDataset does
            if e.args:
                e.args = (f"{e.args[0]} @ {url}",) + e.args[1:]
            raise
        yield name, data
        tar.members = []  # a streamed shard keeps no member list


def iter_tar_samples(stream: IO[bytes], url: str = "") -> Iterator[dict[str, Any]]:
    """Samples of a tar stream: `{"__key__": key, "<member>": bytes, ...}`, in tar order."""
    current: dict[str, Any] | None = None
    for name, data in _tar_members(stream, url):
        match = _KEY_ENTRY.match(name)
        if match is None:
            continue
        key, entry = match.group(1), match.group(2)
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key}
        if entry in current:
            raise ValueError(f"{name}: duplicate file name in tar file {url}")
        current[entry] = data
    if current is not None:
        yield current


def raw_samples(url: str | Path) -> Iterator[dict[str, Any]]:
    """One shard's samples (bytes values), unchecked."""
    with open_url(url) as stream:
        yield from iter_tar_samples(stream, str(url))


__all__ = ["is_url", "iter_tar_samples", "open_url", "raw_samples"]
