"""The `unish` command line."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="unish: curate video into training shards, and run UniSH.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True)


@app.command()
def curate(
    manifest: Path = typer.Argument(..., help="CSV, JSONL or Parquet with source[, start, end, id]"),
    out: Path = typer.Option(..., "--out", help="output folder (shards/, index.parquet, videos.parquet)"),
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
) -> None:
    """Curate a manifest into WebDataset shards with a Parquet index."""
    from flows.curate import StorageFailed, run_curate, set_progress_hook
    from flows.params import CurateConfig, parse_stage_params
    from flows.report import print_funnel
    from shards.index import compute_funnel, read_index
    from shards.runfolder import NotEnoughSpace, OutputNotWritable, RunLocked

    try:
        params = parse_stage_params(stage_param)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    config = CurateConfig(
        profile=profile, stages=stages.split(",") if stages else None, workers=workers,
        stage_params=params,
        window_seconds=window_seconds, window_frames=window_frames, window_fps=window_fps, stride_s=stride,
        shard_max_mb=shard_max_mb, fetch_retries=fetch_retries, fetch_retry_delays_s=retry_delay,
        host_backoff_s=host_backoff, fetch_timeout_s=fetch_timeout, max_frame_offset_s=max_frame_offset,
        verify_shards=verify_shards, cookies=cookies, proxy=proxy, progress=progress,
    )
    if not manifest.is_file():
        console.print(f"[red]manifest {manifest} does not exist or is not a file[/red]")
        raise typer.Exit(2)
    try:
        config.stage_names()
    except (ValueError, KeyError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    _refuse_unless_writable(out, config)
    try:
        if progress:
            _run_with_progress(manifest, out, config)
        else:
            set_progress_hook(None)
            run_curate(manifest, out, config)
    except (RunLocked, OutputNotWritable, NotEnoughSpace, StorageFailed) as e:
        _say_error(str(e))
        raise typer.Exit(1) from None
    index, videos = read_index(out)
    print_funnel(compute_funnel(index, videos), Console())
    problems = [v for v in videos.to_pylist() if v["status"] == "error"]
    for v in problems:
        console.print(f"[yellow]{v['reason']}[/yellow] row {v['row']} {v['source']}: {v['message']}")


def _say_error(text: str) -> None:
    """One plain line on stderr: no markup, no wrapping inside paths (scripts read the last lines)."""
    console.print(f"error: {text}", style="red", markup=False, highlight=False, soft_wrap=True)


def _refuse_unless_writable(out: Path, config) -> None:
    """Fail at once (before the flow's slow start) if the folder is being written, not writable or full."""
    from flows.curate import first_shard_bytes
    from shards.runfolder import NotEnoughSpace, OutputNotWritable, RunLocked, check_unlocked, check_writable

    try:
        check_writable(out, first_shard_bytes(config))
        check_unlocked(out)
    except (RunLocked, OutputNotWritable, NotEnoughSpace) as e:
        _say_error(str(e))
        raise typer.Exit(1) from None


def _run_with_progress(manifest: Path, out: Path, config) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.curate import run_curate, set_progress_hook

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[last]}"), console=console, transient=False) as bar:
        task_id = bar.add_task("videos", total=None, last="")

        def hook(event: dict) -> None:
            if event["event"] == "start":
                bar.update(task_id, total=event["videos"])
            else:
                bar.update(task_id, advance=1, last=f"{event['source_id'] or event['source']}: "
                           f"{event['status']} {event.get('reason') or ''} ({event.get('ok_clips', 0)} clips)")

        set_progress_hook(hook)
        try:
            run_curate(manifest, out, config)
        finally:
            set_progress_hook(None)


@app.command()
def inspect(
    out: Path = typer.Argument(..., help="a curated output folder"),
    samples: int = typer.Option(3, help="clips to read back through the shard reader"),
    as_json: bool = typer.Option(False, "--json", help="print the funnel and the clips read back as JSON"),
) -> None:
    """Print the funnel from the index and read a few clips back from the shards."""
    from flows.report import print_funnel
    from shards.index import compute_funnel, read_index
    from shards.reader import iter_clips

    try:
        index, videos = read_index(out)
    except FileNotFoundError as e:
        _say_error(str(e))
        raise typer.Exit(2) from None
    funnel = compute_funnel(index, videos)
    ok = [r for r in index.to_pylist() if r["status"] == "ok"]
    shards = sorted({r["shard"] for r in ok})
    read_back = []
    for clip in itertools.islice(iter_clips([str(Path(out) / "shards" / s) for s in shards]), samples):
        read_back.append({"key": clip.key, "frames": int(clip.frames.shape[0]), "width": int(clip.frames.shape[2]),
                          "height": int(clip.frames.shape[1]), "labels": sorted(clip.labels),
                          "start_s": clip.meta["start_s"], "end_s": clip.meta["end_s"]})
    if as_json:
        counts = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(funnel).items()}
        typer.echo(json.dumps({"funnel": counts, "read_back": read_back}, sort_keys=True))
    else:
        print_funnel(funnel, Console())
        table = Table(title="clips read back", header_style="bold")
        for col in ("key", "frames", "size", "labels", "seconds"):
            table.add_column(col, overflow="fold")
        for c in read_back:
            table.add_row(c["key"], str(c["frames"]), f"{c['width']}x{c['height']}", ",".join(c["labels"]) or "-",
                          f"{c['start_s']:.2f}-{c['end_s']:.2f}")
        Console().print(table)
    if ok and not read_back:
        console.print("[red]the index lists clips but none could be read back[/red]")
        raise typer.Exit(1)


@app.command()
def verify(
    out: Path = typer.Argument(..., help="a curated output folder"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Check every indexed clip of a run: present, complete and intact (members and sha256 as indexed), and
    no sample outside the index. Says what a rerun of `unish curate` would repair. Exit 0 when intact, 1 when not."""
    from flows.repair import repair_plan
    from shards.verify import verify_run

    try:
        report = verify_run(out)
    except FileNotFoundError as e:
        _say_error(str(e))
        raise typer.Exit(2) from None
    plan = repair_plan(out, report)
    if as_json:
        typer.echo(json.dumps({
            "run": str(out), "ok": report.ok, "shards_checked": report.shards_checked,
            "clips_checked": report.clips_checked, "clips_ok": report.clips_ok, "bytes_read": report.bytes_read,
            "problems": [vars(p) for p in report.problems], "repair": [vars(r) for r in plan],
        }, sort_keys=True))
    else:
        out_console = Console()
        out_console.print(f"checked {report.clips_checked} clips in {report.shards_checked} shards "
                          f"({report.bytes_read / 1e6:,.1f} MB): {report.clips_ok} intact", highlight=False)
        if report.problems:
            table = Table(title="problems", header_style="bold")
            for col in ("kind", "shard", "clip", "detail"):
                table.add_column(col, overflow="fold")
            for p in report.problems:
                table.add_row(p.kind, p.shard, p.key or "-", p.detail)
            out_console.print(table)
        for r in plan:
            out_console.print(f"repair: {r.describe()}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if report.ok else 1)


def _mount_subcommands() -> None:
    from flows.eval_cmd import eval_app
    from flows.infer_cmd import infer
    from flows.relabel import label_versions, relabel
    from flows.weights_cmd import weights_app

    app.add_typer(eval_app, name="eval")
    app.add_typer(weights_app, name="weights")
    app.command("infer")(infer)
    app.command("relabel")(relabel)
    app.command("labels")(label_versions)


_mount_subcommands()


def _mount_release_commands() -> None:
    """`unish release` and `unish takedown` (their modules import nothing heavy until a command runs)."""
    from flows.release_cmd import release
    from flows.takedown import takedown

    app.command("release")(release)
    app.command("takedown")(takedown)


_mount_release_commands()


def _mount_bedlam_command() -> None:
    """`unish bedlam` (BEDLAM -> clips with ground truth; its module imports nothing heavy until the command runs)."""
    from flows.bedlam import bedlam

    app.command("bedlam")(bedlam)


_mount_bedlam_command()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
