"""The `unish` command line.

Start-up is kept short: this module imports only typer and rich, and each command imports what it uses when it
runs.  Commands live in two places:

- here, with `@app.command()` (`inspect`, `verify`): their bodies import what they need;
- in their own modules, registered lazily: one line of `LAZY_COMMANDS` below, `name: ("module:attribute", "one
  line for `unish --help`")`; the attribute is a command function or a Typer sub-app.  The module is imported only
  when that command runs or shows its own help, so `unish --help` stays fast.  To add a command, write it in its
  module and add its line.

Exit status: one scheme for every command, `flows/exitcodes.py` (0 ok, 1 failed, 2 usage, 3 a rerun may help).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional  # noqa: F401  (for commands added here)

import typer
from rich.console import Console
from rich.table import Table

from flows import exitcodes
from flows.exitcodes import HELP as EXIT_HELP
from flows.lazycli import LazyGroup

# name -> ("module:attribute", short help shown by `unish --help`); in the order `unish --help` lists them.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "curate": ("flows.curate_cmd:curate", "Curate a manifest into WebDataset shards with a Parquet index."),
    "relabel": ("flows.relabel_cmd:relabel", "Recompute one label family from the stored frames and write it as a new "
                "label version."),
    "labels": ("flows.relabel_cmd:label_versions", "List the label versions of a curated output (for "
               "`iter_clips_with_labels(versions=...)`)."),
    "infer": ("flows.infer_cli:infer", "Reconstruct the scene, cameras and the person's SMPL body from a video, in "
              "one world frame and scale."),
    "eval": ("flows.eval_cmd:eval_app", "Evaluate as the peers measure: video depth (Bonn) and world motion "
             "(EMDB-2, RICH)."),
    "weights": ("flows.weights_cmd:weights_app", "Model weights: what the project uses, what is here, and how to "
                "get the rest."),
    "release": ("flows.release_cmd:release", "Write a release folder: video IDs, timestamps, a rebuild manifest "
                "and a dataset card; no frames or labels."),
    "takedown": ("flows.takedown:takedown", "Withdraw videos from runs and releases: remove every trace, blocklist "
                 "them, and check none remains."),
    "bedlam": ("flows.bedlam:bedlam", "Convert BEDLAM (synthetic, with ground truth: stage 2's data) into clips with "
               "labels, like `curate`."),
    "train": ("flows.train_cmd:train", "Train one UniSH stage from shards (torchrun-ready; `unish train --help` "
              "lists every setting)."),
    "export": ("flows.train_cmd:export", "Write a trained model in the official `unish_release` layout, for the "
               "official UniSH code."),
}

app = typer.Typer(help="unish: curate video into training shards, and run UniSH.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=LazyGroup, epilog=EXIT_HELP)
LazyGroup.lazy_commands = LAZY_COMMANDS
console = Console(stderr=True)


def _say_error(text: str) -> None:
    """One plain line on stderr: no markup, no wrapping inside paths (scripts read the last lines)."""
    console.print(f"error: {text}", style="red", markup=False, highlight=False, soft_wrap=True)


@app.command()
def inspect(
    out: str = typer.Argument(..., help="a curated output folder, or its URL (s3://bucket/run)"),
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

    from shards.store import StoreError, join

    try:
        index, videos = read_index(out)
    except StoreError as e:  # the store (a bucket, credentials), before FileNotFoundError: a missing bucket is both
        _say_error(str(e))
        raise typer.Exit(exitcodes.FAILED) from None
    except FileNotFoundError as e:
        _say_error(str(e))
        raise typer.Exit(exitcodes.USAGE) from None
    rows = index.to_pylist()
    try:
        matched = filter_rows(rows, status, reason)
    except ValueError as e:
        _say_error(str(e))
        raise typer.Exit(exitcodes.USAGE) from None
    clip = None
    if key is not None:
        found = [r for r in rows if r["key"] == key]
        if not found:
            _say_error(f"{out}: no clip {key!r} in the index")
            raise typer.Exit(exitcodes.FAILED)
        clip = clip_details(out, found[0])
    filtered = status is not None or reason is not None
    funnel = compute_funnel(index, videos)
    ok = [r for r in matched if r["status"] == "ok"]
    shards = sorted({r["shard"] for r in ok})
    wanted = {r["key"] for r in ok}
    read_back = []
    clips = (c for c in iter_clips([join(out, "shards", s) for s in shards]) if c.key in wanted)
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
        raise typer.Exit(exitcodes.FAILED)


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
        raise typer.Exit(exitcodes.USAGE) from None
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
        raise typer.Exit(exitcodes.USAGE) from None
    rows = [r for r in index.to_pylist() if r["key"] and (key is None or r["key"] == key)]
    if key is not None and not rows:
        _say_error(f"{run}: no clip {key!r} in the index")
        raise typer.Exit(exitcodes.FAILED)
    kept = [r for r in rows if r["status"] == "ok"]
    if not kept:
        what = f"clip {key} is {rows[0]['status']}:{rows[0]['reason']}" if key else "the run has no kept clip"
        _say_error(f"{what}; only kept clips are in the shards (`unish report` shows rejected ones)")
        raise typer.Exit(exitcodes.FAILED)
    row = kept[0]
    clip = next((decode_sample(m) for m in iter_members([str(Path(run) / "shards" / row["shard"])])
                 if m["__key__"] == row["key"]), None)
    if clip is None:
        _say_error(f"clip {row['key']} is not in its shard {row['shard']}: run `unish verify {run}`")
        raise typer.Exit(exitcodes.FAILED)
    path = out or Path(tempfile.gettempdir()) / "unish-view" / f"{row['key']}.rrd"
    write_clip_recording(clip, path)
    console.print(f"wrote {path} (clip {row['key']}: {len(clip.frames)} frames, labels "
                  f"{', '.join(sorted(clip.labels)) or 'none'})", markup=False, highlight=False, soft_wrap=True)
    if open_viewer:
        subprocess.Popen([sys.executable, "-m", "rerun", str(path)])  # noqa: S603 - fixed argv, no shell


@app.command()
def verify(
    out: str = typer.Argument(..., help="a curated output folder, or its URL (s3://bucket/run)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Check every indexed clip of a run: present, complete and intact (members and sha256 as indexed), and
    no sample outside the index. Says what a rerun of `unish curate` would repair. Exit 0 when intact, 1 when not."""
    from flows.repair import repair_plan
    from shards.store import StoreError
    from shards.verify import verify_run

    try:
        report = verify_run(out)
    except StoreError as e:  # the store (a bucket, credentials), before FileNotFoundError: a missing bucket is both
        _say_error(str(e))
        raise typer.Exit(exitcodes.FAILED) from None
    except FileNotFoundError as e:
        _say_error(str(e))
        raise typer.Exit(exitcodes.USAGE) from None
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
    raise typer.Exit(exitcodes.OK if report.ok else exitcodes.FAILED)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
