"""Throughput of the training loader on stage-1 batches, against reading and decoding the same members.

Curates a real run first (vtest looped to `--seconds`, 5 s windows of 30 frames at 518x294, labelled by the
tests' cheap synthetic masks/depth/keypoints stages, so every stage-1 family is stored in its real format and
the depth is as smooth, and as compressible, as a real depth map), then, on the same shards:

  raw JPEG        one process reads every shard's tar members and JPEG-decodes every frame (cv2); nothing else
  raw + labels    the same, plus the zlib half of the stage-1 labels (depth planes, mask bits): the decoding
                  a CPU cannot hand to a GPU
  loader (GPU)    ClipLoader's workers as a GPU run uses them (LoaderConfig(device="cuda")): digests checked,
                  shuffle buffer, stage filter, shape buckets, JPEG and zlib straight into compact batches of 2;
                  the elementwise rest happens on the GPU and is not timed here
  loader (CPU)    ClipLoader(device="cpu"), training on the CPU: the workers also finish the batch (frames to
                  float32 (T,3,H,W), depth through its code table, masks unpacked)

Each loader row runs after a warm-up epoch (workers started, files in the page cache).

    .venv/bin/python bench/loader.py [--seconds 120] [--epochs 2]

The last line reads `loader_clips_per_s_per_worker=<GPU-path clips/s of one worker> loader_vs_raw=<raw JPEG
seconds per clip / loader seconds per clip>`.
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


def raw_pass(urls: list[str], labels: bool) -> tuple[int, float]:
    from shards import depth_codec
    from shards.mask_codec import packed_bits
    from shards.tario import raw_samples
    from unish_model.train.clips import family_entries

    start, clips = time.perf_counter(), 0
    for url in urls:
        for members in raw_samples(url):
            for name, data in members.items():
                if name.endswith(".jpg"):
                    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
            if labels:
                depth = family_entries(members, "depth")
                depth_codec.inflate_planes(depth["code_z"].tobytes(), depth_codec.header_shape(depth["codec"]))
                packed_bits(family_entries(members, "masks"))
            clips += 1
    return clips, time.perf_counter() - start


def timed_epochs(batches, epochs: int) -> tuple[int, float]:
    for _ in batches():  # warm-up epoch
        pass
    start, clips = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in batches():
            clips += len(batch.keys)
    return clips, time.perf_counter() - start


def gpu_path(run: Path, workers: int, epochs: int) -> tuple[int, float]:
    """The workers of a GPU run: compact batches out of a DataLoader, not expanded (that is the GPU's part)."""
    from torch.utils.data import DataLoader

    from unish_model.train.data import LoaderConfig, ShardClipDataset, _worker_init, worker_context
    from unish_model.train.sources import resolve_shards

    dataset = ShardClipDataset(resolve_shards(str(run)), LoaderConfig(stage=1, batch_size=2, workers=workers,
                                                                      device="cuda"))
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=True,
                        worker_init_fn=_worker_init, multiprocessing_context=worker_context())
    return timed_epochs(lambda: loader, epochs)


def cpu_path(run: Path, workers: int, epochs: int) -> tuple[int, float]:
    from unish_model.train.data import ClipLoader, LoaderConfig

    loader = ClipLoader(str(run), LoaderConfig(stage=1, batch_size=2, workers=workers))
    return timed_epochs(lambda: loader, epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the looped source video")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per setting")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.seconds)
        from unish_model.train.sources import resolve_shards

        urls = [s.url for s in resolve_shards(str(run))]
        mb = sum(Path(u).stat().st_size for u in urls) / 1e6
        rows = []
        for name, labels in (("raw JPEG", False), ("raw + labels (zlib)", True)):
            raw_pass(urls, labels)  # page cache
            c, s = raw_pass(urls, labels)
            rows.append((name, 1, c, s))
        for workers in (1, 2):
            rows.append((f"loader (GPU path), {workers} worker{'s' * (workers > 1)}", workers,
                         *gpu_path(run, workers, args.epochs)))
        rows.append(("loader (CPU training), 1 worker", 1, *cpu_path(run, 1, args.epochs)))
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"{len(urls)} shards, {mb:.1f} MB, {rows[0][2]} clips of 30 frames 518x294 (stage 1: masks, depth, "
          f"keypoints); loaders: batches of 2, {args.epochs} timed epochs after a warm-up")
    print(f"{'reader':<36} {'workers':>7} {'clips/s':>8} {'per worker':>10} {'ms/clip':>8}")
    for name, workers, clips, secs in rows:
        print(f"{name:<36} {workers:>7} {clips / secs:>8.1f} {clips / secs / workers:>10.1f} {secs / clips * 1e3:>8.1f}")
    print(f"peak RSS of one process: {peak / 1024:.0f} MB")
    raw_ms = rows[0][3] / rows[0][2]
    one = rows[2]
    print(f"loader_clips_per_s_per_worker={one[2] / one[3]:.1f} loader_vs_raw={raw_ms / (one[3] / one[2]):.2f}")


if __name__ == "__main__":
    main()
