"""Start-up time of each `unish` command, as a user meets it: a fresh process per call.

    python bench/cli.py [--runs 5] [--run RUN] [--only help,inspect]

Every command runs `--runs` times as `python -m flows.cli ...` (the `unish` script is `flows.cli:main`), and the
table gives the median, the fastest and the slowest wall time, and the modules the process had imported
(`python -X importtime`, counted in a separate run). `interpreter` is `python -c pass`: the floor. `inspect` and
`verify` read RUN (default: a run folder made here with empty tables, so only start-up is measured). The goal for
`unish --help` is under 1 s on the project's 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commands(run: Path) -> dict[str, list[str]]:
    return {
        "interpreter": ["-c", "pass"],
        "--help": ["--help"],
        "inspect RUN": ["inspect", str(run), "--json"],
        "verify RUN": ["verify", str(run), "--json"],
        "curate --help": ["curate", "--help"],
        "relabel --help": ["relabel", "--help"],
        "infer --help": ["infer", "--help"],
        "eval --help": ["eval", "--help"],
        "eval metrics --help": ["eval", "metrics", "--help"],
        "weights list": ["weights", "list"],
        "weights check --profile paper": ["weights", "check", "--profile", "paper", "--no-hash"],
        "release --help": ["release", "--help"],
        "takedown --help": ["takedown", "--help"],
    }


def argv(args: list[str]) -> list[str]:
    return [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "flows.cli", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200",
            "UNISH_WEIGHTS": os.environ.get("UNISH_WEIGHTS", str(Path(tempfile.gettempdir()) / "unish-bench-weights"))}


def time_once(args: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    r = subprocess.run(argv(args), cwd=REPO, env=env(), capture_output=True)
    return time.perf_counter() - start, r.returncode


def modules_imported(args: list[str]) -> int:
    cmd = argv(args)
    r = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=REPO, env=env(), capture_output=True, text=True)
    return sum(line.startswith("import time:") for line in r.stderr.splitlines()) - 1  # minus the header


def empty_run(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from shards.index import INDEX_FILE, VIDEOS_FILE, rows_to_table, write_table_atomic
    from shards.schema import INDEX_SCHEMA, VIDEOS_SCHEMA

    write_table_atomic(rows_to_table([], INDEX_SCHEMA), folder / INDEX_FILE)
    write_table_atomic(rows_to_table([], VIDEOS_SCHEMA), folder / VIDEOS_FILE)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="calls per command (median reported)")
    ap.add_argument("--run", type=Path, default=None, help="a curated run for inspect and verify")
    ap.add_argument("--only", default="", help="comma-separated command labels (default: all)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="unish-bench-cli-") as tmp:
        run = a.run or empty_run(Path(tmp))
        table = commands(run)
        chosen = [c for c in table if not a.only or c in a.only.split(",")]
        rows = []
        for label in chosen:
            times, codes = zip(*(time_once(table[label]) for _ in range(a.runs)))
            rows.append((label, statistics.median(times), min(times), max(times), modules_imported(table[label]),
                         sorted(set(codes))))
            print(f"  {label}: {statistics.median(times):.2f} s", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'command':<{width}}  median s  min s  max s  modules  exit")
    for label, med, lo, hi, mods, codes in rows:
        print(f"{label:<{width}}  {med:8.2f}  {lo:5.2f}  {hi:5.2f}  {mods:7d}  {','.join(map(str, codes))}")
    helps = [r for r in rows if r[0] == "--help"]
    if helps:
        print(f"help_s={helps[0][1]:.2f} (goal < 1.0)")


if __name__ == "__main__":
    main()
