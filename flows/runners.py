"""Where a curation run's videos execute: Prefect's thread pool on this machine (`local`, the default) or a Ray
cluster (`ray`, prefect-ray's task runner).

On Ray, each video's chain (`flows.curate.video_task`: fetch, probe, segment, pack) is a Ray task asking for one
CPU. When a stage runs a model on a GPU (`GPU_STAGES`), the labelling stages run in `Labeller` actors asking for
`gpus_per_labeller` GPUs each, which load the models once and label every video sent to them; CPU stages run in
the video task itself (loaded once per worker process, which Ray reuses), or in actors when `labellers` is given. A video
task hands its work folder to a labeller and waits; the run folder must therefore be one filesystem that every
node sees (a shared mount), as the shards are written by the video tasks themselves. The actors' names reach the
video tasks through `LABELLERS_ENV`, set on those tasks only.

Crash safety is the local runner's: every step writes under a temp name and checks its own marker, so a lost
worker or node leaves what a rerun finishes. A video whose worker died mid-run is recorded as an error row
(`worker_lost`, a rerun redoes it) after Ray's own retries.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.profiles import PROFILES

RUNNERS = ("local", "ray")
# The paper profile's labellers run their models on a GPU; every other stage (HOG, MediaPipe, external boxes,
# `depth:none`) runs on a CPU.
GPU_STAGES = frozenset(PROFILES["paper"])
LABELLERS_ENV = "UNISH_RAY_LABELLERS"  # JSON {"namespace", "names"} of the run's labeller actors, for video tasks
VIDEO_CPUS = 1.0  # one video's chain: decoding and JPEG/shard writing, single-threaded in effect
LABELLER_CPUS = 1.0  # feeding a model (JPEG decode, pre- and post-processing) takes a core beside its GPU
# What a Ray worker that died mid-task may cost: Ray resubmits the task this many times (every step is idempotent
# on disk, so a resubmitted video resumes), then the video is recorded as `worker_lost`.
VIDEO_RETRIES = 1
LABELLER_RESTARTS = 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayPlan:
    """The resources a Ray run asks for: per video task, per labeller actor, and how many labellers."""

    video: dict[str, float]
    labeller: dict[str, float]
    labellers: int


def needs_gpu(stage_names: list[str]) -> bool:
    return any(name in GPU_STAGES for name in stage_names)


def ray_plan(stage_names: list[str], gpus_per_labeller: float, labellers: int | None,
             cluster_gpus: float = 0.0) -> RayPlan:
    """Resource requests for these stages. GPU stages run in labeller actors asking for `gpus_per_labeller` each,
    by default as many as the cluster's GPUs hold (at least one). CPU stages run inside the video tasks (each
    worker process loads them once and keeps them for the videos after), unless `labellers` asks for actors."""
    gpus = gpus_per_labeller if needs_gpu(stage_names) else 0.0
    if not stage_names:
        count = 0
    elif labellers is not None:
        count = labellers
    elif gpus > 0:
        count = max(1, int(cluster_gpus // gpus))
    else:
        count = 0
    return RayPlan(video={"num_cpus": VIDEO_CPUS, "num_gpus": 0.0},
                   labeller={"num_cpus": LABELLER_CPUS, "num_gpus": gpus}, labellers=count)


# -- labelling on a labeller actor ----------------------------------------------------------------


class Labeller:
    """A Ray actor holding a run's labelling stages, loaded once (`setup()`), labelling video after video."""

    def __init__(self, stage_names: list[str], stage_params: dict[str, dict]):
        from flows.curate import get_stage

        self.stages = {n: get_stage(n, stage_params.get(n))[0] for n in stage_names}
        self.params = stage_params
        self.calls = 0
        self.videos: set[str] = set()

    def chain(self) -> tuple[list[str], list[str]]:
        """(label families, chain fingerprints) of the stages, in order."""
        from tasks import pipeline

        stages = list(self.stages.values())
        return [s.name for s in stages], pipeline.stage_chain_fingerprints(stages)

    def label(self, stage_name: str, workdir: str, windows: list[dict], fingerprint: str) -> dict[str, int]:
        from tasks import pipeline

        self.calls += 1
        self.videos.add(workdir)
        return pipeline.run_label_stage(self.stages[stage_name], Path(workdir), windows, fingerprint)

    def stats(self) -> dict[str, Any]:
        """What this actor did: its process, the stages it holds (each built once, here), the videos it labelled."""
        from flows.curate import _STAGES

        return {"pid": os.getpid(), "stages": sorted(self.stages), "built": len(_STAGES), "calls": self.calls,
                "videos": len(self.videos)}


@dataclass(frozen=True)
class RemoteLabellers:
    """The run's labeller actors, as a video task finds them (by name)."""

    namespace: str
    names: list[str]

    def _actor(self, workdir: str) -> Any:
        import ray

        # A video always goes to the same labeller (by its work folder), so its stages' calls queue on one actor.
        name = self.names[zlib.crc32(workdir.encode()) % len(self.names)]
        return ray.get_actor(name, namespace=self.namespace)

    def chain(self, workdir: str) -> tuple[list[str], list[str]]:
        import ray

        return ray.get(self._actor(workdir).chain.remote())

    def label(self, stage_name: str, workdir: str, windows: list[dict], fingerprint: str) -> dict[str, int]:
        import ray

        return ray.get(self._actor(workdir).label.remote(stage_name, workdir, windows, fingerprint))


def remote_labellers() -> RemoteLabellers | None:
    """The run's labellers when this process is a video task of a Ray run; None on the local runner."""
    raw = os.environ.get(LABELLERS_ENV)
    if not raw:
        return None
    spec = json.loads(raw)
    return RemoteLabellers(spec["namespace"], list(spec["names"]))


# -- the task runner ------------------------------------------------------------------------------

LAST_LABELLER_STATS: list[dict] = []  # the labellers' `stats()` of the last Ray run in this process (for tests)


def ray_task_runner(config: Any) -> Any:
    """prefect-ray's task runner for this run: connects to `config.ray_address` (`auto`: the cluster `ray start`
    began on this machine; None: a temporary local cluster), starts the labellers, and places every video task
    with the labellers' names and the Prefect API's address in its environment."""
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    class UnishRayTaskRunner(RayTaskRunner):
        def __init__(self) -> None:
            super().__init__(address=config.ray_address,
                             init_kwargs={"include_dashboard": False, "log_to_driver": False})
            self.labellers: list[Any] = []
            self.video_options: dict[str, Any] = {}

        def duplicate(self) -> "UnishRayTaskRunner":
            return UnishRayTaskRunner()

        def __enter__(self) -> "UnishRayTaskRunner":
            import ray

            owns = not ray.is_initialized()
            if owns:
                # `auto` is Ray's own word for "the cluster started on this machine"; prefect-ray would drop it.
                ray.init(address=config.ray_address, namespace="prefect", include_dashboard=False,
                         log_to_driver=False)
            super().__enter__()
            self._owns_ray = owns  # disconnect (a temporary cluster: stop it) when the run ends
            stage_names = config.stage_names()
            plan = ray_plan(stage_names, config.ray_gpus_per_labeller, config.ray_labellers,
                            ray.cluster_resources().get("GPU", 0.0))
            namespace = f"unish-{uuid.uuid4().hex[:12]}"  # this run's actors only
            names = [f"labeller-{i}" for i in range(plan.labellers)]
            env = {k: v for k, v in {**forwarded_env(), "PREFECT_API_URL": _api_url()}.items() if v}
            actor = ray.remote(Labeller)
            self.labellers = [actor.options(name=n, namespace=namespace, max_restarts=LABELLER_RESTARTS,
                                            max_task_retries=LABELLER_RESTARTS, runtime_env={"env_vars": env},
                                            **plan.labeller)
                              .remote(stage_names, config.stage_params) for n in names]
            # fail here (a stage that cannot load) rather than in every video
            ray.get([a.chain.remote() for a in self.labellers])
            if names:
                env[LABELLERS_ENV] = json.dumps({"namespace": namespace, "names": names})
            # max_calls=0: a worker process is reused across videos (Ray's default retires GPU workers after one)
            self.video_options = {**plan.video, "max_retries": VIDEO_RETRIES, "max_calls": 0,
                                  "runtime_env": {"env_vars": env}}
            log.info("ray: %d labellers (%s each), video tasks %s", plan.labellers, plan.labeller, plan.video)
            return self

        def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
            with remote_options(**self.video_options):
                return super().submit(task, parameters, wait_for, dependencies)

        def __exit__(self, *exc_info: Any) -> None:
            import ray

            LAST_LABELLER_STATS.clear()
            for actor in self.labellers:
                try:
                    LAST_LABELLER_STATS.append(ray.get(actor.stats.remote(), timeout=30))
                except Exception as e:  # noqa: BLE001 - an actor lost with its node: nothing to report
                    log.warning("ray: a labeller did not report: %s", e)
                ray.kill(actor)
            self.labellers = []
            super().__exit__(*exc_info)

    return UnishRayTaskRunner()


def forwarded_env() -> dict[str, str]:
    """The driver's `UNISH_*` settings (the weights folder, fault injection in tests), for Ray tasks and actors:
    workers a cluster started get the environment of `ray start`, not the driver's."""
    return {k: v for k, v in os.environ.items() if k.startswith("UNISH_") and k != LABELLERS_ENV}


def _api_url() -> str:
    """The Prefect API the flow talks to (the embedded server's too: the video tasks report there). A cluster of
    several machines needs `PREFECT_API_URL` set to a server they can all reach."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.client is not None:
        return str(ctx.client.api_url).rstrip("/")
    return os.environ.get("PREFECT_API_URL", "")


def task_runner(config: Any) -> Any:
    """The task runner `config.runner` names."""
    if config.runner == "ray":
        return ray_task_runner(config)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.workers)
