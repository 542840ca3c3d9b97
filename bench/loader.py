"""Throughput of the training loader on stage-1 batches, against reading and JPEG-decoding the same members.

Curates a real run first (vtest looped to `--seconds`, 5 s windows of 30 frames at 518x294, with the tests'
cheap synthetic masks/depth/keypoints stages, so every stage-1 family is stored in its real format), then:

  raw      one process reads every shard's tar members and JPEG-decodes every frame (cv2), nothing else
  loader   ClipLoader(stage=1, device cpu): digests checked against the index; in the worker JPEG and zlib
           (depth planes, mask bits) straight into batches of 2; in this process the expansion (frames to
           float32 (T,3,H,W), depth through its code table, mask bits); 1 and 2 DataLoader workers, after a
           warm-up epoch. On a GPU the expansion runs there instead (`device="cuda"`).

    .venv/bin/python bench/loader.py [--seconds 120] [--epochs 2]

The last line reads `loader_clips_per_s_per_worker=<1-worker clips/s> loader_vs_raw=<raw s / loader s per clip>`.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic label stages (tests/train_data.py)


def make_run(work: Path, seconds: float) -> Path:
    from train_data import curate_training_run

    src = work / "looped.mp4"
    loops = max(0, int(np.ceil(seconds / 20.0)) - 1)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops), "-i",
                    str(REPO / "examples/media/vtest_20s.mp4"), "-t", str(seconds), "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(src)], check=True)
    return curate_training_run(REPO, work, {"vtest": str(src)}, shard_max_samples=8, window_seconds=5.0,
                               window_frames=30)


def raw_pass(urls: list[str]) -> tuple[int, float]:
    from shards.tario import raw_samples

    start, clips = time.perf_counter(), 0
    for url in urls:
        for members in raw_samples(url):
            for name, data in members.items():
                if name.endswith(".jpg"):
                    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            clips += 1
    return clips, time.perf_counter() - start


def loader_pass(run: Path, workers: int, epochs: int, frames_dtype: str = "float32") -> tuple[int, float]:
    from unish_model.train.data import ClipLoader, LoaderConfig

    loader = ClipLoader(str(run), LoaderConfig(stage=1, batch_size=2, workers=workers, seed=0,
                                               frames_dtype=frames_dtype))
    for _ in loader:  # warm-up epoch: workers start, files enter the page cache
        pass
    start, clips = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            clips += len(batch.keys)
    return clips, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the looped source video")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loader setting")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.seconds)
        from unish_model.train.sources import resolve_shards

        urls = [s.url for s in resolve_shards(str(run))]
        mb = sum(Path(u).stat().st_size for u in urls) / 1e6
        raw_pass(urls)  # warm the page cache
        rows = []
        n, secs = 0, 0.0
        for _ in range(args.epochs):
            c, s = raw_pass(urls)
            n, secs = n + c, secs + s
        raw_per_clip = secs / n
        rows.append(("raw read + JPEG decode", 1, n / secs, n / secs, raw_per_clip))
        for workers in (1, 2):
            c, s = loader_pass(run, workers, args.epochs)
            rows.append((f"ClipLoader stage 1, {workers} worker{'s' * (workers > 1)}", workers, c / s, c / s / workers,
                         s / c))
        c, s = loader_pass(run, 1, args.epochs, "uint8")
        rows.append(("  same, frames left uint8 (1 worker)", 1, c / s, c / s, s / c))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + \
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{len(urls)} shards, {mb:.1f} MB, {n // args.epochs} clips of 30 frames 518x294 per epoch; "
          f"{args.epochs} timed epochs each")
    print(f"{'reader':<36} {'workers':>7} {'clips/s':>8} {'per worker':>10} {'ms/clip':>8}")
    for name, workers, total, per, per_clip in rows:
        print(f"{name:<36} {workers:>7} {total:>8.1f} {per:>10.1f} {per_clip * 1e3:>8.1f}")
    print(f"peak RSS (this process + largest child): {peak:.0f} MB")
    one = rows[1]
    print(f"loader_clips_per_s_per_worker={one[3]:.1f} loader_vs_raw={raw_per_clip / one[4]:.2f}")


if __name__ == "__main__":
    main()
