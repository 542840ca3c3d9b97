"""The curation flow: manifest -> per-video chain (fetch, probe, segment, label stages, pack) -> index.

One task chain per video, at most `workers` videos at once. Every step is idempotent on disk, so a
rerun (after a crash or a SIGKILL) does no finished work again and ends with the same index and shards.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

import flows.prefect_env  # noqa: F401  (sets Prefect defaults before it is imported)
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from shards.index import INDEX_FILE, VIDEOS_FILE, rows_to_table, write_table_atomic
from shards.schema import INDEX_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_REJECTED, VIDEOS_SCHEMA
from flows.params import CurateConfig
from tasks import pipeline
from tasks.fetch import FetchError, Fetched, fetch_source
from tasks.manifest import ManifestRow, read_manifest
from tasks.probe import UnreadableVideo, VideoInfo
from tasks.stage import LabelStage, build_stage
from tasks.staging import read_json, write_json_atomic

WORK_DIR = "_work"
SHARD_DIR = "shards"

# Labelling stages are built once per process (weights load once) and used under a lock each,
# since model backends are not guaranteed thread-safe.
_STAGES: dict[str, tuple[LabelStage, threading.Lock]] = {}
_STAGES_LOCK = threading.Lock()


def get_stage(name: str, params: dict | None = None) -> tuple[LabelStage, threading.Lock]:
    key = f"{name}|{json.dumps(params or {}, sort_keys=True, default=str)}"
    with _STAGES_LOCK:
        if key not in _STAGES:
            stage = build_stage(name, **(params or {}))
            stage.setup()
            _STAGES[key] = (stage, threading.Lock())
        return _STAGES[key]


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, FetchError) and exc.transient


@task(name="fetch", cache_policy=NO_CACHE, retry_condition_fn=_is_transient)
def fetch_task(row: ManifestRow, downloads: str, config: CurateConfig) -> Fetched:
    return fetch_source(row, Path(downloads), config.section_pad_s, config.host_backoff_s, config.cookies, config.proxy)


@task(name="probe", cache_policy=NO_CACHE)
def probe_task(fetched: Fetched, workdir: str) -> VideoInfo:
    return pipeline.run_probe(fetched, Path(workdir))


@task(name="segment", cache_policy=NO_CACHE)
def segment_task(row: ManifestRow, fetched: Fetched, info: VideoInfo, workdir: str, config: CurateConfig) -> list[dict]:
    return pipeline.run_segment(row, fetched, info, Path(workdir), config.spine())


@task(name="label", cache_policy=NO_CACHE, task_run_name="label-{stage_name}")
def label_task(stage_name: str, workdir: str, windows: list[dict], fingerprint: str,
               params: dict | None = None) -> dict[str, int]:
    stage, lock = get_stage(stage_name, params)
    with lock:
        return pipeline.run_label_stage(stage, Path(workdir), windows, fingerprint)


@task(name="pack", cache_policy=NO_CACHE)
def pack_task(row: ManifestRow, workdir: str, windows: list[dict], families: list[str], shard_dir: str,
              config: CurateConfig, fingerprint: str) -> list[dict]:
    return pipeline.run_pack(row, Path(workdir), windows, families, Path(shard_dir), config.spine().shard_limits,
                             fingerprint)


@task(name="video", cache_policy=NO_CACHE, task_run_name="video-{row.source_id}-{row.span_tag}")
def video_task(row: ManifestRow, out: str, config: CurateConfig, stage_names: list[str]) -> dict:
    """The whole chain of one video; returns its video row and clip rows. Never raises for bad input:
    the error is recorded and the other videos go on."""
    out_dir = Path(out)
    workdir = pipeline.video_workdir(out_dir / WORK_DIR / "videos", row)
    stages = [get_stage(n, config.stage_params.get(n))[0] for n in stage_names]
    stage_fps = pipeline.stage_chain_fingerprints(stages)
    fingerprint = pipeline.chain_fingerprint(config.spine(), stage_fps)
    done = workdir / "video.json"
    if done.exists():  # finished in an earlier run with the same parameters
        saved = read_json(done)
        if saved.get("fingerprint") == fingerprint:
            return {"video": saved["video"], "clips": saved["clips"]}
    info: VideoInfo | None = None
    fetched: Fetched | None = None
    try:
        fetch = fetch_task.with_options(retries=config.fetch_retries, retry_delay_seconds=config.fetch_retry_delays_s)
        fetched = fetch(row, str(out_dir / WORK_DIR / "downloads"), config)
        info = probe_task(fetched, str(workdir))
        windows = segment_task(row, fetched, info, str(workdir), config)
        pipeline.reopen_stale_clips(workdir, windows, {s.name: fp for s, fp in zip(stages, stage_fps)})
        for name, stage_fp in zip(stage_names, stage_fps):
            label_task(name, str(workdir), windows, stage_fp, config.stage_params.get(name))
        families = [stage.name for stage in stages]
        clips = pack_task(row, str(workdir), windows, families, str(out_dir / SHARD_DIR), config, fingerprint)
    except (FetchError, UnreadableVideo, pipeline.SpanOutOfRange) as e:
        reason = getattr(e, "reason", "error")
        message = getattr(e, "message", str(e))
        return {"video": pipeline.video_row(row, STATUS_ERROR, reason, message, info, fetched.path if fetched else ""),
                "clips": []}
    except Exception as e:  # an unexpected failure of one video must not stop the others
        return {"video": pipeline.video_row(row, STATUS_ERROR, type(e).__name__, str(e), info,
                                            fetched.path if fetched else ""), "clips": []}
    if windows:
        vrow = pipeline.video_row(row, STATUS_OK, info=info, path=fetched.path, clip_rows=clips)
    else:
        message = f"no {config.window_seconds:g} s window fits the requested span"
        vrow = pipeline.video_row(row, STATUS_REJECTED, "too_short", message, info, fetched.path, clips)
    if not any(c["status"] == STATUS_ERROR for c in clips):  # a clip error is retried by the next run
        write_json_atomic(done, {"fingerprint": fingerprint, "video": vrow, "clips": clips})
    return {"video": vrow, "clips": clips}


def manifest_problem_rows(problems: list) -> list[dict]:
    return [
        {"source": p.source, "source_id": "", "row": p.row, "status": STATUS_ERROR, "reason": "manifest",
         "message": str(p)}
        for p in problems
    ]


def write_index(out_dir: Path, videos: list[dict], clips: list[dict]) -> None:
    videos = sorted(videos, key=lambda v: (v["row"], v["source_id"]))
    clips = sorted(clips, key=lambda c: (c["row"], c["start_s"], c["key"]))
    write_table_atomic(rows_to_table(clips, INDEX_SCHEMA), out_dir / INDEX_FILE)
    write_table_atomic(rows_to_table(videos, VIDEOS_SCHEMA), out_dir / VIDEOS_FILE)


ProgressHook = Callable[[dict], None]
_progress_hook: ProgressHook | None = None


def set_progress_hook(hook: ProgressHook | None) -> None:
    """The CLI's live display subscribes here (flow parameters must stay serialisable)."""
    global _progress_hook
    _progress_hook = hook


@flow(name="curate", log_prints=False, validate_parameters=True)
def curate_flow(manifest: str, out: str, config: CurateConfig = CurateConfig()) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    parsed = read_manifest(manifest)
    stage_names = config.stage_names()
    with _STAGES_LOCK:  # weights or inputs may have changed on disk since an earlier run in this process
        _STAGES.clear()
    for name in stage_names:  # fail fast (missing weights, unknown stage) before any video is touched
        get_stage(name, config.stage_params.get(name))
    videos = manifest_problem_rows(parsed.problems)
    clips: list[dict] = []
    if _progress_hook:
        _progress_hook({"event": "start", "videos": len(parsed.rows), "problems": len(parsed.problems)})
    def collect(fut) -> None:
        result = fut.result()
        videos.append(result["video"])
        clips.extend(result["clips"])
        if _progress_hook:
            _progress_hook({"event": "video", **result["video"],
                            "ok_clips": sum(c["status"] == STATUS_OK for c in result["clips"])})

    # At most `workers` videos in flight, whatever task runner the flow was started with (a deployment
    # calls this flow directly): submit more only as earlier ones finish.
    in_flight: list = []
    for r in parsed.rows:
        if len(in_flight) >= config.workers:
            done = next(as_completed(in_flight))
            in_flight.remove(done)
            collect(done)
        in_flight.append(video_task.submit(r, out, config, stage_names))
    for fut in as_completed(in_flight):
        collect(fut)
    write_index(out_dir, videos, clips)
    return {"videos": len(videos), "clips": len(clips), "ok": sum(c["status"] == STATUS_OK for c in clips)}


def run_curate(manifest: str | Path, out: str | Path, config: CurateConfig = CurateConfig()) -> dict:
    """Run the flow with `config.workers` videos at once (the task runner is a run-time choice)."""
    configured = curate_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.workers))
    return configured(str(manifest), str(out), config)
