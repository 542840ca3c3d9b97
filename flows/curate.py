"""The curation flow: manifest -> per-video chain (fetch, probe, segment, label stages, pack) -> index.

One task chain per video, at most `workers` videos at once, fed by a queue that puts transiently failed
downloads back with a delay instead of holding a worker (`flows/video_queue.py`). Every step is idempotent
on disk, so a rerun (after a crash or a SIGKILL) does no finished work again and ends with the same index
and shards; a finished video whose shards were damaged since is repacked. One run writes a folder at a
time (a lock), and the folder is checked for room and write access before any video is touched.
"""
from __future__ import annotations

import json
import queue as queue_mod
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import flows.prefect_env  # noqa: F401  (sets Prefect defaults before it is imported)
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from shards.atomic import is_storage_error, remove_temp_files, write_json_atomic
from shards.blocklist import Blocklist, read_blocklist, withdrawn_video_row, youtube_id_of
from shards.index import INDEX_FILE, VIDEOS_FILE, rows_to_table, write_table_if_changed
from shards.release import RUN_PARAMS_FILE
from shards.runfolder import check_writable, run_lock
from shards.schema import INDEX_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_REJECTED, VIDEOS_SCHEMA
from flows import runners
from flows.params import CurateConfig
from flows.runlog import handled_log, run_log
from flows.video_queue import QueuedVideo, VideoQueue
from tasks import pipeline
from tasks.fetch import ERROR_CLASSES, FetchError, Fetched, fetch_source
from tasks.manifest import ManifestRow, read_manifest
from tasks.probe import TruncatedVideo, UnreadableVideo, VideoInfo
from tasks.stage import LabelStage, build_stage, check_stage_weights
from tasks.staging import StagedClipDamaged, read_json

WORK_DIR = "_work"
SHARD_DIR = "shards"
UNINDEXED_DIR = "unindexed"  # under _work: shards no index row refers to any more (kept, not deleted)
VIDEO_MARKER = "video.json"

# Labelling stages are built once per process (weights load once) and used under a lock each,
# since model backends are not guaranteed thread-safe.
_STAGES: dict[str, tuple[LabelStage, threading.Lock]] = {}
_STAGES_LOCK = threading.Lock()


class StorageFailed(RuntimeError):
    """The output's disk is full, read-only or failing: the run stops; finished videos are kept."""


def get_stage(name: str, params: dict | None = None) -> tuple[LabelStage, threading.Lock]:
    key = f"{name}|{json.dumps(params or {}, sort_keys=True, default=str)}"
    with _STAGES_LOCK:
        if key not in _STAGES:
            stage = build_stage(name, **(params or {}))
            stage.setup()
            _STAGES[key] = (stage, threading.Lock())
        return _STAGES[key]


@task(name="fetch", cache_policy=NO_CACHE)
def fetch_task(row: ManifestRow, downloads: str, config: CurateConfig) -> Fetched:
    return fetch_source(row, Path(downloads), config.section_pad_s, config.fetch_timeout_s, config.cookies, config.proxy)


@task(name="probe", cache_policy=NO_CACHE)
def probe_task(fetched: Fetched, workdir: str) -> VideoInfo:
    return pipeline.run_probe(fetched, Path(workdir))


@task(name="segment", cache_policy=NO_CACHE)
def segment_task(row: ManifestRow, fetched: Fetched, info: VideoInfo, workdir: str, config: CurateConfig) -> list[dict]:
    return pipeline.run_segment(row, fetched, info, Path(workdir), config.spine())


def stage_chain(stage_names: list[str], stage_params: dict[str, dict], workdir: Path) -> tuple[list[str], list[str]]:
    """(label families, chain fingerprints) of the run's stages: from the run's Ray labellers when there are any
    (the models load there, not in every video task), else from this process's stages."""
    if stage_names and (remote := runners.remote_labellers()):
        return remote.chain(str(workdir))
    stages = [get_stage(n, stage_params.get(n))[0] for n in stage_names]
    return [s.name for s in stages], pipeline.stage_chain_fingerprints(stages)


@task(name="label", cache_policy=NO_CACHE, task_run_name="label-{stage_name}")
def label_task(stage_name: str, workdir: str, windows: list[dict], fingerprint: str,
               params: dict | None = None) -> dict[str, int]:
    if remote := runners.remote_labellers():
        return remote.label(stage_name, workdir, windows, fingerprint)
    stage, lock = get_stage(stage_name, params)
    with lock:
        return pipeline.run_label_stage(stage, Path(workdir), windows, fingerprint)


@task(name="pack", cache_policy=NO_CACHE)
def pack_task(row: ManifestRow, workdir: str, windows: list[dict], families: list[str], shard_dir: str,
              config: CurateConfig, fingerprint: str) -> list[dict]:
    return pipeline.run_pack(row, Path(workdir), windows, families, Path(shard_dir), config.spine().shard_limits,
                             fingerprint)


def finished_video(workdir: Path, shard_dir: Path, fingerprint: str, full_check: bool) -> tuple[dict | None, list[str]]:
    """(the saved result of a video finished with these parameters, or None; problems found in its shards,
    which are then forgotten so that the chain repacks them)."""
    done = workdir / VIDEO_MARKER
    try:
        saved = read_json(done)
    except (OSError, ValueError):  # absent, or damaged: the chain's own markers decide what to redo
        return None, []
    if saved.get("fingerprint") != fingerprint:
        return None, []
    problems = pipeline.shards_changed(workdir, shard_dir, saved["clips"], full=full_check)
    if not problems:
        return saved, []
    done.unlink()
    pipeline.forget_packed(workdir)
    return None, [str(p) for p in problems]


# Error reasons a rerun cannot clear: the input is bad, or gone for good. Every other error (transient download
# classes after their retries, `fetch_failed`, a download cut short, damaged staging, clip errors, exceptions unish
# does not classify) is redone by a rerun, which may clear it; the exit status tells them apart (flows/exitcodes.py).
PERMANENT_REASONS = frozenset({"manifest", "unreadable", "span_out_of_range", "missing_file", "not_a_file"} |
                              {c.reason for c in ERROR_CLASSES if not c.transient})


def error_entry(vrow: dict, stage: str, retry_may_help: bool, key: str = "") -> dict:
    """One handled error as the command line reports it: video (or clip), stage, class, message."""
    return {"source_id": vrow.get("source_id") or "", "source": vrow.get("source") or "", "row": vrow.get("row"),
            "key": key, "stage": stage, "reason": vrow.get("reason") or "", "message": vrow.get("message") or "",
            "retry_may_help": retry_may_help}


def clip_error_entries(vrow: dict, clips: list[dict]) -> list[dict]:
    """The clip errors of a video (a labelling stage failed on a clip; the message starts with the stage's family)."""
    out = []
    for c in clips:
        if c["status"] == STATUS_ERROR:
            stage = "label:" + (c.get("message") or "").partition(":")[0]
            out.append(error_entry({**vrow, "reason": c["reason"], "message": c["message"]}, stage, True, c["key"]))
    return out


@task(name="video", cache_policy=NO_CACHE, task_run_name="video-{row.source_id}-{row.span_tag}")
def video_task(row: ManifestRow, out: str, config: CurateConfig, stage_names: list[str]) -> dict:
    """The whole chain of one video; returns its video row and clip rows, plus `retry` (a transient
    download error: the queue tries again later), `fatal` (the output's storage failed) or `repaired`
    (damaged shards of a finished video, rewritten), and `errors` (each handled error: stage, class, message,
    whether a rerun may clear it; its traceback goes to the run's log). Never raises for bad input: the error
    is recorded and the other videos go on."""
    out_dir = Path(out)
    shard_dir = out_dir / SHARD_DIR
    workdir = pipeline.video_workdir(out_dir / WORK_DIR / "videos", row)
    families, stage_fps = stage_chain(stage_names, config.stage_params, workdir)
    fingerprint = pipeline.chain_fingerprint(config.spine(), stage_fps)
    saved, repaired = finished_video(workdir, shard_dir, fingerprint, config.verify_shards)
    if saved is not None:  # finished in an earlier run with the same parameters, shards intact
        return {"video": saved["video"], "clips": saved["clips"], "skipped": True}
    info: VideoInfo | None = None
    fetched: Fetched | None = None
    stage = "fetch"

    def failed(reason: str, message: str, retry_may_help: bool | None = None, **extra: Any) -> dict:
        """The video's error row; called inside the `except` block, so the log gets the traceback."""
        vrow = pipeline.video_row(row, STATUS_ERROR, reason, message, info, fetched.path if fetched else "")
        may_help = reason not in PERMANENT_REASONS if retry_may_help is None else retry_may_help
        handled_log.error("%s (manifest row %s, %s) %s: %s: %s", row.source_id, row.row, row.recorded_source, stage,
                          reason, message, exc_info=True)
        return {"video": vrow, "clips": [], "repaired": repaired, "errors": [error_entry(vrow, stage, may_help)],
                **extra}

    try:
        fetched = fetch_task(row, str(out_dir / WORK_DIR / "downloads"), config)
        stage = "probe"
        info = probe_task(fetched, str(workdir))
        stage = "segment"
        windows = segment_task(row, fetched, info, str(workdir), config)
        pipeline.reopen_stale_clips(workdir, windows, dict(zip(families, stage_fps)))
        for name, stage_fp in zip(stage_names, stage_fps):
            stage = f"label:{name}"
            label_task(name, str(workdir), windows, stage_fp, config.stage_params.get(name))
        stage = "pack"
        clips = pack_task(row, str(workdir), windows, families, str(shard_dir), config, fingerprint)
    except FetchError as e:
        if e.transient:
            return failed(e.reason, e.message, True, retry={"host": e.host, "message": e.message})
        return failed(e.reason, e.message)
    except UnreadableVideo as e:
        cut_download = isinstance(e, TruncatedVideo) and fetched is not None and row.kind != "path"
        if cut_download:
            Path(fetched.path).unlink(missing_ok=True)  # a cut download: fetch it again on the next run
        return failed(e.reason, e.message, True if cut_download else None)
    except pipeline.SpanOutOfRange as e:
        return failed(e.reason, str(e))
    except StagedClipDamaged as e:  # staged again by the next run
        return failed("staging_damaged", str(e))
    except Exception as e:  # an unexpected failure of one video must not stop the others
        if is_storage_error(e, out_dir):
            return failed("storage", str(e), fatal=f"{type(e).__name__}: {e}")
        return failed(type(e).__name__, str(e))
    if windows:
        vrow = pipeline.video_row(row, STATUS_OK, info=info, path=fetched.path, clip_rows=clips)
    else:
        message = f"no {config.window_seconds:g} s window fits the requested span"
        vrow = pipeline.video_row(row, STATUS_REJECTED, "too_short", message, info, fetched.path, clips)
    if not any(c["status"] == STATUS_ERROR for c in clips):  # a clip error is retried by the next run
        write_json_atomic(workdir / VIDEO_MARKER, {"fingerprint": fingerprint, "video": vrow, "clips": clips})
    return {"video": vrow, "clips": clips, "repaired": repaired, "errors": clip_error_entries(vrow, clips)}


def lost_video(row: ManifestRow, error: Exception) -> dict:
    """The error row of a video whose task never returned (its worker died): `worker_lost`, a rerun redoes it."""
    vrow = pipeline.video_row(row, STATUS_ERROR, "worker_lost", f"{type(error).__name__}: {error}")
    handled_log.error("%s (manifest row %s): worker lost: %s", row.source_id, row.row, error)
    return {"video": vrow, "clips": [], "errors": [error_entry(vrow, "worker", True)]}


def manifest_problem_rows(problems: list, blocklist: Blocklist = Blocklist()) -> list[dict]:
    """A row per bad manifest row; one that names a withdrawn video is recorded as withdrawn, without its source."""
    return [
        withdrawn_video_row(p.row) if p.source and blocklist.blocks(p.source, youtube_id_of(p.source)) else
        {"source": p.source, "source_id": "", "row": p.row, "status": STATUS_ERROR, "reason": "manifest",
         "message": str(p)}
        for p in problems
    ]


def is_withdrawn(row: ManifestRow, blocklist: Blocklist) -> bool:
    """Whether a takedown withdrew this row's video (by its id, its source as given or resolved, or its YouTube ID)."""
    return blocklist.blocks(row.source_id, row.recorded_source, row.source, youtube_id_of(row.recorded_source))


# Parameters that decide what a run writes (recorded in curate.json for the dataset card); the others
# (workers, retries, time-outs, cookies, proxy, display) only decide how it gets there.
RECORDED_PARAMS = ("profile", "stage_params", "window_seconds", "window_frames", "window_fps", "stride_s",
                   "shot_threshold", "min_scene_len_s", "jpeg_quality", "shard_max_mb", "shard_max_samples",
                   "section_pad_s", "max_frame_offset_s")
RECORDED_SOFTWARE = ("unish", "av", "opencv-python-headless", "opencv-python", "scenedetect-headless", "numpy",
                     "webdataset", "pyarrow", "yt-dlp")


def effective_config(config: CurateConfig) -> dict[str, Any]:
    """Every setting the run used, as `unish curate --config` reads it back (the `curate` table of curate.json):
    not the display switch, and a proxy without its user and password."""
    settings = config.model_dump(exclude={"progress"})
    if settings.get("proxy"):
        settings["proxy"] = _without_credentials(settings["proxy"])
    return settings


def _without_credentials(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def record_parameters(out_dir: Path, config: CurateConfig, stage_names: list[str]) -> bool:
    """Write curate.json if it changed (returns whether it wrote): the parameters that decide what the run wrote
    (`params`, for the dataset card), the software versions, and the run's effective configuration (`curate`, a
    config file for `unish curate --config`)."""
    import importlib.metadata

    software = {}
    for dist in RECORDED_SOFTWARE:
        try:
            software[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    record = {"params": {**config.model_dump(include=set(RECORDED_PARAMS)), "stages": stage_names,
                         "spine_version": pipeline.SPINE_VERSION},
              "software": software,
              "curate": effective_config(config)}
    path = out_dir / RUN_PARAMS_FILE
    try:
        if read_json(path) == record:
            return False
    except (OSError, ValueError):
        pass
    write_json_atomic(path, record)
    return True


def write_index(out_dir: Path, videos: list[dict], clips: list[dict]) -> bool:
    """Write index.parquet and videos.parquet, each only if it changed; returns whether either was written."""
    videos = sorted(videos, key=lambda v: (v["row"], v["source_id"]))
    clips = sorted(clips, key=lambda c: (c["row"], c["start_s"], c["key"]))
    twice = [k for k, n in Counter(c["key"] for c in clips if c["key"]).items() if n > 1]
    if twice:  # the manifest's checks keep spans of one id apart; this is the last line of defence
        raise ValueError(f"clip keys occur more than once: {', '.join(sorted(twice)[:5])}")
    wrote_index = write_table_if_changed(rows_to_table(clips, INDEX_SCHEMA), out_dir / INDEX_FILE)
    wrote_videos = write_table_if_changed(rows_to_table(videos, VIDEOS_SCHEMA), out_dir / VIDEOS_FILE)
    return wrote_index or wrote_videos


def set_aside_unindexed_shards(out_dir: Path, clips: list[dict]) -> list[str]:
    """Move shards no index row refers to (a video that left the manifest or failed after a parameter
    change) from shards/ to _work/unindexed/: shards/ then holds exactly the indexed clips."""
    referenced = {c["shard"] for c in clips if c.get("shard")}
    shard_dir = out_dir / SHARD_DIR
    moved = []
    for path in sorted(shard_dir.glob("*.tar")) if shard_dir.is_dir() else []:
        if path.name not in referenced:
            target = out_dir / WORK_DIR / UNINDEXED_DIR / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            moved.append(path.name)
    return moved


ProgressHook = Callable[[dict], None]
_progress_hook: ProgressHook | None = None


def set_progress_hook(hook: ProgressHook | None) -> None:
    """The CLI's live display subscribes here (flow parameters must stay serialisable)."""
    global _progress_hook
    _progress_hook = hook


def _emit(event: dict) -> None:
    if _progress_hook:
        _progress_hook(event)


def first_shard_bytes(config: CurateConfig) -> int:
    """Room a run needs before it starts: one shard at its size bound, capped at what the clips of one
    video can plausibly take (a 5 s clip is at most a few MB at the model's size)."""
    return int(min(config.shard_max_mb * 2**20, config.shard_max_samples * 8 * 2**20))


def _flow_run_name() -> str:
    """`curate-<run folder>`, for every run of the flow (the command line's and a deployment's alike)."""
    from prefect.runtime import flow_run

    from flows.flowrun import run_name

    return run_name("curate", flow_run.parameters.get("out") or "run")


@flow(name="curate", log_prints=False, validate_parameters=True, flow_run_name=_flow_run_name)
def curate_flow(manifest: str, out: str, config: CurateConfig = CurateConfig()) -> dict:
    out_dir = Path(out)
    check_writable(out_dir, first_shard_bytes(config))
    with run_lock(out_dir, f"unish curate {manifest}") as lock, run_log(out_dir, "curate"):
        return _curate_locked(manifest, out_dir, config, lock.took_over.describe() if lock.took_over else "")


def _curate_locked(manifest: str, out_dir: Path, config: CurateConfig, took_over: str) -> dict:
    logger = get_run_logger()
    if took_over:
        logger.warning("%s: taking over from %s, which ended without finishing", out_dir, took_over)
    remove_temp_files(out_dir / SHARD_DIR)  # we hold the lock: every temporary file is a dead writer's
    parsed = read_manifest(manifest)
    blocklist = read_blocklist(out_dir)
    withdrawn = [r for r in parsed.rows if is_withdrawn(r, blocklist)]
    rows = [r for r in parsed.rows if not is_withdrawn(r, blocklist)]
    if withdrawn:
        logger.warning("%d manifest rows name videos withdrawn by a takedown: not fetched (rejected:withdrawn)",
                       len(withdrawn))
    stage_names = config.stage_names()
    with _STAGES_LOCK:  # weights or inputs may have changed on disk since an earlier run in this process
        _STAGES.clear()
    check_stage_weights(stage_names, config.stage_params)  # every missing weights file at once, before any work
    for name in stage_names:  # fail fast (unknown stage, a broken file) before any video is touched
        get_stage(name, config.stage_params.get(name))
    videos = manifest_problem_rows(parsed.problems, blocklist) + [withdrawn_video_row(r.row) for r in withdrawn]
    errors = [error_entry(v, "manifest", False) for v in videos if v["status"] == STATUS_ERROR]
    clips: list[dict] = []
    summary = Counter()
    fatal = ""
    _emit({"event": "start", "videos": len(rows), "problems": len(parsed.problems)})

    queue = VideoQueue(rows, config.fetch_retry_delays_s, config.fetch_retries, config.host_backoff_s)
    finished: queue_mod.Queue = queue_mod.Queue()  # futures, as they finish (Prefect calls back)
    in_flight: dict[Any, QueuedVideo] = {}
    while (len(queue) and not fatal) or in_flight:
        while not fatal and len(in_flight) < config.workers and (item := queue.pop_ready()) is not None:
            future = video_task.submit(item.row, str(out_dir), config, stage_names)
            in_flight[future] = item
            future.add_done_callback(finished.put)
        wait = queue.wait_s() if not fatal else None
        if not in_flight:
            time.sleep(wait or 0.0)
            continue
        try:
            future = finished.get(timeout=wait)
        except queue_mod.Empty:
            continue  # a delayed retry (or a backed-off host) is ready: submit it
        item = in_flight.pop(future)
        try:
            result = future.result()
        except Exception as e:  # the process running it died (a Ray worker or node lost): a rerun redoes the video
            result = lost_video(item.row, e)
        for problem in result.get("repaired", []):
            logger.warning("%s: repacking, shard damaged: %s", item.row.source_id, problem)
        summary["repaired"] += bool(result.get("repaired"))
        retry = result.get("retry")
        if retry and queue.retry(item, retry["message"]):
            summary["retried"] += 1
            _emit({"event": "retry", **result["video"], "attempt": item.attempts})
            continue
        if retry:
            result["video"]["message"] += f" (gave up after {item.attempts + 1} attempts; a rerun tries again)"
            for e in result.get("errors", []):
                e["message"] = result["video"]["message"]
            summary["transient_left"] += 1
        if result.get("fatal") and not fatal:
            fatal = result["fatal"]
        summary["skipped"] += bool(result.get("skipped"))
        errors.extend(result.get("errors", []))
        videos.append(result["video"])
        clips.extend(result["clips"])
        _emit({"event": "video", **result["video"], "ok_clips": sum(c["status"] == STATUS_OK for c in result["clips"]),
               "skipped": bool(result.get("skipped"))})
    if fatal:
        left = queue.drop_all()
        raise StorageFailed(f"stopped: writing to {out_dir} failed ({fatal}); {len(videos)} videos are finished "
                            f"and kept, {len(left)} were not started. Free space (or make the folder writable) "
                            f"and run again to finish: finished work is not redone")
    wrote = write_index(out_dir, videos, clips)
    record_parameters(out_dir, config, stage_names)
    moved = set_aside_unindexed_shards(out_dir, clips)
    for name in moved:
        logger.warning("%s: no index row refers to it any more; moved to %s", name, Path(WORK_DIR) / UNINDEXED_DIR)
    return {"videos": len(videos), "clips": len(clips), "ok": sum(c["status"] == STATUS_OK for c in clips),
            "skipped": summary["skipped"], "retried": summary["retried"], "repaired": summary["repaired"],
            "transient_left": summary["transient_left"], "tables_written": wrote, "set_aside": moved,
            "withdrawn": len(withdrawn), "queued": len(rows), "errors": sorted(errors, key=lambda e: (e["row"] or 0, e["key"]))}


def configured_flow(config: CurateConfig) -> Any:
    """The flow on `config.runner`'s task runner (`flows/runners.py`), `config.workers` videos at once."""
    return curate_flow.with_options(task_runner=runners.task_runner(config))


def run_curate(manifest: str | Path, out: str | Path, config: CurateConfig = CurateConfig()) -> dict:
    """Run the flow, named after the run folder (`curate-<folder>`); returns its summary."""
    from flows.flowrun import run_name

    configured = configured_flow(config).with_options(flow_run_name=run_name("curate", out))
    return configured(str(manifest), str(out), config)
