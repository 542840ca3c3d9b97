"""Benchmark the people stage: frames/s of each backend on real 30-frame windows at the model size,
and the share of the curation spine's time (probe + decode/shots/windows + pack) the stage adds.

    .venv/bin/python bench/people.py [--video examples/media/vtest_20s.mp4] [--windows 4]
    python bench/people.py --no-spine --device cuda --fp16      # backends only (a GPU box)

The spine runs through tasks.pipeline's plain functions (no Prefect) on the video; each backend then
labels the windows it produced. With --no-spine the windows are a slow pan over the real frames in
tests/data/people and the spine column is left out. YOLO uses `yolo11n` from the weights folder when
it is there, else the same architecture with random weights from its yaml (the same compute per
frame; with random weights it finds nothing, so NMS and tracking cost less than on real weights).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import tasks.people as people  # noqa: E402  (sets Ultralytics' switches before it is imported)
from tasks.stage import BackendUnavailable, ClipRejected, ClipWindow  # noqa: E402
from tasks.weights import weights_path  # noqa: E402


def pan_windows(n_windows: int, frames: int = 30) -> list[ClipWindow]:
    """Windows made from the real frames in tests/data/people, panned 2 px per frame (no decoder needed)."""
    import cv2

    stills = [cv2.imread(str(p))[..., ::-1] for p in sorted((REPO / "tests" / "data" / "people").glob("*.jpg"))]
    clips = []
    for k in range(n_windows):
        img = stills[k % len(stills)]
        f = np.stack([np.roll(img, 2 * i, axis=1) for i in range(frames)])
        clips.append(ClipWindow(f"pan-{k:09d}-{k + 1:09d}", "pan", k * 5.0, k * 5.0 + 5, f, np.arange(frames) / 6))
    return clips


def run_spine(video: Path, work: Path, max_windows: int) -> tuple[float, list[ClipWindow]]:
    """Seconds for probe + segment + pack of the video's first `max_windows` windows, and the ok clips."""
    from shards.schema import STATUS_OK
    from tasks import pipeline, staging
    from tasks.fetch import Fetched
    from tasks.manifest import ManifestRow

    params = pipeline.SpineParams()
    end = params.windows.seconds * max_windows
    row = ManifestRow(1, str(video), "path", video.stem.replace(".", "_"), 0.0, end)
    fetched = Fetched(str(video), 0.0, False)
    workdir = pipeline.video_workdir(work, row)
    t0 = time.perf_counter()
    info = pipeline.run_probe(fetched, workdir)
    windows = pipeline.run_segment(row, fetched, info, workdir, params)
    pipeline.run_pack(row, workdir, windows, [], work / "shards", params.shard_limits)
    spine_s = time.perf_counter() - t0
    clips = [staging.load_clip(workdir / "clips" / w["key"]) for w in windows if w["status"] == STATUS_OK]
    return spine_s, clips


def time_stage(stage, clips: list[ClipWindow], repeats: int) -> tuple[float, list[str]]:
    """Best-of-`repeats` seconds to label all clips, and each clip's outcome."""
    stage.setup()
    c = clips[0]
    try:  # warm-up: the first forward pass fuses layers and allocates
        stage(ClipWindow(c.key, c.source_id, c.start_s, c.end_s, c.frames, c.frame_times_s, c.meta))
    except ClipRejected:
        pass
    best = float("inf")
    outcomes: list[str] = []
    for _ in range(repeats):
        outcomes = []
        t0 = time.perf_counter()
        for c in clips:
            clip = ClipWindow(c.key, c.source_id, c.start_s, c.end_s, c.frames, c.frame_times_s, c.meta)
            try:
                stage(clip)
                outcomes.append("ok")
            except ClipRejected as r:
                outcomes.append(r.rule)
        best = min(best, time.perf_counter() - t0)
    return best, outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=REPO / "examples" / "media" / "vtest_20s.mp4")
    ap.add_argument("--windows", type=int, default=4, help="5-s windows of the video to run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true", help="YOLO in half precision (GPU)")
    ap.add_argument("--no-spine", action="store_true", help="backends only, on panned test frames")
    args = ap.parse_args()

    if args.no_spine:
        spine_s, clips = None, pan_windows(args.windows)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            spine_s, clips = run_spine(args.video, Path(tmp), args.windows)
    if not clips:
        sys.exit(f"{args.video}: no window passed the spine; pick another video")
    n_frames = sum(len(c.frames) for c in clips)
    h, w = clips[0].frames.shape[1:3]
    spine_per_window = spine_s / len(clips) if spine_s is not None else None

    yolo_weights = "yolo11n" if weights_path("yolo11n").is_file() else "yolo11n.yaml"
    backends = {
        f"yolo ({yolo_weights}{', random weights' if yolo_weights.endswith('.yaml') else ''})":
            lambda: people.yolo_people_stage(weights=yolo_weights, device=args.device, fp16=args.fp16,
                                             **({"person_class": 0} if yolo_weights.endswith(".yaml") else {})),
        "hog (OpenCV)": people.hog_people_stage,
    }
    source = "panned test frames (no spine)" if spine_s is None else f"video {args.video.name}"
    print(f"{source}: {len(clips)} window(s) x {len(clips[0].frames)} frames at {w}x{h}; device {args.device}"
          f"{' fp16' if args.fp16 else ''}")
    if spine_per_window is not None:
        print(f"spine: {spine_per_window:.2f} s/window (probe + decode/shots/windows + pack)")
    print()
    print(f"| {'backend':<36} | {'frames/s':>8} | {'s/window':>8} | {'adds to spine':>13} | outcomes")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 10}|{'-' * 15}|---------")
    for label, make in backends.items():
        try:
            seconds, outcomes = time_stage(make(), clips, args.repeats)
        except BackendUnavailable as e:
            print(f"| {label:<36} | {'-':>8} | {'-':>8} | {'-':>13} | unavailable: {e}")
            continue
        per_window = seconds / len(clips)
        added = f"{100 * per_window / spine_per_window:12.0f}%" if spine_per_window else f"{'-':>13}"
        print(f"| {label:<36} | {n_frames / seconds:8.1f} | {per_window:8.3f} | {added} | {', '.join(outcomes)}")


if __name__ == "__main__":
    main()
