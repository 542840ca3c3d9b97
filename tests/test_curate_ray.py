"""`--runner ray` on a real Ray cluster of two worker nodes on this machine (`ray start --head` plus
`ray start --address`, one CPU each): the same index rows and byte-identical shards as the default local runner,
the labelling stage run by one actor that loaded it once, and a worker SIGKILLed mid-shard leaving a run that a
rerun completes with the same result."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, ffmpeg
from short_tmp import short_temp_dir

RAY = str(Path(sys.executable).with_name("ray"))
STAGES = ["depth:none"]  # a CPU labeller that keeps every clip: its labels go into the shards
OBJECT_STORE_BYTES = 100 * 2**20  # Ray's floor is 75 MiB; the runs pass only small rows through it


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and one worker node, one CPU each; their worker processes import this checkout."""
    with short_temp_dir("unish-ray-") as tmp:  # Ray's sockets live in its temp folder
        yield from _cluster(tmp)


def _cluster(tmp: Path):
    # a private cluster on this machine: no token file under ~/.ray to share (the test process joins it too)
    old_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_worker_niceness": "0",  # shared cores: no nice 15
           "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--num-gpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]
    head = subprocess.run([RAY, "start", "--head", f"--port={_free_port()}", f"--temp-dir={tmp}",
                           f"--ray-client-server-port={_free_port()}", "--include-dashboard=false", *common],
                          env=env, capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr
    address = re.search(r"--address='([^']+)'", head.stdout).group(1)  # as `ray start --head` says to join it
    try:
        worker = subprocess.run([RAY, "start", f"--address={address}", f"--temp-dir={tmp}", *common], env=env,
                                capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr
        yield address
    finally:
        _stop_cluster(tmp, address)
        if old_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_auth


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (the cluster's temp folder: its Ray processes only)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _with_descendants(roots: list[int]) -> list[int]:
    parent = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(roots), list(roots)
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parent.items() if p == pid and c not in found]
        found.update(children)
        frontier += children
    return sorted(found)


def _stop_cluster(temp_dir: Path, address: str) -> None:
    """Stop this test's Ray processes by pid (`ray stop` would stop every Ray cluster on the machine): those naming
    its temp folder or address, and their children (agents, workers)."""
    roots = [p for p in _pids_mentioning(str(temp_dir)) + _pids_mentioning(address) if p != os.getpid()]
    targets = _with_descendants(roots)
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = [p for p in targets if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Three 6 s videos (one window each), a missing file and a text file posing as a video: error rows."""
    d = tmp_path_factory.mktemp("ray_videos")
    for i in range(3):
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=25:duration=6", "-vf", f"hue=h={40 * i}",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", str(d / f"v{i}.mp4"))
    (d / "text.mp4").write_text("not a video\n" * 20)
    m = d / "m.csv"
    m.write_text("source\nv0.mp4\nv1.mp4\nv2.mp4\nmissing.mp4\ntext.mp4\n")
    return m


def _result(out: Path) -> tuple[list[dict], list[dict], dict[str, bytes]]:
    """Index rows, video rows (without the download path, which names the run folder) and shard bytes."""
    videos = [{k: v for k, v in r.items() if k != "path"} for r in pq.read_table(out / "videos.parquet").to_pylist()]
    shards = {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}
    return pq.read_table(out / "index.parquet").to_pylist(), videos, shards


@pytest.fixture(scope="module")
def local_run(manifest, tmp_path_factory, prefect_api) -> Path:
    from flows.curate import run_curate
    from flows.params import CurateConfig

    out = tmp_path_factory.mktemp("local") / "run"
    summary = run_curate(manifest, out, CurateConfig(stages=STAGES, workers=2, progress=False))
    assert summary["ok"] == 3 and {e["reason"] for e in summary["errors"]} == {"missing_file", "unreadable"}
    return out


def test_ray_runner_matches_local_and_loads_the_labeller_once(ray_cluster, local_run, manifest, tmp_path):
    from flows import runners
    from flows.curate import run_curate
    from flows.params import CurateConfig

    out = tmp_path / "run"
    # one labeller actor asked for (a CPU stage would otherwise run in the video tasks): the path GPU stages take
    config = CurateConfig(stages=STAGES, workers=2, progress=False, runner="ray", ray_address=ray_cluster,
                          ray_labellers=1)
    summary = run_curate(manifest, out, config)
    assert summary["ok"] == 3 and {e["reason"] for e in summary["errors"]} == {"missing_file", "unreadable"}
    index, videos, shards = _result(out)
    want_index, want_videos, want_shards = _result(local_run)
    assert index == want_index and videos == want_videos
    assert len(shards) == 3 and shards == want_shards
    # one labeller (a CPU stage: no GPU asked), its stage built once in one process, every video labelled there
    assert [(s["stages"], s["built"], s["videos"]) for s in runners.LAST_LABELLER_STATS] == [(STAGES, 1, 3)]
    assert runners.LAST_LABELLER_STATS[0]["pid"] != os.getpid()


def _worker_pids(task_title: str) -> list[int]:
    """Ray worker processes now running a task (Ray sets the process title to `ray::<task name>`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(task_title.encode()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_worker_killed_mid_shard_then_rerun_ends_as_uninterrupted(ray_cluster, local_run, manifest, tmp_path,
                                                                   prefect_api):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flows.cli", "curate", str(manifest), "--out", str(out), "--stages", ",".join(STAGES),
           "--runner", "ray", "--ray-address", ray_cluster, "--workers", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "UNISH_FAULT_PACK_DELAY_S": "2"}  # forwarded to the video tasks
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = []
    deadline = time.monotonic() + 240
    while not killed and time.monotonic() < deadline and first.poll() is None:
        if list((out / "shards").glob("*.tmp*")):  # a video is mid-shard: kill the worker writing it
            for pid in _worker_pids("ray::video"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.1)
    output, _ = first.communicate(timeout=300)
    assert killed, f"no video worker was caught mid-shard:\n{output}"
    assert first.returncode in (0, 3), output  # a lost video is a row a rerun may clear, never a crash

    env.pop("UNISH_FAULT_PACK_DELAY_S")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _result(out) == _result(local_run)
    assert not list((out / "shards").glob("*.tmp*"))


def test_resource_requests_place_gpu_stages_on_gpus_and_cpu_stages_in_the_video_tasks():
    from flows.runners import ray_plan
    from tasks.profiles import PROFILES

    paper = ray_plan(PROFILES["paper"], 1.0, None, cluster_gpus=8)
    assert paper.labellers == 8 and paper.labeller["num_gpus"] == 1.0 and paper.video == {"num_cpus": 1.0,
                                                                                           "num_gpus": 0.0}
    assert ray_plan(PROFILES["paper"], 0.5, None, cluster_gpus=8).labellers == 16  # two model sets per GPU
    assert ray_plan(PROFILES["paper"], 1.0, None, cluster_gpus=0).labellers == 1  # waits for a GPU node to join
    assert ray_plan(["people:external", "masks:sam2"], 1.0, None, 2).labeller["num_gpus"] == 1.0
    lite = ray_plan(PROFILES["lite"], 1.0, None, cluster_gpus=8)
    assert lite.labellers == 0 and lite.labeller["num_gpus"] == 0.0  # CPU models load in each video worker
    assert ray_plan(PROFILES["lite"], 1.0, 2, cluster_gpus=8).labellers == 2
    assert ray_plan([], 1.0, 3).labellers == 0
