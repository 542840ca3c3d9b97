"""`unish eval`: benchmark metrics from saved arrays.

`unish eval metrics --kind depth FILE.npz` reads `pred` (F, h, w) and `gt` (F, H, W) depth in
metres, optional `align` (scale&shift | scale | median | metric; default scale&shift) and
`max_depth` (default 70), and prints one JSON object: Abs Rel, delta < 1.25 and the rest, the
valid pixel count and the alignment found.

`unish eval metrics --kind motion FILE.npz` reads `pred` and `gt` world joints (F, J, 3) in metres
(joint 0 = root), optional `pred_verts` / `gt_verts` (F, 6890, 3) for foot sliding, `mask` (F,),
`fps` (30) and `chunk` (100), and prints the sequence means of WA-MPJPE, W-MPJPE (mm), RTE (%),
jitter (10 m/s^3) and foot sliding (mm).

The commands that run the model on Bonn / EMDB / RICH come once the model is in place.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from unish_model.metrics.depth import ALIGN_MODES, DEFAULT_MAX_DEPTH, evaluate_sequence
from unish_model.metrics.motion import CHUNK_FRAMES, aggregate_motion, global_motion_metrics

eval_app = typer.Typer(
    help="Evaluate as the peers measure: video depth (Bonn) and world motion (EMDB-2, RICH).",
    no_args_is_help=True,
)


class Kind(str, Enum):
    depth = "depth"
    motion = "motion"


@eval_app.callback()
def _eval_group() -> None:
    """Evaluation commands."""


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scalar(arrays: Any, key: str, default: Any, cast: type, file: Path) -> Any:
    if key not in arrays:
        return default
    arr = np.asarray(arrays[key])
    if arr.size != 1:
        raise typer.BadParameter(f"{file}: '{key}' must be a single value, got shape {arr.shape}")
    try:
        return cast(arr.reshape(()).item())
    except (TypeError, ValueError) as err:
        raise typer.BadParameter(f"{file}: '{key}' is not a valid {cast.__name__}: {err}") from err


def _required(arrays: Any, key: str, file: Path) -> np.ndarray:
    if key not in arrays:
        raise typer.BadParameter(f"{file}: missing array '{key}' (has: {sorted(arrays.files)})")
    return np.asarray(arrays[key])


def _depth(arrays: Any, file: Path) -> dict[str, Any]:
    align = _scalar(arrays, "align", "scale&shift", str, file)
    if align not in ALIGN_MODES:
        raise typer.BadParameter(f"{file}: align must be one of {ALIGN_MODES}, got {align!r}")
    max_depth = _scalar(arrays, "max_depth", DEFAULT_MAX_DEPTH, float, file)
    result = evaluate_sequence(_required(arrays, "pred", file), _required(arrays, "gt", file), align, max_depth)
    return {"kind": "depth", "max_depth": max_depth, **result.as_dict()}


def _motion(arrays: Any, file: Path) -> dict[str, Any]:
    pred, gt = _required(arrays, "pred", file), _required(arrays, "gt", file)
    verts = [np.asarray(arrays[k]) if k in arrays else None for k in ("pred_verts", "gt_verts")]
    per_frame = global_motion_metrics(
        pred,
        gt,
        pred_vertices=verts[0],
        gt_vertices=verts[1],
        mask=np.asarray(arrays["mask"]) if "mask" in arrays else None,
        fps=_scalar(arrays, "fps", 30.0, float, file),
        chunk=_scalar(arrays, "chunk", CHUNK_FRAMES, int, file),
    )
    return {"kind": "motion", "frames": int(len(per_frame["wa_mpjpe"])), **aggregate_motion([per_frame])}


@eval_app.command("metrics")
def metrics(
    file: Annotated[Path, typer.Argument(help="An .npz with the arrays named above.")],
    kind: Annotated[Kind, typer.Option("--kind", help="depth or motion")],
) -> None:
    """Compute benchmark metrics from arrays saved in FILE and print one JSON object."""
    if not file.is_file():
        raise typer.BadParameter(f"{file}: no such file")
    try:
        arrays = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(f"{file}: not a readable .npz ({err})") from err
    with arrays:
        try:
            out = _depth(arrays, file) if kind is Kind.depth else _motion(arrays, file)
        except ValueError as err:  # bad shapes or values in the arrays
            raise typer.BadParameter(f"{file}: {err}") from err
    typer.echo(json.dumps(_clean(out), sort_keys=True))
