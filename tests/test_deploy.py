"""infra/prefect.yaml's process deployment, for real: a Prefect server on loopback, `prefect deploy` from the
yaml, a process worker, one flow run of the curate flow on a small video, its shards and index."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ffmpeg
from shards.index import INDEX_FILE, read_index
from shards.reader import iter_clips, shard_urls

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "infra" / "prefect.yaml"
LOCAL = "curate-local"
PREFECT = [sys.executable, "-m", "prefect"]

pytestmark = pytest.mark.slow


def spec() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def local_deployment() -> dict:
    return next(d for d in spec()["deployments"] if d["name"] == LOCAL)


def cli(*args: str, env: dict, timeout: float = 120) -> str:
    r = subprocess.run([*PREFECT, "--no-prompt", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


async def wait_for_run(run_id, timeout_s: float):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for _ in range(int(timeout_s * 2)):
            run = await client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            await asyncio.sleep(0.5)
    raise AssertionError(f"flow run {run_id} not finished after {timeout_s} s (state {run.state})")


@pytest.fixture(scope="module")
def deployed_run(prefect_api, tmp_path_factory):
    """Deploy curate-local from the yaml, run it once through a process worker on a 6 s test video."""
    from prefect.deployments import run_deployment

    d = tmp_path_factory.mktemp("deploy")
    video = d / "testsrc.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=6", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(video))
    manifest = d / "manifest.csv"
    manifest.write_text(f"source,start,end,id\n{video},,,testsrc\n")
    out = d / "out"

    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(REPO)}  # this checkout's code
    env.pop("UNISH_REPO", None)  # deployed without it: the pull step keeps its placeholder
    pool = local_deployment()["work_pool"]["name"]
    cli("work-pool", "create", pool, "--type", spec()["definitions"]["work_pools"][pool], "--overwrite", env=env)
    cli("deploy", "--prefect-file", str(PREFECT_YAML), "--name", LOCAL, env=env)

    # Create the run (timeout 0: do not wait); the yaml's config stays, manifest and out are this test's.
    run = run_deployment(f"curate/{LOCAL}", parameters={"manifest": str(manifest), "out": str(out)}, timeout=0)
    # One poll: the worker submits the scheduled run, waits for its process, then exits.
    # The worker starts outside the repository; its UNISH_REPO is where the pull step takes the run.
    worker = subprocess.run([*PREFECT, "worker", "start", "--pool", pool, "--run-once"], cwd=d,
                            env={**env, "UNISH_REPO": str(REPO)},
                            capture_output=True, text=True, timeout=240)
    finished = asyncio.run(wait_for_run(run.id, 30))
    return finished, out, pool, worker


def test_the_worker_runs_the_deployment_to_completion(deployed_run):
    run, _, pool, worker = deployed_run
    assert run.state.is_completed(), f"{run.state}\nworker:\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
    assert run.work_pool_name == pool and worker.returncode == 0


def test_the_run_wrote_shards_and_index(deployed_run):
    _, out, _, _ = deployed_run
    assert (out / INDEX_FILE).is_file()
    index, videos = read_index(out)
    assert [(v["source_id"], v["status"], v["n_ok"]) for v in videos.to_pylist()] == [("testsrc", "ok", 1)]
    clips = list(iter_clips(shard_urls(out / "shards")))  # checked against the index's digests
    assert [c.key for c in clips] == [r["key"] for r in index.to_pylist() if r["status"] == "ok"]
    assert clips[0].frames.shape == (30, 294, 518, 3)


def test_the_deployment_holds_the_yaml_parameters_and_pull_step(deployed_run, prefect_api):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name(f"curate/{LOCAL}")

    dep = asyncio.run(read())
    local = local_deployment()
    assert dep.parameters == local["parameters"] and dep.entrypoint == local["entrypoint"]
    assert dep.pull_steps == local["pull"]  # the repository is read from the worker's environment at run time
