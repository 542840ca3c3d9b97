"""The run folder's rules: one writer (a lock), write access and room checked first, no temporary file
left behind by a failed write (a real full disk: a small tmpfs)."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shards.atomic import TMP_SUFFIX, write_bytes_atomic, write_json_atomic
from shards.runfolder import (LOCK_FILE, NotEnoughSpace, OutputNotWritable, RunLocked, check_unlocked,
                              check_writable, run_lock)
from shards.sample import ClipSample, encode_sample
from shards.writer import ShardWriter

REPO = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent("""
    import sys, time
    from shards.runfolder import run_lock
    with run_lock(sys.argv[1], "holder-test"):
        print("locked", flush=True)
        time.sleep(60)
""")


def hold_lock(folder):
    """A separate process holding the folder's lock, started and confirmed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_at_once_naming_the_holder(tmp_path):
    proc = hold_lock(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(RunLocked) as err:
            with run_lock(tmp_path, "second"):
                pass
        assert time.monotonic() - start < 5  # refused, not waited for
        assert f"pid {proc.pid}" in str(err.value) and "holder-test" in str(err.value)
        with pytest.raises(RunLocked):
            check_unlocked(tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_writer_is_taken_over_and_reported(tmp_path):
    proc = hold_lock(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(tmp_path, "after") as held:
        assert held.took_over is not None and held.took_over.pid == proc.pid
        assert held.took_over.command == "holder-test"
    with run_lock(tmp_path, "again") as held:  # released cleanly: nothing to report
        assert held.took_over is None


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    with run_lock(tmp_path, "outer"):
        with pytest.raises(RunLocked):
            with run_lock(tmp_path, "inner"):
                pass
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_read_only_folder_is_refused_before_any_work(read_only_folder):
    with pytest.raises(OutputNotWritable, match="not writable") as err:
        check_writable(read_only_folder / "run")
    assert str(read_only_folder) in str(err.value)


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(OutputNotWritable, match="not a folder"):
        check_writable(tmp_path / "run")


def test_too_little_room_is_refused_with_what_is_needed(small_tmpfs):
    disk = small_tmpfs("small", 512)
    check_writable(disk / "run", need_bytes=100 * 1024)
    with pytest.raises(NotEnoughSpace, match="MiB free") as err:
        check_writable(disk / "run", need_bytes=4 * 2**20)
    assert err.value.errno == errno.ENOSPC


def _leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(TMP_SUFFIX)]


def test_failed_atomic_writes_leave_nothing_behind(small_tmpfs):
    disk = small_tmpfs("full", 256)
    write_json_atomic(disk / "small.json", {"a": 1})
    with pytest.raises(OSError) as err:
        write_bytes_atomic(disk / "big.bin", os.urandom(400 * 1024))
    assert err.value.errno == errno.ENOSPC
    assert not (disk / "big.bin").exists() and _leftovers(disk) == []
    assert (disk / "small.json").exists()


def test_shard_writer_on_a_full_disk_removes_its_temporary_file(small_tmpfs):
    disk = small_tmpfs("full", 256)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (4, 120, 160, 3), dtype=np.uint8)  # incompressible: JPEGs of ~40 kB
    with pytest.raises(OSError) as err:
        with ShardWriter(disk, "vid") as w:
            for i in range(20):
                w.write(encode_sample(ClipSample(f"vid-{i:09d}-{i + 1:09d}", noise, {"i": i})))
    assert err.value.errno == errno.ENOSPC
    assert list(disk.iterdir()) == [] or all(p.suffix == ".tar" for p in disk.iterdir())
    assert _leftovers(disk) == []
