"""Check our implementations against the official code's golden outputs.

    python -m unish_model.goldens DIR [DIR ...] [--tol 1e-5]

Each DIR holds `config.json` (with `"golden": NAME`), `weights.safetensors` (official keys) and `io.npz`
(`in_*`, `out_*`, `dbg_*`), optionally more `io_*.npz` files for a second call. The runner
`unish_model.golden_calls.NAME.run(config, weights, inputs)` returns our outputs (see the conventions in
`unish_model.golden_calls`). Per compared tensor this prints `max|ours - golden| / max(1, max|golden|)`.
Exit status 1 if any compared output exceeds the tolerance, has the wrong shape, or an expected `out_*` is
neither returned nor exempt; `dbg_*` are compared only where the runner provides them.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .golden_calls import DEBUG_PREFIX, GoldenRun

__all__ = ["Comparison", "GoldenReport", "relative_error", "check_golden", "main"]

DEFAULT_TOLERANCE = 1e-5


@dataclass
class Comparison:
    name: str  # the io file's array name, e.g. "out_points" or "io_inference/out_scale"
    error: float | None  # relative error; None when not computed (see `problem`)
    problem: str = ""  # "" when compared; else why it failed (missing, shape, non-finite)
    optional: bool = False  # dbg_* entries: reported, never required

    def passed(self, tolerance: float) -> bool:
        return not self.problem and self.error is not None and self.error <= tolerance


@dataclass
class GoldenReport:
    folder: Path
    golden: str
    comparisons: list[Comparison]
    exempt: dict[str, str]
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(c.passed(self.tolerance) for c in self.comparisons)

    def lines(self) -> list[str]:
        out = [f"== {self.golden} ({self.folder})"]
        for c in self.comparisons:
            if c.problem:
                status, value = "FAIL", c.problem
            else:
                status = "ok" if c.passed(self.tolerance) else "FAIL"
                value = f"{c.error:.3e}"
            out.append(f"  {status:4s} {c.name:44s} {value}")
        for name, reason in self.exempt.items():
            out.append(f"  exempt {name}: {reason}")
        out.append(f"  -> {'PASS' if self.passed else 'FAIL'} (tolerance {self.tolerance:g})")
        return out


def relative_error(ours: np.ndarray, golden: np.ndarray) -> float:
    """max|ours - golden| / max(1, max|golden|); booleans: fraction of differing elements."""
    if golden.dtype == np.bool_ or ours.dtype == np.bool_:
        return float(np.mean(ours.astype(bool) != golden.astype(bool))) if golden.size else 0.0
    ours64, golden64 = ours.astype(np.float64), golden.astype(np.float64)
    if golden64.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(golden64))))
    return float(np.max(np.abs(ours64 - golden64))) / scale


def _compare(name: str, ours: np.ndarray | None, golden: np.ndarray, optional: bool = False) -> Comparison:
    if ours is None:
        return Comparison(name, None, "missing from our outputs", optional)
    ours = np.asarray(ours)
    if ours.shape != golden.shape:
        return Comparison(name, None, f"shape {ours.shape} != golden {golden.shape}", optional)
    if ours.dtype != np.bool_ and not np.all(np.isfinite(ours)):
        return Comparison(name, None, "non-finite values in ours", optional)
    return Comparison(name, relative_error(ours, golden), "", optional)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _compare_file(io: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray], exempt: Mapping[str, str],
                  label: str) -> list[Comparison]:
    """Every `out_*` of one io file (unless exempt) plus the `dbg_*` we provide."""
    results: list[Comparison] = []
    for key in sorted(io):
        if key.startswith("out_"):
            name = key[len("out_"):]
            if f"{label}{name}" in exempt:
                continue
            results.append(_compare(f"{label}{key}", ours.get(name), io[key]))
    for name, value in ours.items():
        if name.startswith(DEBUG_PREFIX):
            if name in io:
                results.append(_compare(f"{label}{name}", value, io[name], optional=True))
        elif f"out_{name}" not in io:
            results.append(Comparison(f"{label}out_{name}", None, "returned by us but absent from the golden"))
    # a failing optional dbg_* comparison still fails the run: it points at a real difference
    return results


def check_golden(folder: str | Path, tolerance: float = DEFAULT_TOLERANCE) -> GoldenReport:
    from safetensors.torch import load_file

    folder = Path(folder)
    for required in ("config.json", "weights.safetensors", "io.npz"):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"{folder}: golden folder lacks {required}")
    config = json.loads((folder / "config.json").read_text())
    golden = str(config["golden"])
    runner = importlib.import_module(f"unish_model.golden_calls.{golden}")
    weights = dict(load_file(str(folder / "weights.safetensors"), device="cpu"))
    io = _load_npz(folder / "io.npz")
    extra_io = {p.stem: _load_npz(p) for p in sorted(folder.glob("io_*.npz"))}
    inputs = {k: v for k, v in io.items() if k.startswith("in_")}
    for stem, data in extra_io.items():
        inputs.update({f"{stem}/{k}": v for k, v in data.items() if k.startswith("in_")})

    result: GoldenRun = runner.run(config, weights, inputs)
    comparisons = _compare_file(io, result.outputs, result.exempt, "")
    for stem, data in extra_io.items():
        ours = result.extra.get(stem) or result.extra.get(f"{stem}.npz")
        exempt_all = f"{stem}/*" in result.exempt
        if ours is None and not exempt_all:
            comparisons.append(Comparison(f"{stem}.npz", None, "runner returned nothing for this io file"))
            continue
        if ours is not None:
            comparisons.extend(_compare_file(data, ours, result.exempt, f"{stem}/"))
    return GoldenReport(folder, golden, comparisons, dict(result.exempt), tolerance)


def expand_golden_folders(paths: Sequence[Path]) -> list[Path]:
    """A golden folder as given, or every golden folder directly inside a parent folder given instead
    (so `goldens tests/data/goldens` checks them all); plain files such as a README are skipped."""
    found: list[Path] = []
    for path in paths:
        if (path / "config.json").is_file() or not path.is_dir():
            if path.is_dir() or not path.exists():
                found.append(path)  # a missing folder still gets its clear error
            continue
        found.extend(sorted(p for p in path.iterdir() if (p / "config.json").is_file()))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unish_model.goldens", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="golden folders (config.json, weights, io.npz)")
    parser.add_argument("--tol", type=float, default=DEFAULT_TOLERANCE,
                        help="max allowed max|ours-golden|/max(1,max|golden|) (default %(default)g)")
    args = parser.parse_args(argv)
    all_passed = True
    folders = expand_golden_folders(args.folders)
    if not folders:
        print(f"no golden folder (one with config.json) in {', '.join(map(str, args.folders))}")
        return 1
    for folder in folders:
        try:
            report = check_golden(folder, args.tol)
        except Exception as exc:  # one broken golden must not hide the others' results
            print(f"== {folder}\n  ERROR {type(exc).__name__}: {exc}")
            all_passed = False
            continue
        print("\n".join(report.lines()))
        all_passed &= report.passed
    print("ALL PASS" if all_passed else "SOME FAILED")
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
