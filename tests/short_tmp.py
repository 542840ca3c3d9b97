"""Folders for Unix sockets. A socket's path holds at most 107 bytes, and Chromium and Ray put theirs a few
levels below their temp folder: under a long TMPDIR they abort. These folders go under the system temp folder
when its path is short, else under /tmp."""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SOCKET_PATH_MAX = 107
# this module's folder (/unish-ray-xxxxxxxx) and what Ray adds below it (/session_<time>_<pid>/sockets/plasma_store)
ROOM_FOR_SOCKETS = 84


def short_base() -> str:
    base = tempfile.gettempdir()
    return base if len(base) + ROOM_FOR_SOCKETS <= SOCKET_PATH_MAX else "/tmp"


@contextmanager
def short_temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=short_base()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
