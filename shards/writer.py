"""Shard writing: bounded tar files, invisible to readers until complete."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from shards.atomic import TMP_SUFFIX, fsync_file, temp_path
from shards.sample import SampleDigest, sample_digest

# A fixed member mtime makes a shard's bytes a function of its samples alone (reruns write the same file).
FIXED_MTIME = 0.0
SHARD_NUMBER_GLOB = "[0-9][0-9][0-9][0-9]"  # shard names are `<prefix>-NNNN.tar`


@dataclass(frozen=True)
class ShardLimits:
    max_bytes: int = 512 * 1024 * 1024
    max_samples: int = 1000


@dataclass(frozen=True)
class WrittenSample:
    shard: str  # file name in the writer's folder
    key: str
    bytes: int  # payload bytes of the members (tar headers not counted)
    digest: SampleDigest


def shard_glob(prefix: str) -> str:
    """The complete shards of one writer prefix (and no other prefix that merely starts the same)."""
    return f"{prefix}-{SHARD_NUMBER_GLOB}.tar"


def shard_temp_glob(prefix: str) -> str:
    """The temporary files an interrupted writer with this prefix left."""
    return f"{prefix}-{SHARD_NUMBER_GLOB}.*.tar{TMP_SUFFIX}"


class ShardWriter:
    """Writes `<prefix>-NNNN.tar` files in `folder`.

    Each shard is written under a temporary name and renamed when closed, so a reader (or a crash) never
    sees a partial tar under a shard's final name; a failed write (a full disk) removes the temporary
    file. `written` lists every sample with its shard, size and digest.
    """

    def __init__(self, folder: Path, prefix: str, limits: ShardLimits = ShardLimits()):
        if "." in prefix:
            raise ValueError(f"shard prefix {prefix!r} contains a dot")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.limits = limits
        self.written: list[WrittenSample] = []
        self.shards: list[str] = []
        self._index = 0
        self._tar: wds.TarWriter | None = None
        self._name = ""
        self._tmp: Path | None = None
        self._bytes = 0
        self._count = 0

    def _open(self) -> None:
        self._name = f"{self.prefix}-{self._index:04d}.tar"
        self._index += 1
        self._tmp = temp_path(self.folder / self._name)
        self._tar = wds.TarWriter(str(self._tmp), encoder=False, mtime=FIXED_MTIME)
        self._bytes = 0
        self._count = 0

    def _close_current(self) -> None:
        if self._tar is None:
            return
        assert self._tmp is not None
        try:
            self._tar.close()
            self._tar = None
            fsync_file(self._tmp)
            os.replace(self._tmp, self.folder / self._name)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        self.shards.append(self._name)

    def write(self, members: dict[str, bytes | str]) -> str:
        size = sum(len(v) for k, v in members.items() if not k.startswith("__"))
        try:
            if self._tar is not None and (
                self._count >= self.limits.max_samples or self._bytes + size > self.limits.max_bytes
            ):
                self._close_current()
            if self._tar is None:
                self._open()
            assert self._tar is not None
            self._tar.write(members)
        except BaseException:
            self.abort()
            raise
        self._bytes += size
        self._count += 1
        self.written.append(WrittenSample(self._name, str(members["__key__"]), size, sample_digest(members)))
        return self._name

    def close(self) -> None:
        self._close_current()

    def abort(self) -> None:
        """Drop the shard being written (its temp file) without publishing it."""
        if self._tar is not None:
            try:
                self._tar.close()
            except OSError:
                pass  # the disk that failed the write may fail the flush too; the file goes anyway
            self._tar = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
