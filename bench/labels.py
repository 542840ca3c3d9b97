"""Benchmark the labelling stages: frames/s of each labeller on this machine and the bytes each adds to
a 30-frame clip, plus the depth codec's size and worst error on a smooth synthetic scene.

    .venv/bin/python bench/labels.py                 # tiny sizes where the paper's are too slow on a CPU
    .venv/bin/python bench/labels.py --full          # adds the paper's sizes (slow on a CPU)
    python bench/labels.py --full --device cuda      # a GPU box

Frames: the real frames of tests/data/labels (294x518 portrait, one person, hand-drawn boxes standing
in for the people stage), cycled to the clip length. Each labeller is one `Labeller` entry in
`LABELLERS`; a new stage (keypoints, ...) is one more entry. Rows with random weights measure the
real architecture's compute, not its output quality; their depth bytes are of random-weight output
(see the synthetic-scene rows for what smooth real depth costs).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from shards import depth_codec  # noqa: E402
from shards.sample import label_members  # noqa: E402
from shards.schema import WINDOW_FRAMES  # noqa: E402
from tasks.stage import ClipRejected, ClipWindow, LabelStage  # noqa: E402

DATA = REPO / "tests" / "data" / "labels"


@dataclass
class Labeller:
    """One benchmark row: a stage factory and the clip length it is timed on."""

    name: str  # the stage's registered name
    make: Callable[[argparse.Namespace], LabelStage]
    setting: str  # what runs (backend, size, weights)
    frames: int = WINDOW_FRAMES  # frames timed (fewer where a CPU is too slow; bytes are scaled to 30)
    full_only: bool = False  # paper-size rows: only with --full


def _sam2(args: argparse.Namespace, weights: str, image_size: int | None) -> LabelStage:
    from tasks.masks import sam2_masks_stage
    from tasks.weights import weights_path

    real = weights_path(weights).is_file()
    return sam2_masks_stage(weights=weights, allow_random_weights=not real, image_size=image_size,
                            device=args.device, min_box_fill=0.0, min_in_box=0.0)


def _moge(args: argparse.Namespace, num_tokens: int | None) -> LabelStage:
    from tasks.depth import moge_depth_stage
    from tasks.weights import weights_path

    real = weights_path("moge-2-vitl").is_file()
    return moge_depth_stage(allow_random_weights=not real, num_tokens=num_tokens, device=args.device,
                            min_valid_frac=0.0)


def _stage(name: str, **params: Any) -> Callable[[argparse.Namespace], LabelStage]:
    def make(args: argparse.Namespace) -> LabelStage:
        from tasks.stage import build_stage

        return build_stage(name, **params)

    return make


LABELLERS: list[Labeller] = [
    Labeller("masks:mediapipe", _stage("masks:mediapipe"), "selfie segmentation (bundled weights)"),
    Labeller("masks:sam2", lambda a: _sam2(a, "sam2.1_hiera_tiny", 512), "SAM2.1 tiny, 512 px input", frames=6),
    Labeller("masks:sam2", lambda a: _sam2(a, "sam2.1_hiera_large", None), "SAM2.1 large, 1024 px (paper)",
             frames=4, full_only=True),
    Labeller("depth:moge", lambda a: _moge(a, 300), "MoGe-2 ViT-L, 300 tokens", frames=2),
    Labeller("depth:moge", lambda a: _moge(a, None), "MoGe-2 ViT-L, 3600 tokens (paper)", frames=2,
             full_only=True),
    Labeller("depth:none", _stage("depth:none"), "lite: depth recorded absent"),
    Labeller("keypoints:mediapipe", _stage("keypoints:mediapipe"), "BlazePose full on person crops (bundled)"),
    Labeller("keypoints:camerahmr", _stage("keypoints:camerahmr"), "CameraHMR ViT-H + SMPL (weights folder)",
             frames=4),
]


def real_frames(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n frames cycled from tests/data/labels and their hand-drawn person boxes."""
    import cv2

    stills = [cv2.imread(str(DATA / f"frame_{i}.jpg"))[..., ::-1] for i in range(4)]
    boxes = np.asarray(json.loads((DATA / "boxes.json").read_text())["boxes"], np.float32)
    return np.stack([stills[i % 4] for i in range(n)]), np.stack([boxes[i % 4] for i in range(n)])


def make_clip(n: int) -> ClipWindow:
    frames, boxes = real_frames(n)
    clip = ClipWindow(f"bench-000000000-{n:09d}", "bench", 0.0, n / 6.0, frames, np.arange(n) / 6.0)
    clip.labels["people"] = {"box": boxes, "score": np.ones(n, np.float32), "present": np.ones(n, bool)}
    return clip


def family_bytes(clip: ClipWindow, family: str) -> int:
    return sum(len(v) for v in label_members({family: clip.labels.get(family, {})}).values())


@dataclass
class Row:
    labeller: Labeller
    frames_per_s: float = math.nan
    bytes_per_clip: float = math.nan
    outcome: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_labeller(lab: Labeller, args: argparse.Namespace) -> Row:
    row = Row(lab)
    try:
        stage = lab.make(args)
        stage.setup()
        stage(make_clip(1))  # warm-up: first-call allocations and lazy init
    except ClipRejected:
        pass
    except Exception as e:  # a missing backend or weights: report the row, keep benchmarking
        row.outcome = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
        return row
    clip = make_clip(lab.frames)
    t0 = time.perf_counter()
    try:
        clip = stage(clip)
        row.outcome = "ok"
    except ClipRejected as r:
        row.outcome = f"rejected:{r.rule}"
    seconds = time.perf_counter() - t0
    row.frames_per_s = lab.frames / seconds
    if row.outcome == "ok":
        row.bytes_per_clip = family_bytes(clip, stage.name) * WINDOW_FRAMES / lab.frames
        if lab.frames != WINDOW_FRAMES:
            row.outcome += f" (bytes scaled from {lab.frames} frames)"
    return row


def codec_rows(t: int = WINDOW_FRAMES, h: int = 294, w: int = 518) -> list[tuple[str, int, float]]:
    """(encoding, bytes for a 30-frame clip, worst relative error) on a smooth synthetic room scene."""
    v, u = np.mgrid[0:h, 0:w] + 0.5
    f = 0.9 * w
    dx, dy = (u - w / 2) / f, (v - h / 2) / f
    rng = np.random.default_rng(0)
    frames = []
    for i in range(t):
        pitch = 0.15 + 0.005 * i
        ray_y = dy * math.cos(pitch) + math.sin(pitch)
        with np.errstate(divide="ignore"):
            d = np.minimum(np.where(ray_y > 1e-6, 1.6 / ray_y, np.inf), 7.0)
        wall = np.where(dx > 1e-6, 2.5 / np.maximum(dx, 1e-6), np.inf)
        d = np.minimum(d, wall)
        pz = 3.0 + 0.02 * i
        body = ((dx * pz - 0.02 * i) / 0.35) ** 2 + ((dy * pz - 0.2) / 0.9) ** 2 < 1
        d = np.where(body, np.minimum(d, pz - 0.15), d)
        d *= 1 + 0.003 * np.sin(u / 13 + i) * np.cos(v / 29) + 2e-4 * rng.standard_normal((h, w))
        frames.append(d)
    depth = np.stack(frames).astype(np.float32)
    rows = []
    for eps in (1e-3, 2.5e-4):
        enc = depth_codec.encode(depth, max_rel_error=eps)
        out, _ = depth_codec.decode(enc.payload, enc.header())
        err = float(np.max(np.abs(out / depth - 1)))
        rows.append((f"log16z, bound {enc.max_rel_error:.2e}", enc.nbytes, err))
    half = depth.astype(np.float16)
    err16 = float(np.max(np.abs(half.astype(np.float64) / depth - 1)))
    rows.append(("float16 .npy", half.nbytes + 128, err16))
    rows.append(("float16 + zlib", len(zlib.compress(half.tobytes(), 6)), err16))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also the paper's sizes (slow on a CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", default="", help="comma-separated stage names to run")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    only = {s for s in args.only.split(",") if s}
    print(f"device {args.device}, torch threads {torch.get_num_threads()}; clips of real 294x518 frames; "
          f"bytes per {WINDOW_FRAMES}-frame clip")
    print()
    print(f"| {'labeller':<16} | {'setting':<40} | {'frames':>6} | {'frames/s':>8} | {'KB/clip':>8} | outcome")
    print(f"|{'-' * 18}|{'-' * 42}|{'-' * 8}|{'-' * 10}|{'-' * 10}|--------")
    for lab in LABELLERS:
        if (lab.full_only and not args.full) or (only and lab.name not in only):
            continue
        row = run_labeller(lab, args)
        kb = f"{row.bytes_per_clip / 1024:8.1f}" if not math.isnan(row.bytes_per_clip) else f"{'-':>8}"
        fps = f"{row.frames_per_s:8.3g}" if not math.isnan(row.frames_per_s) else f"{'-':>8}"
        print(f"| {lab.name:<16} | {lab.setting:<40} | {lab.frames:>6} | {fps} | {kb} | {row.outcome}", flush=True)

    print()
    print("depth storage, smooth synthetic room scene, 30 frames at 518x294 (float32 raw: "
          f"{30 * 294 * 518 * 4 / 1024:.0f} KB)")
    print()
    print(f"| {'encoding':<28} | {'KB/clip':>8} | worst rel. error")
    print(f"|{'-' * 30}|{'-' * 10}|-----------------")
    for name, nbytes, err in codec_rows():
        print(f"| {name:<28} | {nbytes / 1024:8.1f} | {err:.2e}")


if __name__ == "__main__":
    main()
