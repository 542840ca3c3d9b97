"""Shard writing: bounded tar files, invisible to readers until complete."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

# A fixed member mtime makes a shard's bytes a function of its samples alone (reruns write the same file).
FIXED_MTIME = 0.0
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class ShardLimits:
    max_bytes: int = 512 * 1024 * 1024
    max_samples: int = 1000


class ShardWriter:
    """Writes `<prefix>-NNNN.tar` files in `folder`.

    Each shard is written as `<name>.tmp` and renamed when closed, so a reader (or a crash) never
    sees a partial tar under a shard's final name. `written` lists (shard name, key, bytes) rows.
    """

    def __init__(self, folder: Path, prefix: str, limits: ShardLimits = ShardLimits()):
        if "." in prefix:
            raise ValueError(f"shard prefix {prefix!r} contains a dot")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.limits = limits
        self.written: list[tuple[str, str, int]] = []
        self.shards: list[str] = []
        self._index = 0
        self._tar: wds.TarWriter | None = None
        self._name = ""
        self._bytes = 0
        self._count = 0

    def _open(self) -> None:
        self._name = f"{self.prefix}-{self._index:04d}.tar"
        self._index += 1
        tmp = self.folder / (self._name + TMP_SUFFIX)
        self._tar = wds.TarWriter(str(tmp), encoder=False, mtime=FIXED_MTIME)
        self._bytes = 0
        self._count = 0

    def _close_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        tmp = self.folder / (self._name + TMP_SUFFIX)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / self._name)
        self.shards.append(self._name)

    def write(self, members: dict[str, bytes | str]) -> str:
        size = sum(len(v) for k, v in members.items() if not k.startswith("__"))
        if self._tar is not None and (
            self._count >= self.limits.max_samples or self._bytes + size > self.limits.max_bytes
        ):
            self._close_current()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        self._tar.write(members)
        self._bytes += size
        self._count += 1
        self.written.append((self._name, str(members["__key__"]), size))
        return self._name

    def close(self) -> None:
        self._close_current()

    def abort(self) -> None:
        """Drop the shard being written (its temp file) without publishing it."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            (self.folder / (self._name + TMP_SUFFIX)).unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
