"""Reading a shard's samples as raw members, from a local path or any fsspec URL (s3://, gs://, memory://).

WebDataset's own tar iterators do the reading; the grouping keeps member names as written (no lower-casing),
so a sample read back has exactly the members, and therefore the digest, that the writer recorded.
`webdataset` is imported when a shard is first read (its import pulls in torch, a second of start-up that
`unish --help` and the commands that read no shard should not pay).
"""
from __future__ import annotations

import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

_BOOKKEEPING = ("__url__", "__local_path__")


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


@contextmanager
def open_url(url: str | Path, mode: str = "rb") -> Iterator[IO[bytes]]:
    """A local file, or an fsspec URL (imported only when one is used)."""
    if not is_url(url):
        with open(url, mode) as f:
            yield f
        return
    from shards.store import filesystem, store_errors

    fs, path = filesystem(str(url))
    with store_errors(str(url)):
        f = fs.open(path, mode)
    with f:
        yield f


@contextmanager
def open_tar(url: str | Path) -> Iterator[tarfile.TarFile]:
    """A shard as a seekable tar (headers read, data skipped), local or at an fsspec URL (read in blocks)."""
    with open_url(url) as f, tarfile.open(fileobj=f, mode="r:") as tf:
        yield tf


def iter_tar_samples(stream: IO[bytes], url: str = "") -> Iterator[dict[str, Any]]:
    """Samples of a tar stream: `{"__key__": key, "<member>": bytes, ...}`, in tar order."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
    for sample in group_by_keys(files, lcase=False):
        yield {k: v for k, v in sample.items() if k not in _BOOKKEEPING}


def raw_samples(url: str | Path) -> Iterator[dict[str, Any]]:
    """One shard's samples (bytes values), unchecked."""
    with open_url(url) as stream:
        yield from iter_tar_samples(stream, str(url))


__all__ = ["is_url", "iter_tar_samples", "open_tar", "open_url", "raw_samples"]
