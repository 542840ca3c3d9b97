"""`unish train` and `unish export` on the command line; the work is `unish_model.train`, imported when a command
runs so that `unish --help` needs no torch.

`unish train` passes its arguments to `python -m unish_model.train` (the same parser torchrun launches), adding the
weights folder's SMPL model when none is named.
"""
from __future__ import annotations

from pathlib import Path

import typer

from flows import exitcodes
from flows.cmdline import fail, say

_train_app = typer.Typer(add_completion=False)


@_train_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                    add_help_option=False)
def _train(ctx: typer.Context) -> None:
    """Train one UniSH stage from shards (torchrun-ready; `unish train --help` lists every setting)."""
    from unish_model.train.cli import main as train_main

    args = list(ctx.args)
    if not {"--body-model", "--tiny-random", "--help", "-h"} & set(args):
        from tasks.weights import weights_path

        smpl = weights_path("smpl_neutral")  # stages 2 and 3 pose SMPL: the weights folder's, when it is there
        if smpl.is_file():
            args += ["--body-model", str(smpl)]
    try:
        status = train_main(args)
    except FileNotFoundError as e:  # shards, weights or a run folder not there: one line, not a traceback
        raise fail(str(e)) from None
    raise typer.Exit(status)


train = typer.main.get_command(_train_app)  # a click command, so that its context settings hold when loaded lazily


def export(
    run: Path = typer.Argument(..., help="a training run folder, a checkpoint folder or its model.safetensors"),
    out: Path = typer.Option(..., "--out", help="the file to write, e.g. unish_release.safetensors"),
) -> None:
    """Write a trained model in the official `unish_release` layout, for the official UniSH code."""
    from unish_model.train.checkpoint import export_official

    try:
        export_official(run, out)
    except FileNotFoundError as e:
        raise fail(str(e), exitcodes.USAGE) from None
    say(f"wrote {out}")
