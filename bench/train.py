"""Training step time and peak memory per stage on this CPU (the tiny model), and the share of a step spent
waiting for data.

Curates two real runs first (vtest, 5 s windows of `--frames` frames at 518x294: masks, depth and keypoints
for stages 1 and 3; masks and ground truth for stage 2; the tests' synthetic labelling stages, in their real
formats), then trains each stage for `--steps` optimiser steps in a fresh process (the tiny random model,
batch `--batch`, one data-loader worker) and reads its metrics.jsonl. The first step (start-up, first batch)
is left out of the timing. Peak memory is the training process's maximum resident set.

    .venv/bin/python bench/train.py [--frames 30] [--batch 1] [--steps 4]

A GPU step of the paper-size model is timed by `bench/gpu_check.py` where a GPU is lent.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic label stages (tests/train_data.py)


def make_runs(work: Path, seconds: float, frames: int) -> dict[str, Path]:
    from train_data import SYNTHETIC_GT_STAGES, SYNTHETIC_STAGES, curate_training_run

    runs = {}
    for name, stages in (("real", SYNTHETIC_STAGES), ("gt", SYNTHETIC_GT_STAGES)):
        (work / name).mkdir()
        runs[name] = curate_training_run(REPO / "examples" / "media", work / name, {"vtest": "vtest_20s.mp4"},
                                         shard_max_samples=8, window_seconds=5.0, window_frames=frames,
                                         stages=stages, spans={"vtest": (0.0, seconds)})
    return runs


def child(argv: list[str]) -> None:
    """Train in this process, then print its peak RSS (MB) as the last line."""
    from unish_model.train.cli import main

    main(argv)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_stage(stage: int, data: Path, out: Path, body: Path, frames: int, batch: int, steps: int) -> dict:
    args = ["--stage", str(stage), "--data", str(data), "--out", str(out), "--tiny-random", "--body-model", str(body),
            "--frames", str(frames), "--batch-size", str(batch), "--grad-accum", "1", "--workers", "1",
            "--max-steps", str(steps), "--no-progress", "--checkpoint-every", "100000", "--warmup-epochs", "0"]
    done = subprocess.run([sys.executable, __file__, "--child", *args], cwd=REPO, capture_output=True, text=True,
                          check=True)
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    step_s = [batch / r["clips_per_s"] for r in records]
    return {"stage": stage, "step_s": sorted(step_s)[len(step_s) // 2], "wait": sum(r["data_wait"] for r in records)
            / len(records), "peak_mb": peak, "loss": records[-1]["loss"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps per stage (the first is not timed)")
    args = ap.parse_args()
    from unish_model.body import write_synthetic_body_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seconds = 5.0 * max(2, args.batch * 2)  # enough clips for the batches
        runs = make_runs(work, seconds + 0.01, args.frames)
        body = write_synthetic_body_model(work / "smpl.npz")
        rows = [bench_stage(stage, runs["gt" if stage == 2 else "real"], work / f"train{stage}", body, args.frames,
                            args.batch, args.steps) for stage in (1, 2, 3)]
    print(f"tiny model on the CPU, batch {args.batch} x {args.frames} frames at 518x294, median of {args.steps - 1} "
          f"steps after the first; one loader worker")
    print(f"{'stage':<28} {'step s':>8} {'data wait':>10} {'peak MB':>8}")
    names = {1: "1 human surface refinement", 2: "2 coarse alignment", 3: "3 fine alignment"}
    for r in rows:
        print(f"{names[r['stage']]:<28} {r['step_s']:>8.2f} {r['wait'] * 100:>9.1f}% {r['peak_mb']:>8.0f}")
    print("train_step_s=" + ",".join(f"{r['step_s']:.2f}" for r in rows) +
          " data_wait=" + ",".join(f"{r['wait']:.3f}" for r in rows))


if __name__ == "__main__":
    main()
