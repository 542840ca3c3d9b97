"""Curation under concurrency, damage, dead servers and failing disks: what must hold, shown on real runs."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.curate import StorageFailed, run_curate, set_progress_hook
from flows.params import CurateConfig
from flows.repair import repair_plan
from http_fixture import VideoServer
from shards.atomic import TMP_SUFFIX
from shards.reader import ShardDamaged, iter_clips, shard_urls
from shards.runfolder import LOCK_FILE
from shards.verify import verify_run

REPO = Path(__file__).resolve().parents[1]
FAST = dict(progress=False, workers=2, fetch_retries=2, fetch_retry_delays_s=[0.2], host_backoff_s=0.0)


def samples(out: Path) -> dict[str, str]:
    """key -> hash of the clip's decoded content, through the (verifying) reader."""
    got = {}
    for c in iter_clips(shard_urls(out / "shards")):
        h = hashlib.sha256(c.frames.tobytes())
        h.update(repr(sorted(c.meta.items())).encode())
        got[c.key] = h.hexdigest()
    return got


def same_run(a: Path, b: Path) -> None:
    assert pq.read_table(a / "index.parquet").equals(pq.read_table(b / "index.parquet"))
    assert pq.read_table(a / "videos.parquet").equals(pq.read_table(b / "videos.parquet"))
    assert sorted(p.name for p in (a / "shards").iterdir()) == sorted(p.name for p in (b / "shards").iterdir())
    for p in (a / "shards").iterdir():
        assert p.read_bytes() == (b / "shards" / p.name).read_bytes(), p.name


# ------------------------------------------------------------------------------------------------ damage


@pytest.fixture(scope="module")
def curated_run(tmp_path_factory, media, prefect_api):
    """vtest_20s: 4 clips in 2 shards of 2."""
    d = tmp_path_factory.mktemp("damage")
    shutil.copy(media / "vtest_20s.mp4", d / "vtest_20s.mp4")
    manifest = d / "m.csv"
    manifest.write_text("source,id\nvtest_20s.mp4,vtest\n")
    out = d / "run"
    run_curate(manifest, out, CurateConfig(**FAST, shard_max_samples=2))
    assert verify_run(out).ok
    return manifest, out, samples(out)


def members_of(tar: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar) as tf:
        return tf.getmembers()


def second_sample_header(tar: Path) -> int:
    members = members_of(tar)
    first_key = members[0].name.split(".")[0]
    return next(m.offset for m in members if not m.name.startswith(first_key + "."))


def cut_at_member_boundary(tar: Path) -> None:
    data = tar.read_bytes()
    tar.write_bytes(data[: second_sample_header(tar)])


def bad_header(tar: Path) -> None:
    data = bytearray(tar.read_bytes())
    at = second_sample_header(tar)
    data[at + 148: at + 156] = b"9999999\0"  # the header's checksum field
    tar.write_bytes(bytes(data))


def zeroed_block(tar: Path) -> None:
    data = bytearray(tar.read_bytes())
    at = second_sample_header(tar)
    data[at: at + 512] = bytes(512)
    tar.write_bytes(bytes(data))


def flipped_jpeg_byte(tar: Path) -> None:
    member = next(m for m in members_of(tar) if m.name.endswith("frames.010.jpg"))
    data = bytearray(tar.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x40
    tar.write_bytes(bytes(data))


def changed_meta_digit(tar: Path) -> None:
    member = next(m for m in members_of(tar) if m.name.endswith("meta.json"))
    data = bytearray(tar.read_bytes())
    body = data[member.offset_data: member.offset_data + member.size]
    at = body.index(b'"source_fps":') + len(b'"source_fps":')
    body[at] = ord("9") if body[at] != ord("9") else ord("8")
    data[member.offset_data: member.offset_data + member.size] = body
    tar.write_bytes(bytes(data))


DAMAGE = {
    "cut_at_member_boundary": (cut_at_member_boundary, {"missing_clip"}),
    "bad_header": (bad_header, {"missing_clip"}),
    "zeroed_block": (zeroed_block, {"missing_clip"}),
    "flipped_jpeg_byte": (flipped_jpeg_byte, {"damaged"}),
    "changed_meta_json": (changed_meta_digit, {"damaged"}),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_reported_by_reader_and_verify_then_repaired_by_a_rerun(curated_run, tmp_path, kind):
    manifest, original, original_samples = curated_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    damage, kinds = DAMAGE[kind]
    shard = sorted((out / "shards").glob("*.tar"))[0]
    damage(shard)

    with pytest.raises(ShardDamaged) as err:
        list(iter_clips(shard_urls(out / "shards")))
    assert shard.name in str(err.value) and err.value.problem.key.startswith("vtest-")
    assert err.value.problem.kind in kinds

    report = verify_run(out)
    assert not report.ok and {p.kind for p in report.problems} & kinds
    assert report.damaged_shards() == [shard.name]
    plan = repair_plan(out, report)
    assert [(s.shard, s.action, s.needs_verify_flag) for s in plan] == [(shard.name, "repack", False)]

    result = run_curate(manifest, out, CurateConfig(**FAST, shard_max_samples=2))
    assert result["repaired"] == 1
    assert verify_run(out).ok
    assert samples(out) == original_samples
    same_run(out, original)


def test_damage_that_keeps_size_and_time_needs_the_full_check(curated_run, tmp_path):
    manifest, original, original_samples = curated_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    shard = sorted((out / "shards").glob("*.tar"))[1]
    st = shard.stat()
    flipped_jpeg_byte(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size, same time

    plan = repair_plan(out, verify_run(out))
    assert [(s.shard, s.needs_verify_flag) for s in plan] == [(shard.name, True)]
    assert run_curate(manifest, out, CurateConfig(**FAST, shard_max_samples=2))["repaired"] == 0
    assert not verify_run(out).ok  # the quick check trusts size and time
    assert run_curate(manifest, out, CurateConfig(**FAST, shard_max_samples=2, verify_shards=True))["repaired"] == 1
    assert verify_run(out).ok and samples(out) == original_samples


def test_lost_staging_is_repaired_by_decoding_again(curated_run, tmp_path):
    manifest, original, _ = curated_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    for clips in (out / "_work" / "videos").rglob("clips"):
        shutil.rmtree(clips)
    (out / "shards" / sorted(p.name for p in (out / "shards").iterdir())[0]).unlink()
    plan = repair_plan(out, verify_run(out))
    assert [s.action for s in plan] == ["refetch"]
    run_curate(manifest, out, CurateConfig(**FAST, shard_max_samples=2))
    same_run(out, original)


def test_verify_cli_exit_status_and_json(curated_run, tmp_path):
    _, original, _ = curated_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    (out / "shards" / "stray-0000.tar").write_bytes((out / "shards" / "vtest-full-0000.tar").read_bytes())
    cmd = [sys.executable, "-m", "flows.cli", "verify", str(out), "--json"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    import json

    report = json.loads(r.stdout)
    assert r.returncode == 1 and not report["ok"]
    assert [(p["kind"], p["shard"]) for p in report["problems"]] == [("unindexed_shard", "stray-0000.tar")]
    assert [s["action"] for s in report["repair"]] == ["set_aside"]
    (out / "shards" / "stray-0000.tar").unlink()
    assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0


# ------------------------------------------------------------------------------------------- concurrency


def test_a_second_run_on_the_same_folder_is_refused_and_the_first_is_unharmed(tmp_path, media, prefect_api):
    shutil.copy(media / "vtest_20s.mp4", tmp_path / "vtest_20s.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,id\nvtest_20s.mp4,vtest\n")
    cmd = [sys.executable, "-m", "flows.cli", "curate", str(manifest), "--no-progress", "--workers", "1"]
    go = tmp_path / "go"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "UNISH_FAULT_PACK_WAIT_FILE": str(go)}
    out = tmp_path / "shared"
    first = subprocess.Popen(cmd + ["--out", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not list((out / "shards").glob(f"*{TMP_SUFFIX}")):
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.05)
        assert (out / LOCK_FILE).read_text(), "the first run never took the lock"
        second = subprocess.run(cmd + ["--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120)
        assert first.poll() is None  # refused while the first is still mid-pack, not after it
        message = " ".join(second.stderr.split())
        assert second.returncode == 1 and "is being written by" in message and f"pid {first.pid}" in message
    finally:
        go.write_text("")
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    clean = tmp_path / "clean"
    env.pop("UNISH_FAULT_PACK_WAIT_FILE")
    subprocess.run(cmd + ["--out", str(clean)], cwd=REPO, env=env, check=True, capture_output=True)
    same_run(out, clean)


# --------------------------------------------------------------------------------------------- retries


def test_a_dead_server_does_not_hold_up_a_live_one(tmp_path, media, prefect_api):
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(media / "vtest_20s.mp4", www / "v.mp4")
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    events: list[tuple[str, str]] = []
    with VideoServer(www) as server:
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"source,start,end,id\nhttp://127.0.0.1:{dead_port}/v.mp4,0,5,dead\n"
                            f"{server.url('/files/v.mp4')},0,5,live\n")
        set_progress_hook(lambda e: events.append((e["event"], e.get("source_id", ""))))
        try:
            run_curate(manifest, tmp_path / "out", CurateConfig(progress=False, workers=1, fetch_retries=2,
                                                                fetch_retry_delays_s=[0.5], host_backoff_s=0.5))
        finally:
            set_progress_hook(None)
    # One worker: the live video ran while the dead one waited for its retry, not after its retries.
    assert events[1:] == [("retry", "dead"), ("video", "live"), ("retry", "dead"), ("video", "dead")]
    videos = {v["source_id"]: v for v in pq.read_table(tmp_path / "out" / "videos.parquet").to_pylist()}
    assert videos["live"]["status"] == "ok"
    assert videos["dead"]["reason"] == "network" and "gave up after 3 attempts" in videos["dead"]["message"]


# ------------------------------------------------------------------------------------------------ storage


def test_a_read_only_output_is_refused_before_any_work(tmp_path, media, read_only_folder):
    shutil.copy(media / "vtest_20s.mp4", tmp_path / "v.mp4")
    (tmp_path / "m.csv").write_text("source\nv.mp4\n")
    r = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(tmp_path / "m.csv"), "--no-progress",
                        "--out", str(read_only_folder / "run")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and "not writable" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


def test_a_full_disk_stops_the_run_leaves_no_temporary_file_and_a_rerun_finishes(tmp_path, media, prefect_api,
                                                                                small_tmpfs):
    shutil.copy(media / "vtest_20s.mp4", tmp_path / "v.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,id\nv.mp4,v\n")
    config = CurateConfig(**FAST, shard_max_mb=1.0)
    disk = small_tmpfs("disk", 3 * 1024)  # room to start, not for 4 staged clips and their shards
    with pytest.raises(StorageFailed, match="Free space"):
        run_curate(manifest, disk / "run", config)
    assert [p for p in disk.rglob("*") if p.name.endswith(TMP_SUFFIX)] == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    run_curate(manifest, disk / "run", config)
    run_curate(manifest, tmp_path / "clean", config)
    same_run(disk / "run", tmp_path / "clean")


def test_relabel_is_refused_while_another_process_writes_the_run(curated_run):
    from flows.relabel import RelabelConfig, run_relabel
    from shards.runfolder import RunLocked

    _, out, _ = curated_run
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom shards.runfolder import run_lock\n"
                               "with run_lock(sys.argv[1], 'unish curate m.csv'):\n    print('locked', flush=True)\n"
                               "    time.sleep(60)\n", str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            run_relabel(out, RelabelConfig(stage="depth", backend="none"))
        assert not (out / "labels").exists()  # refused before any version folder was made
    finally:
        holder.kill()
        holder.wait()
