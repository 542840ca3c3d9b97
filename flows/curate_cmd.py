"""`unish curate MANIFEST --out RUN`: the curation flow from the command line.

Before any video is touched: the settings (`--config FILE`, flags on top), the manifest, the stages, the output
folder (writable, room, not locked) and every weights file the stages need (all missing ones listed at once).
Then the flow runs, named `curate-<run folder>`; handled errors reach the terminal as one line each (their
tracebacks go to `RUN/logs/curate-<time>.log`), and the summary says what a rerun found already done, whether the
tables were written, where the log and the effective configuration (`RUN/curate.json`) are, and the flow run.
The exit status follows `flows/exitcodes.py`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from flows import exitcodes
from flows.cmdline import fail, print_errors, say, say_error, settings_from, validation_message

# command-line parameter -> CurateConfig field (the config file's keys are the fields)
FLAGS = {
    "profile": "profile", "stages": "stages", "stage_param": "stage_params", "workers": "workers",
    "window_seconds": "window_seconds", "window_frames": "window_frames", "window_fps": "window_fps",
    "stride": "stride_s", "shard_max_mb": "shard_max_mb", "fetch_retries": "fetch_retries",
    "retry_delay": "fetch_retry_delays_s", "host_backoff": "host_backoff_s", "fetch_timeout": "fetch_timeout_s",
    "max_frame_offset": "max_frame_offset_s", "verify_shards": "verify_shards", "cookies": "cookies",
    "proxy": "proxy", "progress": "progress", "runner": "runner", "ray_address": "ray_address",
    "ray_gpus_per_labeller": "ray_gpus_per_labeller", "ray_labellers": "ray_labellers",
}


def _merge_stage_params(from_file: Any, from_flags: dict) -> dict:
    merged = {k: dict(v) for k, v in (from_file or {}).items()}
    for stage, params in from_flags.items():
        merged.setdefault(stage, {}).update(params)
    return merged


def curate(
    ctx: typer.Context,
    manifest: Path = typer.Argument(..., help="CSV, JSONL or Parquet with source[, start, end, id]"),
    out: str = typer.Option(..., "--out", help="output folder (shards/, index.parquet, videos.parquet), or an fsspec "
                            "URL (s3://bucket/run): the run works in a local replica and publishes there"),
    work: Optional[Path] = typer.Option(None, "--work", help="with a URL --out: the local folder the run works in "
                                        "(staging, markers, lock; default: the URL's replica in $UNISH_STORE_CACHE)"),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="TOML or YAML file of settings: its `curate` table, or the whole file; keys as in "
        "curate.json's `curate` (shot_threshold, jpeg_quality, shard_max_samples, host_backoff_s, ...); flags "
        "given here win"),
    profile: str = typer.Option("none", help="labelling profile: none, lite or paper"),
    stages: Optional[str] = typer.Option(None, help="comma-separated labelling stages (overrides --profile)"),
    stage_param: list[str] = typer.Option([], "--stage-param", help="STAGE.KEY=VALUE (JSON value), repeatable"),
    workers: int = typer.Option(2, min=1, help="videos processed at once"),
    window_seconds: float = typer.Option(5.0, help="clip window length"),
    window_frames: int = typer.Option(30, help="frames per window"),
    window_fps: float = typer.Option(6.0, help="frames per second inside a window"),
    stride: Optional[float] = typer.Option(None, help="seconds between window starts (default: back to back)"),
    shard_max_mb: float = typer.Option(512.0, help="shard size bound"),
    fetch_retries: int = typer.Option(3, help="retries of a transient download error (queued: others go on)"),
    retry_delay: list[float] = typer.Option([10.0, 60.0, 300.0], help="seconds before each retry (last repeats)"),
    host_backoff: float = typer.Option(30.0, help="seconds a host:port rests after a transient error there"),
    fetch_timeout: float = typer.Option(20.0, help="socket time-out of a download, seconds"),
    max_frame_offset: Optional[float] = typer.Option(
        None, help="farthest a sampled frame may be from its time, seconds (default: half the sample interval)"),
    verify_shards: bool = typer.Option(False, help="check the digests of every finished shard, not only of "
                                       "files whose size or time changed"),
    cookies: Optional[str] = typer.Option(None, help="cookies.txt for yt-dlp (only if you configure it)"),
    proxy: Optional[str] = typer.Option(None, help="proxy URL for yt-dlp"),
    progress: bool = typer.Option(True, help="live progress display"),
    runner: str = typer.Option("local", help="where videos run: local (threads here) or ray (a Ray cluster; see "
                               "README, Scale out)"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (auto: the one `ray start` began on "
                                              "this machine); default a temporary local cluster"),
    ray_gpus_per_labeller: float = typer.Option(1.0, help="GPUs each Ray labeller asks for (GPU stages only)"),
    ray_labellers: Optional[int] = typer.Option(None, help="Ray labeller actors (default: one per "
                                                "--ray-gpus-per-labeller GPUs; CPU stages run in the video tasks)"),
    strict: bool = typer.Option(False, "--strict", help="exit non-zero on any row error, even one a rerun cannot "
                                "clear (a bad manifest row, a 404, an unreadable file)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary (counts, errors, log, flow run, exit "
                                 "status) as one JSON object instead of the funnel table"),
) -> None:
    """Curate a manifest into WebDataset shards with a Parquet index.

    Exit status: 0 every row ok, rejected by a rule, or permanently unavailable; 1 the run failed (or --strict and
    a row error); 2 bad arguments; 3 rows left with errors a rerun may clear (transient download errors after
    their retries, errors unish does not classify)."""
    from flows.params import CurateConfig, parse_stage_params

    settings, given = settings_from(
        ctx, config_file, "curate", CurateConfig.model_fields, FLAGS,
        convert={"stages": lambda v: v.split(",") if v else None, "stage_params": parse_stage_params},
        merge={"stage_params": _merge_stage_params})
    if "profile" in given and "stages" not in given:
        settings.pop("stages", None)  # --profile on the command line replaces the file's explicit stages
    try:
        config = CurateConfig(**settings)
    except Exception as e:  # pydantic.ValidationError: a wrong type or value, in the file or a flag
        raise fail(f"bad curate settings: {validation_message(e)}", exitcodes.USAGE) from None
    if not manifest.is_file():
        raise fail(f"manifest {manifest} does not exist or is not a file", exitcodes.USAGE)
    try:
        stage_names = config.stage_names()
    except (ValueError, KeyError) as e:
        raise fail(str(e).strip("'\""), exitcodes.USAGE) from None
    from flows.store_cmd import open_target, publish

    out_dir, url = open_target(out, work)  # a URL: its local replica, published when the run is done
    _refuse_unless_writable(out_dir, config)
    _refuse_missing_weights(stage_names, config)
    summary, run = _run(manifest, out_dir, config, strict)
    publish(out_dir, url, quiet=as_json)
    _report(summary, run, out_dir, as_json)
    raise typer.Exit(summary["status"])


def _refuse_unless_writable(out: Path, config: Any) -> None:
    """Fail at once (before the flow's slow start) if the folder is being written, not writable or full."""
    from flows.curate import first_shard_bytes
    from shards.runfolder import NotEnoughSpace, OutputNotWritable, RunLocked, check_unlocked, check_writable

    try:
        check_writable(out, first_shard_bytes(config))
        check_unlocked(out)
    except (RunLocked, OutputNotWritable, NotEnoughSpace) as e:
        raise fail(str(e)) from None


def _refuse_missing_weights(stage_names: list[str], config: Any) -> None:
    """Every weights file the stages will load, checked before Prefect starts; all missing ones listed at once."""
    from tasks.stage import check_stage_weights
    from tasks.weights import WeightsMissing

    try:
        check_stage_weights(stage_names, config.stage_params)
    except WeightsMissing as e:
        raise fail(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:  # an unknown stage or stage parameter
        raise fail(str(e).strip("'\""), exitcodes.USAGE) from None


def _run(manifest: Path, out: Path, config: Any, strict: bool) -> tuple[dict, Any]:
    """Run the flow; returns its summary (with `log`, `flow_run` and the exit `status`) and the flow run."""
    from flows.curate import StorageFailed, configured_flow, set_progress_hook
    from flows.flowrun import FlowRunFailed, call_flow, run_name
    from flows.runlog import quiet_handled_failures, run_log
    from shards.runfolder import NotEnoughSpace, OutputNotWritable, RunLocked
    from tasks.weights import WeightsMissing

    flow = configured_flow(config)
    args = (str(manifest), str(out), config)
    with run_log(out, "curate") as log, quiet_handled_failures():
        try:
            if config.progress:
                summary, run = _with_progress(lambda: call_flow(flow, run_name("curate", out), *args))
            else:
                set_progress_hook(None)
                summary, run = call_flow(flow, run_name("curate", out), *args)
        except FlowRunFailed as f:
            e = f.error
            known = (RunLocked, OutputNotWritable, NotEnoughSpace, StorageFailed, WeightsMissing)
            say_error(str(e) if isinstance(e, known) else f"the run failed: {type(e).__name__}: {e}")
            if log.exists():
                say(f"log: {log}")
            say(f.run.describe())
            raise typer.Exit(exitcodes.FAILED) from None
    retryable = sum(e["retry_may_help"] for e in summary["errors"])
    status = exitcodes.run_status(False, retryable, len(summary["errors"]) - retryable, strict)
    return {**summary, "log": str(log) if log.exists() else None, "status": status,
            "flow_run": {"id": run.id, "name": run.name, "ui_url": run.ui_url}}, run


def _with_progress(call: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.cmdline import err
    from flows.curate import set_progress_hook

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[last]}"), console=err, transient=False) as bar:
        task_id = bar.add_task("videos", total=None, last="")

        def hook(event: dict) -> None:
            if event["event"] == "start":
                bar.update(task_id, total=event["videos"])
            else:
                bar.update(task_id, advance=1, last=f"{event['source_id'] or event['source']}: "
                           f"{event['status']} {event.get('reason') or ''} ({event.get('ok_clips', 0)} clips)")

        set_progress_hook(hook)
        try:
            return call()
        finally:
            set_progress_hook(None)


def done_line(summary: dict) -> str:
    """What a rerun found already done: `12 of 12 videos already done, nothing to do`."""
    queued, skipped = summary["queued"], summary["skipped"]
    if queued and skipped == queued:
        return f"{skipped} of {queued} videos already done, nothing to do"
    if skipped:
        return f"{skipped} of {queued} videos already done; {queued - skipped} processed now"
    return f"{queued} videos processed"


def _report(summary: dict, run: Any, out: Path, as_json: bool) -> None:
    from rich.console import Console

    from flows.report import print_funnel
    from shards.index import compute_funnel, read_index
    from shards.release import RUN_PARAMS_FILE

    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True, default=str))
    else:
        print_funnel(compute_funnel(*read_index(out)), Console())
    print_errors(summary["errors"])
    say(done_line(summary) + "; index.parquet and videos.parquet "
        + ("written" if summary["tables_written"] else "unchanged"))
    say(f"configuration: {out / RUN_PARAMS_FILE}")
    if summary["log"]:
        say(f"log: {summary['log']} (full tracebacks of the errors above)")
    say(run.describe())
    retryable = sum(e["retry_may_help"] for e in summary["errors"])
    n = len(summary["errors"])
    if summary["status"] == exitcodes.RETRY:
        say(f"exit {summary['status']}: {retryable} of {n} errors may clear on a rerun (it redoes only those rows)")
    elif summary["status"] == exitcodes.FAILED:
        say(f"exit {summary['status']}: --strict and {n} row errors")
    elif n:
        say(f"exit 0: {n} rows failed for good (bad input or permanently unavailable; --strict makes this 1)")
