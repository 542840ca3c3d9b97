"""`unish eval`: run UniSH over the benchmarks (Bonn, EMDB-2, RICH), or score saved arrays.

`unish eval bonn|emdb|rich --root DIR [--weights FILE | --tiny-random | --oracle] --out DIR` runs the model over
the benchmark in windows of 30 frames (stitched into one world frame and metric scale; see
`unish_model.eval` for every protocol choice), prints a table per sequence and the overall row, and writes
`results.json` and `results.md` under `--out` (with `--save-predictions`, also `predictions/<sequence>.npz`: the
arrays the metrics were computed from).  Weights default to the weights folder's `unish_release`; the motion
benchmarks need SMPL (`--body-model`, default the weights folder's SMPL_NEUTRAL); RICH's ground truth also needs
SMPL-X (`--smplx-dir`) and GVHMR's smplx2smpl map (`--smplx2smpl`).  `--tiny-random` (a tiny random model, and a
synthetic SMPL when none is given) is for smoke tests; `--oracle` feeds the ground truth through the same path
(zero error when prediction and ground truth share a body model: a plumbing check).

`unish eval metrics --kind depth|motion FILE.npz` scores saved arrays (`METRICS_HELP` lists them) and prints one
JSON object with the metrics and their `units`.  The arrays are checked first: the kind must fit their shapes
(joints are not depth maps), the prediction must be finite, and something must count (a valid pixel, a frame).
"""

from __future__ import annotations

import inspect
import json
import math
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

ALIGN_MODES = ("scale&shift", "scale", "median", "metric")  # unish_model.metrics.depth.ALIGN_MODES (a test checks)

METRICS_HELP = (
    "Arrays in FILE.npz (numpy, no pickles). --kind depth: `pred` (F, h, w) predicted depth, resized to the ground "
    "truth; `gt` (F, H, W) ground-truth depth in metres (a pixel counts where 0 < gt < max_depth; 0 or NaN: no "
    "depth); optional `align` (scale&shift | scale | median | metric; default scale&shift) and `max_depth` (metres, "
    "default 70). --kind motion: `pred` and `gt` (F, J, 3) world joints in metres, joint 0 the root; optional "
    "`pred_verts` and `gt_verts` (F, V, 3) SMPL vertices in metres (foot sliding), `mask` (F,) frames that count, "
    "`fps` (default 30), `chunk` (frames per alignment, default 100). Prints one JSON object; `units` gives each "
    "value's unit.")

# The unit of every value `unish eval metrics` prints (also in its JSON, under `units`).
UNITS = {
    "depth": {"abs_rel": "ratio (mean |p - g| / g)", "sq_rel": "m (mean (p - g)^2 / g)", "rmse": "m",
              "log_rmse": "log m", "delta_1.25": "fraction of valid pixels", "delta_1.25^2": "fraction of valid pixels",
              "delta_1.25^3": "fraction of valid pixels", "valid_pixels": "pixels", "scale": "ratio (gt / pred)",
              "shift": "m", "max_depth": "m"},
    "motion": {"wa_mpjpe": "mm", "w_mpjpe": "mm", "rte": "% of the ground-truth root path length",
               "jitter": "10 m/s^3", "fs": "mm", "frames": "frames"},
}

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


def _kind_mismatch(arr: np.ndarray, kind: str, name: str) -> str | None:
    """Why an array cannot be what `kind` reads (None when its shape fits)."""
    if kind == "depth":
        if arr.ndim not in (2, 3):
            return f"'{name}' has shape {arr.shape}; depth maps are (frames, H, W)"
        if arr.ndim == 3 and arr.shape[-1] == 3:
            return (f"'{name}' has shape {arr.shape}: 3 values per row look like joints or points (frames, points, 3), "
                    f"not depth maps (frames, H, W); use --kind motion")
        return None
    if arr.ndim != 3 or arr.shape[-1] != 3:
        hint = "; use --kind depth" if arr.ndim in (2, 3) else ""
        return f"'{name}' has shape {arr.shape}; motion reads world joints (frames, points, 3){hint}"
    return None


def _finite(arr: np.ndarray, name: str, file: Path, what: str) -> None:
    bad = int(arr.size - np.isfinite(arr).sum()) if np.issubdtype(arr.dtype, np.number) else arr.size
    if bad:
        raise typer.BadParameter(f"{file}: '{name}' has {bad} of {arr.size} values that are NaN or infinite; {what}")


def _depth(arrays: Any, file: Path) -> dict[str, Any]:
    import torch

    from unish_model.metrics.depth import DEFAULT_MAX_DEPTH, evaluate_sequence, valid_mask

    align = _scalar(arrays, "align", "scale&shift", str, file)
    if align not in ALIGN_MODES:
        raise typer.BadParameter(f"{file}: align must be one of {ALIGN_MODES}, got {align!r}")
    max_depth = _scalar(arrays, "max_depth", DEFAULT_MAX_DEPTH, float, file)
    if not max_depth > 0:
        raise typer.BadParameter(f"{file}: max_depth must be > 0 metres, got {max_depth}")
    pred, gt = _required(arrays, "pred", file), _required(arrays, "gt", file)
    for name, arr in (("pred", pred), ("gt", gt)):
        problem = _kind_mismatch(arr, "depth", name)
        if problem:
            raise typer.BadParameter(f"{file}: {problem}")
    _finite(pred, "pred", file, "a prediction must give every pixel a depth")
    if not np.issubdtype(gt.dtype, np.number):
        raise typer.BadParameter(f"{file}: 'gt' is not numeric ({gt.dtype})")
    if int(valid_mask(torch.from_numpy(np.asarray(gt, np.float64)), max_depth).sum()) == 0:
        raise typer.BadParameter(f"{file}: no pixel of 'gt' counts (0 < gt < max_depth = {max_depth:g} m): "
                                 f"nothing to score")
    result = evaluate_sequence(pred, gt, align, max_depth)
    return {"kind": "depth", "max_depth": max_depth, **result.as_dict(), "units": UNITS["depth"]}


def _motion(arrays: Any, file: Path) -> dict[str, Any]:
    from unish_model.metrics.motion import CHUNK_FRAMES, aggregate_motion, global_motion_metrics

    pred, gt = _required(arrays, "pred", file), _required(arrays, "gt", file)
    for name, arr in (("pred", pred), ("gt", gt)):
        problem = _kind_mismatch(arr, "motion", name)
        if problem:
            raise typer.BadParameter(f"{file}: {problem}")
    mask = np.asarray(arrays["mask"]) if "mask" in arrays else None
    keep: Any = slice(None)
    if mask is not None and mask.shape == (len(pred),):
        keep = mask.astype(bool)
        if not keep.any():
            raise typer.BadParameter(f"{file}: 'mask' keeps no frame: nothing to score")
    if len(pred) == len(gt):  # (a length mismatch is the metrics' own error, below)
        _finite(pred[keep], "pred", file, "drop those frames with `mask` (F,) or fill them")
        _finite(gt[keep], "gt", file, "drop those frames with `mask` (F,)")
    verts = [np.asarray(arrays[k]) if k in arrays else None for k in ("pred_verts", "gt_verts")]
    fps = _scalar(arrays, "fps", 30.0, float, file)
    if not fps > 0:
        raise typer.BadParameter(f"{file}: fps must be > 0, got {fps}")
    per_frame = global_motion_metrics(
        pred,
        gt,
        pred_vertices=verts[0],
        gt_vertices=verts[1],
        mask=mask,
        fps=fps,
        chunk=_scalar(arrays, "chunk", CHUNK_FRAMES, int, file),
    )
    units = {k: v for k, v in UNITS["motion"].items() if k in per_frame or k == "frames"}
    return {"kind": "motion", "frames": int(len(per_frame["wa_mpjpe"])), **aggregate_motion([per_frame]),
            "units": units}


@eval_app.command("metrics", epilog=METRICS_HELP)
def metrics(
    file: Annotated[Path, typer.Argument(help="An .npz with the arrays listed below.")],
    kind: Annotated[Kind, typer.Option("--kind", help="depth (Abs Rel, delta < 1.25, ...) or motion (WA-MPJPE, "
                                       "W-MPJPE, RTE, jitter, foot sliding)")],
) -> None:
    """Compute benchmark metrics from arrays saved in FILE and print one JSON object (with each value's unit).

    Exit status 2 when the arrays do not fit --kind, hold NaN or infinite predictions, or leave nothing to score."""
    if not file.is_file():
        raise typer.BadParameter(f"{file}: no such file")
    try:
        arrays = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(f"{file}: not a readable .npz ({err})") from err
    if not hasattr(arrays, "files"):
        raise typer.BadParameter(f"{file}: a single array, not an .npz of named arrays")
    with arrays:
        try:
            out = _depth(arrays, file) if kind is Kind.depth else _motion(arrays, file)
        except typer.BadParameter:
            raise
        except ValueError as err:  # bad shapes or values in the arrays
            raise typer.BadParameter(f"{file}: {err}") from err
    typer.echo(json.dumps(_clean(out), sort_keys=True))


# ----------------------------------------------------------------------------------------------- benchmarks

err_console = Console(stderr=True)


def _say(text: str, style: str = "") -> None:
    """One line on stderr, no markup in the text (paths stay whole)."""
    err_console.print(text, style=style or None, markup=False, highlight=False, soft_wrap=True)


class _Fail(Exception):
    """A problem the user can fix (missing files, bad layout); the message says what and how."""


RootOpt = Annotated[Path, typer.Option("--root", help="the benchmark's folder (its own layout)")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", "--checkpoint", help="UniSH weights: the official "
                                                    "unish_release file (default: the weights folder's), or a "
                                                    "`unish train` run or checkpoint folder")]
TinyOpt = Annotated[bool, typer.Option("--tiny-random", help="tiny random model (smoke tests only: meaningless "
                                       "numbers)")]
OracleOpt = Annotated[bool, typer.Option("--oracle", help="feed the ground truth instead of a model (plumbing check)")]
OutOpt = Annotated[Path, typer.Option("--out", help="folder for results.json and results.md (and predictions/)")]
MaxSeqOpt = Annotated[Optional[int], typer.Option("--max-sequences", min=1, help="only the first N sequences")]
SeqOpt = Annotated[Optional[list[str]], typer.Option("--sequence", help="only these sequences (repeatable)")]
WindowOpt = Annotated[int, typer.Option("--window", min=1, help="frames per model window")]
StrideOpt = Annotated[int, typer.Option("--stride", min=1, help="frames between window starts")]
LongSideOpt = Annotated[int, typer.Option("--long-side", help="model input long side (multiple of 14)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda")]
SolverOpt = Annotated[str, typer.Option("--solver", help="focal/shift solver: torch or scipy (official numbers)")]
SaveOpt = Annotated[bool, typer.Option("--save-predictions", help="also write predictions/<sequence>.npz")]
BodyOpt = Annotated[Optional[Path], typer.Option("--body-model", help="SMPL .npz in SMPL's layout (default: the "
                                                 "weights folder's SMPL_NEUTRAL)")]


@dataclass
class BenchmarkOptions:
    """The options every `unish eval <benchmark>` command takes (see `_shared_parameters`)."""

    root: Path
    weights: Optional[Path]
    tiny_random: bool
    oracle: bool
    out: Path
    max_sequences: Optional[int]
    sequence: Optional[list[str]]
    window: int
    stride: int
    long_side: int
    device: str
    solver: str
    save_predictions: bool
    body_model: Optional[Path] = None  # the motion benchmarks' --body-model
    benchmark: str = ""
    motion: bool = False  # a motion benchmark: it needs an SMPL body model too
    _weights_checked: bool = False

    def check(self) -> None:
        """Refuse contradictory predictor flags and a bad window plan before any file is read."""
        if self.oracle and (self.weights is not None or self.tiny_random):
            raise typer.BadParameter("--oracle runs no model: drop --weights / --tiny-random")
        if self.weights is not None and self.tiny_random:
            raise typer.BadParameter("--tiny-random builds a random model: drop --weights")
        self.window_config()

    def window_config(self) -> Any:
        from unish_model.eval.windows import WindowConfig

        try:
            return WindowConfig(window=self.window, stride=self.stride, long_side=self.long_side)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from err

    def predictor(self, oracle: Callable[[], Any], oracle_desc: str) -> tuple[Any, str]:
        """The ground truth (`oracle()`, with --oracle) or UniSH as the predictor, and a description of it."""
        self.check_weights()
        if self.oracle:
            return oracle(), oracle_desc
        return _model_predictor(self.weights, self.tiny_random, self.device, self.solver)

    def check_weights(self) -> None:
        """Every weights file the run will read (the model's, a motion benchmark's SMPL), checked at once before
        the first is loaded, after the benchmark's own layout: missing ones end the command with exit 1."""
        if not self._weights_checked:
            self._weights_checked = True
            _refuse_missing_weights(self, self.benchmark, self.motion)

    def body(self) -> Any:
        """The evaluation's SMPL body model (--body-model, the weights folder's, or with --tiny-random a synthetic
        one)."""
        self.check_weights()
        with tempfile.TemporaryDirectory(prefix="unish-body-") as scratch:
            return _load_body(self.body_model, self.tiny_random, Path(scratch))

    def sink(self) -> Optional[Callable[[str, dict[str, np.ndarray]], None]]:
        """With --save-predictions, where each sequence's arrays go: predictions/<sequence>.npz."""
        if not self.save_predictions:
            return None
        folder = self.out / "predictions"
        folder.mkdir(parents=True, exist_ok=True)

        def write(name: str, arrays: dict[str, np.ndarray]) -> None:
            np.savez(folder / f"{name.replace('/', '@')}.npz", **arrays)

        return write


def _shared_parameters(benchmark: str, motion: bool) -> tuple[list[inspect.Parameter], list[inspect.Parameter]]:
    """The shared options as (those listed before a command's own, those after); motion benchmarks add
    --body-model."""
    def option(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)

    before = [option("root", RootOpt), option("weights", WeightsOpt, None), option("tiny_random", TinyOpt, False),
              option("oracle", OracleOpt, False)] + ([option("body_model", BodyOpt, None)] if motion else [])
    after = [option("out", OutOpt, Path("eval_results") / benchmark), option("max_sequences", MaxSeqOpt, None),
             option("sequence", SeqOpt, None), option("window", WindowOpt, 30), option("stride", StrideOpt, 25),
             option("long_side", LongSideOpt, 518), option("device", DeviceOpt, "cpu"),
             option("solver", SolverOpt, "torch"), option("save_predictions", SaveOpt, False)]
    return before, after


def _benchmark_command(benchmark: str, motion: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `unish eval <benchmark>`: `run(options, **own)` gets the shared options as `BenchmarkOptions`,
    checked, and its own options as keywords; the command line lists the shared ones and its own."""
    def register(run: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(run, eval_str=True).parameters.values())[1:]
        before, after = _shared_parameters(benchmark, motion)
        shared = [p.name for p in before + after]

        def command(**kwargs: Any) -> None:
            options = BenchmarkOptions(**{name: kwargs.pop(name) for name in shared})
            options.check()
            options.benchmark, options.motion = benchmark, motion
            _guard(lambda: run(options, **kwargs))

        command.__name__, command.__doc__ = run.__name__, run.__doc__
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            before + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + after)
        eval_app.command(benchmark)(command)
        return run

    return register


def _refuse_missing_weights(options: "BenchmarkOptions", benchmark: str, motion: bool) -> None:
    """The model's and the body model's files, checked at once before any sequence is read (exit 1, listing all)."""
    from flows.models import body_needs, model_needs
    from tasks.weights import WeightsMissing, check_needs

    who = f"unish eval {benchmark}"
    needs = [] if options.oracle else model_needs(options.weights, options.tiny_random, who)
    if motion:
        needs += body_needs(options.body_model, options.tiny_random, who)
    try:
        check_needs(needs)
    except WeightsMissing as err:
        _say(f"error: {err}", "red")
        raise typer.Exit(1) from None


def _model_predictor(weights: Optional[Path], tiny_random: bool, device: str, solver: str) -> tuple[Any, str]:
    """UniSH as a predictor, and a description of it for the results."""
    from flows.models import load_model, weights_file
    from tasks.weights import WeightsError, how_to_get, spec
    from unish_model.runner import UniSHPredictor

    if solver not in ("torch", "scipy"):
        raise typer.BadParameter(f"--solver must be torch or scipy, got {solver!r}")
    if weights is not None and not tiny_random and not weights_file(weights).is_file():
        s = spec("unish_release")
        raise _Fail(f"weights file {weights_file(weights)} not found; {how_to_get(s, weights)}")
    try:
        model = load_model(weights, tiny_random, device)
    except (WeightsError, FileNotFoundError) as err:
        raise _Fail(str(err)) from None
    if tiny_random:
        _say("--tiny-random: a tiny model with random weights; the numbers are meaningless", "yellow")
    desc = "tiny-random" if tiny_random else str(weights if weights is not None else "unish_release (weights folder)")
    return UniSHPredictor(model, device=device, solver=solver), desc


def _load_body(path: Optional[Path], tiny_random: bool, scratch: Path) -> Any:
    from flows.models import load_body_model

    if path is not None and not path.is_file():
        raise _Fail(f"body model {path} not found (an .npz in SMPL's layout; see unish_model.body)")
    try:
        body = load_body_model(path, tiny_random, scratch)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise _Fail(str(err)) from None
    if body is None:
        raise _Fail("the motion benchmarks need an SMPL body model: --body-model none is not possible here")
    return body


def _finish(result: Any, out: Path, title: str, predictor: str) -> None:
    """Print the table, write results.json and results.md."""
    from unish_model.eval.results import METRIC_LABELS

    result.protocol = {"predictor": predictor, **result.protocol}
    table = Table(title=title, header_style="bold")
    table.add_column("sequence", no_wrap=True)
    table.add_column("frames", justify="right")
    for c in result.columns:
        table.add_column(METRIC_LABELS.get(c, c), justify="right")
    rows = result.table_rows()
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(width=200).print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_clean_all(result.to_dict()), indent=2, sort_keys=False) + "\n")
    (out / "results.md").write_text(result.to_markdown(title))
    _say(f"wrote {out / 'results.json'} and {out / 'results.md'}")


def _clean_all(value: Any) -> Any:
    """JSON-safe, recursively (lists and numpy arrays too)."""
    if isinstance(value, dict):
        return {str(k): _clean_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_all(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean_all(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return _clean(value)


def _guard(run: Callable[[], None]) -> None:
    """Run a benchmark; user-fixable problems end with their message and exit code 2."""
    from unish_model.benchmarks.layout import BenchmarkLayoutError

    try:
        run()
    except (_Fail, BenchmarkLayoutError) as err:
        _say(str(err), "red")
        raise typer.Exit(2) from None


@_benchmark_command("bonn")
def bonn(
    options: BenchmarkOptions,
    align: Annotated[str, typer.Option("--align", help="scale&shift (pi3's default) | scale | median | metric")]
    = "scale&shift",
) -> None:
    """Bonn RGB-D Dynamic video depth (Abs Rel, delta < 1.25), as pi3 / CUT3R / MonST3R."""
    from unish_model.benchmarks.bonn import bonn_depth_of, bonn_sequences
    from unish_model.eval.bonn import evaluate_bonn
    from unish_model.eval.predictors import GroundTruthPredictor

    if align not in ALIGN_MODES:
        raise typer.BadParameter(f"--align must be one of {ALIGN_MODES}")
    seqs = bonn_sequences(options.root, options.sequence, options.max_sequences)
    predictor, desc = options.predictor(lambda: GroundTruthPredictor(depth_of=bonn_depth_of(seqs)),
                                        "oracle (ground-truth depth)")
    result = evaluate_bonn(seqs, predictor, options.window_config(), align=align, log=_say, sink=options.sink())
    _finish(result, options.out, "UniSH on Bonn (video depth)", desc)


def _gendered_smpl(body_model: Optional[Path], gt_body_dir: Optional[Path]) -> dict[str, Any]:
    """SMPL_MALE.npz / SMPL_FEMALE.npz from --gt-body-dir, else next to --body-model, else the weights folder."""
    from tasks.weights import weights_dir
    from unish_model.body import BodyModel

    folder = gt_body_dir or (body_model.parent if body_model is not None else weights_dir())
    found = {}
    for gender in ("male", "female", "neutral"):
        path = folder / f"SMPL_{gender.upper()}.npz"
        if path.is_file():
            try:
                found[gender] = (BodyModel.from_file(path), path.name)
            except (KeyError, ValueError) as err:
                raise _Fail(str(err)) from None
    return found


@_benchmark_command("emdb", motion=True)
def emdb(
    options: BenchmarkOptions,
    gt_body_dir: Annotated[Optional[Path], typer.Option("--gt-body-dir", help="folder with SMPL_MALE.npz / "
                           "SMPL_FEMALE.npz for the ground truth (default: next to --body-model)")] = None,
    split: Annotated[int, typer.Option("--split", help="EMDB split (2: world motion)")] = 2,
) -> None:
    """EMDB-2 world motion (WA-MPJPE, W-MPJPE, RTE, jitter, foot sliding), as GVHMR / WHAM."""
    from unish_model.benchmarks.emdb import emdb_gt_smpl, emdb_motion_sequence, emdb_sequences
    from unish_model.eval.motion import evaluate_motion
    from unish_model.eval.predictors import GroundTruthPredictor

    if split not in (1, 2):
        raise typer.BadParameter("--split must be 1 or 2")
    seqs = emdb_sequences(options.root, split, options.sequence, options.max_sequences)
    body = options.body()
    gendered = _gendered_smpl(options.body_model, gt_body_dir)
    by_name = {s.name: s for s in seqs}
    predictor, desc = options.predictor(
        lambda: GroundTruthPredictor(smpl_of=lambda name: emdb_gt_smpl(by_name[name])), "oracle (ground-truth SMPL)")

    def motion_sequences() -> Any:
        for seq in seqs:
            gt_body, name = gendered.get(seq.gender, (body, f"neutral (no SMPL_{seq.gender.upper()}.npz)"))
            yield emdb_motion_sequence(seq, gt_body, body, name)

    result = evaluate_motion("emdb", motion_sequences(), predictor, body, options.window_config(), log=_say,
                             sink=options.sink(),
                             protocol={"split": f"EMDB-{split}", "mask": "good_frames_mask",
                                       "gt": "SMPL of the annotated gender (neutral when not given)"})
    _finish(result, options.out, f"UniSH on EMDB-{split} (world motion)", desc)


def _first_file(names: list[str], folders: list[Path]) -> Optional[Path]:
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


@_benchmark_command("rich", motion=True)
def rich(
    options: BenchmarkOptions,
    smplx_dir: Annotated[Optional[Path], typer.Option("--smplx-dir", help="folder with SMPLX_MALE.npz, "
                         "SMPLX_FEMALE.npz, SMPLX_NEUTRAL.npz (default: ROOT/body_models, then the weights "
                         "folder)")] = None,
    smplx2smpl: Annotated[Optional[Path], typer.Option("--smplx2smpl", help="GVHMR's smplx2smpl_sparse.pt "
                          "(default: in the SMPL-X folder)")] = None,
) -> None:
    """RICH world motion (WA-MPJPE, W-MPJPE, RTE, jitter, foot sliding), as GVHMR / WHAM."""
    from tasks.weights import weights_dir
    from unish_model.benchmarks.rich import find_rich, load_rich_preproc, load_smplx2smpl, rich_gt_smpl, \
        rich_motion_sequence, rich_sequences
    from unish_model.body import SmplxModel
    from unish_model.eval.motion import evaluate_motion
    from unish_model.eval.predictors import GroundTruthPredictor

    root = options.root
    data = find_rich(root)
    seqs = rich_sequences(data, options.sequence, options.max_sequences)
    folders = [smplx_dir] if smplx_dir is not None else [root / "body_models", root / "body_models" / "smplx",
                                                          weights_dir(), weights_dir() / "smplx"]
    genders = sorted({s.gender for s in seqs})
    smplx_files = {}
    for g in genders:
        path = _first_file([f"SMPLX_{g.upper()}.npz"], folders)
        if path is None:
            raise _Fail(f"RICH's ground truth needs SMPL-X: SMPLX_{g.upper()}.npz not found in "
                        f"{', '.join(map(str, folders))}; register at https://smpl-x.is.tue.mpg.de, download "
                        "the SMPL-X npz models and pass --smplx-dir")
        smplx_files[g] = path
    map_path = smplx2smpl or _first_file(["smplx2smpl_sparse.pt", "smplx2smpl.pt", "smplx2smpl.npz"],
                                         [smplx_files[genders[0]].parent, *folders])
    if map_path is None or not map_path.is_file():
        raise _Fail(f"RICH's ground truth needs the SMPL-X -> SMPL vertex map: {map_path or 'smplx2smpl_sparse.pt'}"
                    f" not found; take smplx2smpl_sparse.pt from GVHMR's body_models and pass --smplx2smpl")
    try:
        mapping = load_smplx2smpl(map_path)
        smplx = {g: SmplxModel.from_file(p) for g, p in smplx_files.items()}
        preproc = load_rich_preproc(data.preproc)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise _Fail(str(err)) from None
    if data.preproc is None:
        _say(f"no {data.labels.parent / 'rich_test_preproc.pt'}: the whole frame is the person box", "yellow")
    body = options.body()
    by_name = {s.vid: s for s in seqs}
    predictor, desc = options.predictor(
        lambda: GroundTruthPredictor(smpl_of=lambda name: rich_gt_smpl(by_name[name])),
        "oracle (ground-truth SMPL-X parameters read as SMPL)")

    def motion_sequences() -> Any:
        for seq in seqs:
            yield rich_motion_sequence(data, seq, preproc, smplx[seq.gender], mapping, body)

    result = evaluate_motion("rich", motion_sequences(), predictor, body, options.window_config(), log=_say,
                             sink=options.sink(),
                             protocol={"gt": "gendered SMPL-X -> SMPL vertices (smplx2smpl) -> SMPL J_regressor",
                                       "frames": "every labelled frame"})
    _finish(result, options.out, "UniSH on RICH (world motion)", desc)
