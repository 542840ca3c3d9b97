"""The run folder's two rules before any work: one writer at a time (a lock), and room to write.

The lock is `fcntl.flock` on `<run>/.unish.lock`, held for the whole run by the writing process. The
kernel releases it when that process ends however it ends (SIGKILL included), so a lock left by a dead
process is never "stale" in the kernel's eyes: the next writer takes it, and the holder record it finds
in the file (host, pid, command, start time) is reported as taken over. flock works between processes on
one machine and on NFSv4 and most cluster filesystems; on object storage there is no folder to lock.
The lock file is never deleted (deleting a locked file lets two processes lock two different files).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from shards.atomic import temp_path

LOCK_FILE = ".unish.lock"
LOG_DIR = "logs"  # a command's log files (`<command>-<UTC time>.log`): full tracebacks of the errors it handled
HANDLED_LOGGER = "unish.handled"  # errors caught and recorded as rows, with their tracebacks: to the log file only


def handled_logger() -> logging.Logger:
    """The logger of errors a run handled (recorded as a row): it never reaches the terminal, only the run's log
    file (flows.runlog attaches one while a run lasts)."""
    log = logging.getLogger(HANDLED_LOGGER)
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


class RunLocked(RuntimeError):
    """Another process is writing this run folder."""


class OutputNotWritable(OSError):
    """The run folder cannot be created or written (read-only, permissions, not a folder)."""


class NotEnoughSpace(OSError):
    """The run folder's filesystem has less room than the run needs to start."""


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    command: str
    started: str  # ISO time, UTC

    def describe(self) -> str:
        return f"{self.command or 'a unish run'} (pid {self.pid} on {self.host}, since {self.started})"


def _me(command: str) -> LockHolder:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return LockHolder(socket.gethostname(), os.getpid(), command or " ".join(sys.argv[:3]), started)


def _read_holder(fd: int) -> LockHolder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    if not raw.strip():
        return None
    try:
        return LockHolder(**json.loads(raw))
    except (ValueError, TypeError):
        return None


@dataclass
class HeldLock:
    path: Path
    holder: LockHolder
    took_over: LockHolder | None  # the record of a writer that died holding the folder


@contextmanager
def run_lock(run_dir: Path, command: str = "") -> Iterator[HeldLock]:
    """Hold the run folder's lock for the duration of the block; raise RunLocked at once if another
    process (or another run in this process) holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(fd)
            who = holder.describe() if holder else "another process"
            raise RunLocked(f"{run_dir} is being written by {who}; one writer per run folder: wait for it "
                            f"to finish or stop it, then run again") from None
        previous = _read_holder(fd)
        me = _me(command)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(asdict(me)).encode())
        os.fsync(fd)
        try:
            yield HeldLock(path, me, previous)
        finally:
            os.ftruncate(fd, 0)  # released cleanly: no holder record left to report as taken over
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def check_unlocked(run_dir: Path) -> None:
    """Fail fast (before a slow start-up) if another process is writing `run_dir`."""
    if not (Path(run_dir) / LOCK_FILE).exists():
        return
    with run_lock(run_dir, "check"):
        pass


def check_writable(run_dir: Path, need_bytes: int = 0) -> None:
    """The folder exists (or can be made), accepts a file, and its filesystem has `need_bytes` free."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputNotWritable(errno.ENOTDIR, f"output {run_dir} exists and is not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = temp_path(run_dir / "write-check")
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise OutputNotWritable(e.errno, f"output folder {run_dir} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise NotEnoughSpace(errno.ENOSPC, f"output folder {run_dir} has {free / 2**20:.1f} MiB free; the run "
                             f"needs at least {need_bytes / 2**20:.1f} MiB to write its first shard (free space, "
                             f"or lower the shard size bound)")


__all__ = ["HANDLED_LOGGER", "LOCK_FILE", "LOG_DIR", "handled_logger", "HeldLock", "LockHolder", "NotEnoughSpace", "OutputNotWritable", "RunLocked",
           "check_unlocked", "check_writable", "run_lock"]
