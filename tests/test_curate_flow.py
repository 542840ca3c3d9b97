"""The curation flow end to end on real video, with the bad-input corpus, reruns and a SIGKILL."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.curate import run_curate
from flows.params import CurateConfig
from http_fixture import VideoServer
from shards.index import compute_funnel, read_index
from shards.reader import iter_clips, shard_urls

REPO = Path(__file__).resolve().parents[1]
FAST = dict(progress=False, workers=2, fetch_retries=2, fetch_retry_delays_s=[0.2], host_backoff_s=0.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, media, synthetic_videos, bad_videos):
    """A manifest mixing good video, every kind of bad input, and loopback URLs."""
    d = tmp_path_factory.mktemp("corpus")
    www = d / "www"
    www.mkdir()
    shutil.copy(media / "vtest_20s.mp4", www / "v.mp4")
    for name in ("vtest_20s.mp4", "sports2d_demo.mp4"):
        shutil.copy(media / name, d / name)
    shutil.copy(synthetic_videos["cut"], d / "cut.mp4")
    shutil.copy(synthetic_videos["gap"], d / "gap.mp4")
    (d / "a_folder.mp4").mkdir()
    for name, path in bad_videos.items():
        shutil.copy(path, d / path.name)
    return d


def write_manifest(d: Path, url) -> Path:
    lines = [
        "source,start,end,id",
        "vtest_20s.mp4,,,vtest",                 # 1: 4 ok windows
        "cut.mp4,,,cut",                         # 2: window 0 crosses the cut, window 1 ok
        "zero_bytes.mp4,,,zero",                 # 3: error unreadable
        "truncated.mp4,,,trunc",                 # 4: error unreadable
        "text.mp4,,,text",                       # 5: error unreadable
        "audio_only.mp4,,,audio",                # 6: error unreadable
        "x;rm -rf ~,,,",                         # 7: manifest error (shell metacharacters)
        "sports2d_demo.mp4,100,110,late",        # 8: timestamps past the end
        "vtest_20s.mp4,,,vtest",                 # 9: duplicate of row 1
        f"{url('/files/v.mp4')},6,11,web",       # 10: downloaded section, 1 window
        f"{url('/missing.mp4')},,,gone",         # 11: 404, permanent
        f"{url('/flaky/1/v.mp4')},0,5,flaky",    # 12: one reset, then retried and fine
        "truncated_front_index.mp4,,,cutshort",  # 13: opens, states 20 s, holds 8: error truncated
        "a_folder.mp4,,,folder",                 # 14: manifest error: a folder is not a video
        "gap.mp4,,,gap",                         # 15: a 3.4 s hole: both windows rejected frame_gap
    ]
    m = d / "manifest.csv"
    m.write_text("\n".join(lines) + "\n")
    return m


@pytest.fixture(scope="module")
def curated(corpus, prefect_api, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    with VideoServer(corpus / "www") as server:
        manifest = write_manifest(corpus, server.url)
        result = run_curate(manifest, out, CurateConfig(**FAST))
        hits = dict(server.hits)
    return out, result, hits


def test_good_rows_written_bad_rows_recorded(curated):
    out, result, hits = curated
    index, videos = read_index(out)
    v = {r["row"]: r for r in videos.to_pylist()}
    assert v[1]["status"] == "ok" and v[1]["n_ok"] == 4
    assert v[2]["status"] == "ok" and v[2]["n_windows"] == 2 and v[2]["n_ok"] == 1
    for row in (3, 4, 5, 6):
        assert v[row]["status"] == "error" and v[row]["reason"] == "unreadable", v[row]
        assert v[row]["message"]
    assert "no video stream" in v[6]["message"] and "empty file" in v[3]["message"]
    assert v[7]["reason"] == "manifest" and "not allowed" in v[7]["message"]
    assert v[8]["reason"] == "span_out_of_range" and "past the end" in v[8]["message"]
    assert v[9]["reason"] == "manifest" and "duplicate of row 1" in v[9]["message"]
    assert v[10]["status"] == "ok" and v[10]["n_ok"] == 1
    assert v[11]["status"] == "error" and v[11]["reason"] == "unavailable" and "404" in v[11]["message"]
    assert v[12]["status"] == "ok" and v[12]["n_ok"] == 1
    assert v[13]["status"] == "error" and v[13]["reason"] == "truncated" and "container states" in v[13]["message"]
    assert v[14]["reason"] == "manifest" and "is a folder" in v[14]["message"]
    assert v[15]["status"] == "ok" and v[15]["n_windows"] == 2 and v[15]["n_ok"] == 0
    assert hits["/missing.mp4"] == 1  # permanent: never retried
    assert hits["/flaky/1/v.mp4"] >= 2  # transient: retried

    rows = index.to_pylist()
    cut_rows = [r for r in rows if r["source_id"] == "cut"]
    assert [(r["status"], r["reason"]) for r in cut_rows] == [("rejected", "cut"), ("ok", "")]
    web = [r for r in rows if r["source_id"] == "web"]
    assert [(r["start_s"], r["end_s"]) for r in web] == [(6.0, 11.0)]
    assert web[0]["key"] == "web-000006000-000011000"


def test_shards_read_back_exactly_the_ok_clips(curated):
    out, _, _ = curated
    index, _ = read_index(out)
    ok = sorted(r["key"] for r in index.to_pylist() if r["status"] == "ok")
    clips = list(iter_clips(shard_urls(out / "shards")))
    assert sorted(c.key for c in clips) == ok
    assert len(ok) == 4 + 1 + 1 + 1
    for c in clips:
        assert c.frames.shape == (30, 294, 518, 3)
        assert c.meta["end_s"] - c.meta["start_s"] == 5.0
    assert not list((out / "shards").glob("*.tmp"))
    # The downloaded section's frames are the same content as the local file's 6..11 s (source times).
    web = next(c for c in clips if c.key.startswith("web-"))
    assert web.meta["frame_times_s"][0] == pytest.approx(6.0, abs=0.06)


def test_funnel_counts(curated):
    out, _, _ = curated
    f = compute_funnel(*read_index(out))
    assert f.videos_in == 15
    assert f.videos_error == {"unreadable": 4, "manifest": 3, "span_out_of_range": 1, "unavailable": 1,
                              "truncated": 1}
    assert f.rejected == {"cut": 1, "frame_gap": 2}
    assert f.clips_written == 7


def test_rerun_does_no_work_and_changes_nothing(curated, corpus):
    out, _, _ = curated
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()}
    index_before = pq.read_table(out / "index.parquet")
    with VideoServer(corpus / "www") as server:
        manifest = write_manifest(corpus, server.url)
        run_curate(manifest, out, CurateConfig(**FAST))
        # Only the never-downloaded 404 is asked again: finished downloads are not repeated.
        assert set(server.hits) <= {"/missing.mp4"}
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()}
    assert after == before
    assert pq.read_table(out / "index.parquet").equals(index_before)


def _samples(out: Path) -> dict[str, str]:
    """key -> hash of all the sample's content, through the reader."""
    result = {}
    for c in iter_clips(shard_urls(out / "shards")):
        h = hashlib.sha256(c.frames.tobytes())
        h.update(repr(sorted(c.meta.items())).encode())
        assert c.key not in result, f"duplicate key {c.key}"
        result[c.key] = h.hexdigest()
    return result


def test_sigkill_mid_pack_then_rerun_equals_uninterrupted(tmp_path, media, prefect_api):
    for name in ("vtest_20s.mp4", "sports2d_demo.mp4"):
        shutil.copy(media / name, tmp_path / name)
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,start,end,id\nvtest_20s.mp4,,,a\nsports2d_demo.mp4,,,b\nvtest_20s.mp4,0,15,c\n")
    cmd = [sys.executable, "-m", "flows.cli", "curate", str(manifest), "--no-progress", "--workers", "1"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "UNISH_FAULT_PACK_DELAY_S": "0.6"}

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "shards").glob("*.tar.tmp")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    assert list((killed / "shards").glob("*.tar.tmp")), "packing never started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "index.parquet").exists()
    # Whatever a reader sees now is only complete shards.
    for url in shard_urls(killed / "shards"):
        list(iter_clips(url))

    env.pop("UNISH_FAULT_PACK_DELAY_S")
    subprocess.run(cmd + ["--out", str(killed)], cwd=REPO, env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(cmd + ["--out", str(clean)], cwd=REPO, env=env, check=True, capture_output=True)

    assert pq.read_table(killed / "index.parquet").equals(pq.read_table(clean / "index.parquet"))
    assert pq.read_table(killed / "videos.parquet").equals(pq.read_table(clean / "videos.parquet"))
    assert _samples(killed) == _samples(clean)
    assert sorted(p.name for p in (killed / "shards").iterdir()) == sorted(p.name for p in (clean / "shards").iterdir())


def test_cli_inspect_reads_back(curated):
    out, _, _ = curated
    r = subprocess.run([sys.executable, "-m", "flows.cli", "inspect", str(out), "--samples", "2", "--json"],
                       cwd=REPO, capture_output=True, text=True, check=True)
    report = json.loads(r.stdout)
    assert report["funnel"]["clips_written"] == 7
    index_keys = {row["key"] for row in read_index(out)[0].to_pylist() if row["status"] == "ok"}
    assert len(report["read_back"]) == 2 and {c["key"] for c in report["read_back"]} <= index_keys
    assert all((c["frames"], c["width"], c["height"]) == (30, 518, 294) for c in report["read_back"])
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "inspect", str(out / "nope")], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "missing index.parquet" in " ".join(bad.stderr.split())


def test_changed_parameters_redo_the_work(tmp_path, synthetic_videos, prefect_api):
    shutil.copy(synthetic_videos["clean"], tmp_path / "clean.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,id\nclean.mp4,clean\n")
    out = tmp_path / "out"
    run_curate(manifest, out, CurateConfig(**FAST))
    first = [r["key"] for r in read_index(out)[0].to_pylist()]
    assert first == ["clean-000000000-000005000", "clean-000005000-000010000"]
    run_curate(manifest, out, CurateConfig(**FAST, window_seconds=2.5, window_frames=15))
    index, _ = read_index(out)
    assert [r["end_s"] - r["start_s"] for r in index.to_pylist()] == [2.5] * 4
    clips = list(iter_clips(shard_urls(out / "shards")))
    assert sorted(c.key for c in clips) == sorted(r["key"] for r in index.to_pylist())
    assert all(c.frames.shape[0] == 15 for c in clips)
