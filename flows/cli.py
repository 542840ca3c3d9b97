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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
