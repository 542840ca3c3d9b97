"""`unish infer VIDEO --out DIR` on the command line (the work is flows/infer_cmd.py, imported when it runs, so
`--help` needs no torch).

Settings come from `--config FILE` (its `infer` table: `InferConfig`'s fields, plus `weights`, `body_model` and
`tiny_random`) with the flags given on top; the effective configuration is written into `DIR/summary.json` (`infer`).
Every weights file the run will read (UniSH, SMPL, the people detector's, the masks stage's) is checked before the
video is opened, and all missing ones are listed at once.
"""
from __future__ import annotations

import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import typer

from flows import exitcodes
from flows.cmdline import fail, say, settings_from

# command-line parameter -> setting (InferConfig field, or one of COMMAND_SETTINGS)
FLAGS = {"weights": "weights", "tiny_random": "tiny_random", "body_model": "body_model", "window": "window",
         "stride": "stride", "fps": "fps", "long_side": "long_side", "short_side": "short_side", "people": "people",
         "people_weights": "people_weights", "masks": "masks", "start": "start_s", "end": "end_s",
         "device": "device"}
COMMAND_SETTINGS = ("weights", "tiny_random", "body_model")  # what the command reads besides InferConfig


def infer(
    ctx: typer.Context,
    video: Path = typer.Argument(..., help="a video file"),
    out: Path = typer.Option(..., "--out", help="output folder: unish.npz, points.ply, scene.glb, recording.rrd"),
    weights: Optional[Path] = typer.Option(None, "--weights", "--checkpoint",
                                           help="UniSH weights: the official unish_release file (default: the "
                                           "weights folder's), or a `unish train` run or checkpoint folder"),
    tiny_random: bool = typer.Option(False, "--tiny-random",
                                     help="tiny random model: smoke tests only, meaningless output"),
    body_model: Optional[Path] = typer.Option(None, help="SMPL .npz in SMPL's layout (default: the weights folder's "
                                              "SMPL_NEUTRAL.npz), or 'none' for no meshes"),
    window: int = typer.Option(30, min=2, help="frames per window (a shorter video runs as one shorter window)"),
    stride: int = typer.Option(25, min=1, help="frames between window starts (window - stride frames shared)"),
    fps: float = typer.Option(6.0, help="sampling rate inside a window"),
    long_side: int = typer.Option(518, help="model input, long side (multiple of 14)"),
    short_side: int = typer.Option(294, help="model input, short side (multiple of 14)"),
    people: str = typer.Option("yolo", help="person detector: yolo (paper), hog (lite), frame (whole frame)"),
    people_weights: str = typer.Option("yolo11n", help="YOLO weights: registry name or .pt file"),
    masks: str = typer.Option("box", help="person mask: mediapipe (lite), sam2 (paper) or box"),
    start: Optional[float] = typer.Option(None, help="start time (s)"),
    end: Optional[float] = typer.Option(None, help="end time (s)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="TOML or YAML file of settings: its `infer` table, or the whole file; keys as in "
        "summary.json's `infer` (window, stride, person_score, ply_conf, voxel_size, weights, body_model, ...); flags "
        "given here win"),
    view: bool = typer.Option(False, "--view", help="open the Rerun viewer on the recording"),
) -> None:
    """Reconstruct the scene, cameras and the person's SMPL body from a video, in one world frame and scale.

    Exit status: 0 done; 1 the run failed (weights missing, an unreadable video); 2 bad arguments."""
    from flows.infer_cmd import InferConfig

    known = [f.name for f in fields(InferConfig)] + list(COMMAND_SETTINGS)
    settings, _ = settings_from(ctx, config_file, "infer", known, FLAGS)
    command = {k: settings.pop(k) for k in COMMAND_SETTINGS if k in settings}
    try:
        config = InferConfig(**settings)
    except (TypeError, ValueError) as e:
        raise fail(str(e), exitcodes.USAGE) from None
    model_file = Path(command["weights"]) if command.get("weights") else None
    body_file = Path(command["body_model"]) if command.get("body_model") else None
    tiny = bool(command.get("tiny_random", False))
    _refuse_missing_weights(config, model_file, body_file, tiny)
    if not video.is_file():
        raise fail(f"{video}: no such video file")
    _run(video, out, config, model_file, body_file, tiny, view)


def _refuse_missing_weights(config: Any, model_file: Path | None, body_file: Path | None, tiny: bool) -> None:
    """Every weights file the run will read, checked at once before any work."""
    from flows.models import body_needs, model_needs
    from tasks.stage import build_stage, weights_needed
    from tasks.weights import WeightsMissing, check_needs

    needs = model_needs(model_file, tiny, "unish infer") + body_needs(body_file, tiny, "unish infer")
    if config.people == "yolo":
        from tasks.people.yolo import YoloBackend, YoloConfig

        needs += weights_needed(YoloBackend(YoloConfig(weights=config.people_weights)))
    if config.masks not in ("box",):
        needs += weights_needed(build_stage(f"masks:{config.masks}"))
    try:
        check_needs(needs)
    except WeightsMissing as e:
        raise fail(str(e)) from None


def _run(video: Path, out: Path, config: Any, model_file: Path | None, body_file: Path | None, tiny: bool,
         view: bool) -> None:
    from flows.infer_cmd import open_viewer, run_infer
    from flows.models import load_body_model, load_model
    from tasks.probe import UnreadableVideo

    if tiny:
        say("--tiny-random: a tiny model with random weights; the output is meaningless", "yellow")
    settings = {"weights": str(model_file) if model_file else None,
                "body_model": str(body_file) if body_file else None, "tiny_random": tiny}
    try:
        with tempfile.TemporaryDirectory(prefix="unish-body-") as scratch:
            body = load_body_model(body_file, tiny, Path(scratch))
            model = load_model(model_file, tiny, config.device)
            result = run_infer(video, out, config, model, body, settings=settings)
    except (FileNotFoundError, UnreadableVideo, ValueError, RuntimeError) as e:
        raise fail(str(e)) from None
    say(f"{result.frames} frames from {result.windows} windows, metric scale {result.metric_scale:.4f}")
    for kind, path in result.files.items():
        say(f"  {kind}: {path}")
    say(f"configuration: {out / 'summary.json'}")
    if view:
        open_viewer(result.files["rrd"])
