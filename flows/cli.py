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
    key: Optional[str] = typer.Option(None, "--key", help="show one clip: its index row, stats and labels"),
    status: Optional[str] = typer.Option(None, "--status", help="list the clips of this status: ok, rejected, error"),
    reason: Optional[str] = typer.Option(None, "--reason", help="list the clips of this reason (a rule, an error)"),
    limit: int = typer.Option(50, min=0, help="clips listed by --status/--reason"),
) -> None:
    """Print the funnel from the index, the label families in the shards, and read a few clips back; with
    --status/--reason, list the matching clips; with --key, show one clip."""
    from flows.inspect_cmd import clip_details, family_counts, filter_rows
    from shards.index import compute_funnel, read_index
    from shards.reader import iter_clips

    try:
        index, videos = read_index(out)
    except FileNotFoundError as e:
        _say_error(str(e))
        raise typer.Exit(2) from None
    rows = index.to_pylist()
    try:
        matched = filter_rows(rows, status, reason)
    except ValueError as e:
        _say_error(str(e))
        raise typer.Exit(2) from None
    clip = None
    if key is not None:
        found = [r for r in rows if r["key"] == key]
        if not found:
            _say_error(f"{out}: no clip {key!r} in the index")
            raise typer.Exit(1)
        clip = clip_details(out, found[0])
    filtered = status is not None or reason is not None
    funnel = compute_funnel(index, videos)
    ok = [r for r in matched if r["status"] == "ok"]
    shards = sorted({r["shard"] for r in ok})
    wanted = {r["key"] for r in ok}
    read_back = []
    clips = (c for c in iter_clips([str(Path(out) / "shards" / s) for s in shards]) if c.key in wanted)
    for c in itertools.islice(clips, samples):
        read_back.append({"key": c.key, "frames": int(c.frames.shape[0]), "width": int(c.frames.shape[2]),
                          "height": int(c.frames.shape[1]), "labels": sorted(c.labels),
                          "start_s": c.meta["start_s"], "end_s": c.meta["end_s"]})
    families = family_counts(out, rows)
    listed = [{k: r[k] for k in ("key", "source_id", "start_s", "end_s", "status", "reason", "message")}
              for r in matched[:limit]]
    if as_json:
        counts = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(funnel).items()}
        doc: dict = {"funnel": counts, "read_back": read_back, "label_families": families}
        if filtered:
            doc.update(clips=listed, matched=len(matched))
        if clip is not None:
            doc["clip"] = clip
        typer.echo(json.dumps(doc, sort_keys=True, default=str))
    else:
        _print_inspect(funnel, read_back, families, listed if filtered else None, len(matched), clip)
    if ok and not read_back and samples > 0:
        console.print("[red]the index lists clips but none could be read back[/red]")
        raise typer.Exit(1)


def _print_inspect(funnel, read_back: list[dict], families: dict[str, int], listed: list[dict] | None,
                   matched: int, clip: dict | None) -> None:
    from flows.report import print_funnel

    out_console = Console()
    print_funnel(funnel, out_console)
    fam = Table(title="label families in the shards", header_style="bold")
    fam.add_column("family (@version: relabelled)", overflow="fold")
    fam.add_column("clips", justify="right")
    for name, n in families.items():
        fam.add_row(name, str(n))
    if not families:
        fam.add_row("-", "0")
    out_console.print(fam)
    if listed is not None:
        table = Table(title=f"clips matching ({matched}, {len(listed)} shown)", header_style="bold")
        for col in ("key", "status", "reason", "message"):
            table.add_column(col, overflow="fold")
        for r in listed:
            table.add_row(r["key"], r["status"], r["reason"] or "-", r["message"] or "")
        out_console.print(table)
    if read_back or listed is None:
        table = Table(title="clips read back", header_style="bold")
        for col in ("key", "frames", "size", "labels", "seconds"):
            table.add_column(col, overflow="fold")
        for c in read_back:
            table.add_row(c["key"], str(c["frames"]), f"{c['width']}x{c['height']}", ",".join(c["labels"]) or "-",
                          f"{c['start_s']:.2f}-{c['end_s']:.2f}")
        out_console.print(table)
    if clip is not None:
        _print_clip(out_console, clip)


def _print_clip(out_console: Console, clip: dict) -> None:
    table = Table(title=f"clip {clip['key']}", header_style="bold", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for k in ("status", "reason", "message", "source_id", "start_s", "end_s", "shard"):
        table.add_row(k, str(clip[k]) if clip[k] not in (None, "") else "-")
    if "frames" in clip:
        table.add_row("frames", "x".join(str(s) for s in clip["frames"]))
    for stage, stats in clip["stats"].items():
        table.add_row(f"stats: {stage}", json.dumps(stats, sort_keys=True))
    out_console.print(table)
    for title, entries in (("labels", clip.get("labels")), ("evidence of the rejection", {"rejected": clip["evidence"]}
                                                                if clip.get("evidence") else None)):
        if not entries:
            continue
        t = Table(title=title, header_style="bold")
        for col in ("family", "entry", "value"):
            t.add_column(col, overflow="fold")
        for family, values in entries.items():
            for entry, v in values.items():
                t.add_row(family, entry, json.dumps(v, sort_keys=True, default=str))
        out_console.print(t)
    if clip.get("provenance"):
        t = Table(title="label provenance", header_style="bold")
        for col in ("family", "backend", "weights", "package", "version"):
            t.add_column(col, overflow="fold")
        for family, p in sorted(clip["provenance"].items()):
            t.add_row(family, str(p.get("backend")), str(p.get("weights") or p.get("detections") or "-"),
                      str(p.get("package_version") or "-"), str(p.get("version")))
        out_console.print(t)


@app.command()
def report(
    run: Path = typer.Argument(..., help="a curated output folder"),
    out: Path = typer.Option(Path("report.html"), "--out", help="the HTML file to write"),
    sample: int = typer.Option(3, "--sample", min=0,
                               help="kept clips, and rejected clips of each rule, shown as contact sheets"),
    seed: int = typer.Option(0, help="seed of the clips the sample picks"),
) -> None:
    """Write one self-contained HTML page (no network needed to open it) to judge a run by looking: the funnel,
    outcomes per source, errors, distributions of what the filters measured, label provenance, contact sheets of
    sampled kept and rejected clips, and the run's parameters. It holds frames: share it as you would the run."""
    from flows.report_html import write_report

    try:
        written = write_report(run, out, sample, seed)
    except FileNotFoundError as e:
        _say_error(str(e))
        raise typer.Exit(2) from None
    console.print(f"wrote {written.path} ({written.bytes / 1e6:.2f} MB: images {written.image_bytes / 1e6:.2f} MB, "
                  f"charts {written.chart_bytes / 1e6:.2f} MB)", markup=False, highlight=False, soft_wrap=True)


@app.command()
def view(
    run: Path = typer.Argument(..., help="a curated output folder"),
    key: Optional[str] = typer.Option(None, "--key", help="the clip to show (default: the first kept clip)"),
    out: Optional[Path] = typer.Option(None, "--out", help="the .rrd to write (default: in the temp folder)"),
    open_viewer: bool = typer.Option(True, "--open/--no-open", help="start the Rerun viewer on the recording"),
) -> None:
    """Show one curated clip in Rerun: its frames with the person box, mask and keypoints, and its depth as a
    point cloud through the clip's intrinsics, frame by frame, to check the pseudo-labels in 3D."""
    import subprocess
    import sys
    import tempfile

    from shards.index import read_index
    from shards.reader import iter_members
    from shards.sample import decode_sample
    from unish_model.viewer import write_clip_recording

    try:
        index, _ = read_index(run)
    except FileNotFoundError as e:
        _say_error(str(e))
        raise typer.Exit(2) from None
    rows = [r for r in index.to_pylist() if r["key"] and (key is None or r["key"] == key)]
    if key is not None and not rows:
        _say_error(f"{run}: no clip {key!r} in the index")
        raise typer.Exit(1)
    kept = [r for r in rows if r["status"] == "ok"]
    if not kept:
        what = f"clip {key} is {rows[0]['status']}:{rows[0]['reason']}" if key else "the run has no kept clip"
        _say_error(f"{what}; only kept clips are in the shards (`unish report` shows rejected ones)")
        raise typer.Exit(1)
    row = kept[0]
    clip = next((decode_sample(m) for m in iter_members([str(Path(run) / "shards" / row["shard"])])
                 if m["__key__"] == row["key"]), None)
    if clip is None:
        _say_error(f"clip {row['key']} is not in its shard {row['shard']}: run `unish verify {run}`")
        raise typer.Exit(1)
    path = out or Path(tempfile.gettempdir()) / "unish-view" / f"{row['key']}.rrd"
    write_clip_recording(clip, path)
    console.print(f"wrote {path} (clip {row['key']}: {len(clip.frames)} frames, labels "
                  f"{', '.join(sorted(clip.labels)) or 'none'})", markup=False, highlight=False, soft_wrap=True)
    if open_viewer:
        subprocess.Popen([sys.executable, "-m", "rerun", str(path)])  # noqa: S603 - fixed argv, no shell


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
