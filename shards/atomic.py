"""Writing files so that a reader, a crash or a full disk leaves the old file or the new one, never half.

Every write goes to a temporary name unique to the process and the call (`temp_path`), is flushed and
fsynced, then renamed over the final name. A failed write (ENOSPC, EROFS, a bug) removes its temporary
file before the error propagates, so nothing is left behind. Temporary names keep the final name's
extension chain and end in `.tmp` (`vid-0000.tar` -> `vid-0000.<pid>-<hex>.tar.tmp`): a glob for
`*.tar` never lists them, a glob for `*.tmp` lists all of them.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"

# Errors of the storage itself rather than of one input: going on with other videos cannot help.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path`: no other process or call picks the same one."""
    path = Path(path)
    stem, dot, rest = path.name.partition(".")
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f"{stem}.{token}{dot}{rest}{TMP_SUFFIX}")


def is_temp(path: Path | str) -> bool:
    return str(path).endswith(TMP_SUFFIX)


def is_storage_error(exc: BaseException, under: Path | None = None) -> bool:
    """A full, read-only or failing disk (as opposed to a bad input). With `under`, only an error on a
    path inside that folder counts (an unreadable source file elsewhere is that input's problem)."""
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return False
    if under is None or exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    name = exc.filename or ""
    return bool(name) and Path(os.path.abspath(name)).is_relative_to(Path(os.path.abspath(under)))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to (a file, or a folder); on success it is fsynced
    (files) and renamed over `path`; on any error it is removed and the error propagates."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync and tmp.is_file():
            fsync_file(tmp)
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    with atomic_path(path, fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json_atomic(path: Path, obj: Any, fsync: bool = True) -> None:
    write_bytes_atomic(path, json.dumps(obj, sort_keys=True, indent=1).encode(), fsync)


def remove_temp_files(folder: Path, pattern: str = "*" + TMP_SUFFIX) -> list[Path]:
    """Remove the temporary files a killed writer left in `folder` (names matching `pattern`, a glob that
    ends in `.tmp`)."""
    if not pattern.endswith(TMP_SUFFIX):
        raise ValueError(f"{pattern!r} does not name temporary files (*{TMP_SUFFIX})")
    removed = []
    for p in Path(folder).glob(pattern):
        _remove(p)
        removed.append(p)
    return removed


__all__ = ["TMP_SUFFIX", "atomic_path", "fsync_file", "is_storage_error", "is_temp", "remove_temp_files",
           "temp_path", "write_bytes_atomic", "write_json_atomic"]
