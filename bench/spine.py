"""Spine benchmark: decode-to-6fps-and-resize + shot detection (one pass) and packing, against
`ffmpeg -i X -vf fps=6,scale=518:294 -f null -` in the same run.

    python bench/spine.py [--seconds 60] [--keep]

Prints a table and a last line `spine_vs_ffmpeg=<ffmpeg seconds / spine seconds>` (>= 0.5 is the target).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shards.sample import encode_json  # noqa: E402
from shards.schema import clip_key  # noqa: E402
from shards.writer import ShardWriter  # noqa: E402
from tasks.decode import segment_video  # noqa: E402
from tasks.probe import probe_video  # noqa: E402
from shards.sample import encode_jpeg  # noqa: E402


def make_test_video(path: Path, seconds: int) -> None:
    """1080p30 H.264 from ffmpeg's test sources with two hard cuts, placed inside windows (at 28% and 63%)."""
    parts = [round(seconds * 0.28, 2), round(seconds * 0.35, 2), round(seconds * 0.37, 2)]
    sources = [f"testsrc2=size=1920x1080:rate=30:duration={parts[0]}",
               f"mandelbrot=size=1920x1080:rate=30,trim=duration={parts[1]}",
               f"smptehdbars=size=1920x1080:rate=30:duration={parts[2]}"]
    args = ["ffmpeg", "-v", "error", "-y"]
    for s in sources:
        args += ["-f", "lavfi", "-i", s]
    args += ["-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1[v]", "-map", "[v]", "-c:v", "libx264",
             "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(args, check=True)


def time_ffmpeg(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", "fps=6,scale=518:294", "-f", "null", "-"],
                   check=True)
    return time.perf_counter() - t


def time_scenedetect_default(path: Path) -> float:
    from scenedetect import ContentDetector, detect

    t = time.perf_counter()
    detect(str(path), ContentDetector())
    return time.perf_counter() - t


def time_spine(path: Path, out: Path) -> dict:
    info = probe_video(path)
    windows = []
    t0 = time.perf_counter()
    report = segment_video(info, 0.0, (None, None), windows.append)
    t1 = time.perf_counter()
    n_ok = 0
    with ShardWriter(out, "bench") as writer:
        for w in windows:
            if w.status != "ok":
                continue
            key = clip_key("bench", w.start_s, w.end_s)
            members = {"__key__": key, "meta.json": encode_json({"key": key})}
            for i, f in enumerate(w.frames):
                members[f"frames.{i:03d}.jpg"] = encode_jpeg(f)
            writer.write(members)
            n_ok += 1
    t2 = time.perf_counter()
    return {"decode_shots_s": t1 - t0, "pack_s": t2 - t1, "frames": report.frames_decoded, "windows": len(windows),
            "ok": n_ok, "cuts": len(report.cuts_s), "duration": info.duration_s,
            "bytes": sum(p.stat().st_size for p in out.glob("*.tar"))}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "unish-bench")
    ap.add_argument("--no-scenedetect", action="store_true", help="skip PySceneDetect's own detect() reference")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    synthetic = args.cache / f"testsrc_1080p30_{args.seconds}s.mp4"
    if not synthetic.exists():
        print(f"making {synthetic} ...", file=sys.stderr)
        make_test_video(synthetic, args.seconds)
    videos = [("synthetic 1080p30", synthetic)]
    for name in ("vtest_20s.mp4", "sports2d_demo.mp4"):
        videos.append((f"real {name}", REPO / "examples" / "media" / name))

    rows = []
    for label, path in videos:
        ff = time_ffmpeg(path)
        out = Path(tempfile.mkdtemp())
        spine = time_spine(path, out)
        shutil.rmtree(out)
        sd = float("nan") if args.no_scenedetect else time_scenedetect_default(path)
        total = spine["decode_shots_s"] + spine["pack_s"]
        rows.append((label, spine, ff, sd, total))

    hdr = (f"{'video':<26}{'dur s':>7}{'frames':>8}{'cuts':>6}{'win ok':>8}{'decode+shots s':>16}{'pack s':>8}"
           f"{'spine s':>9}{'ffmpeg s':>10}{'scenedetect s':>15}{'src fps':>9}{'ratio':>7}{'MB/clip':>9}")
    print(hdr)
    print("-" * len(hdr))
    for label, s, ff, sd, total in rows:
        per_clip = s["bytes"] / max(1, s["ok"]) / 1e6
        print(f"{label:<26}{s['duration']:>7.1f}{s['frames']:>8}{s['cuts']:>6}{s['ok']:>4}/{s['windows']:<3}"
              f"{s['decode_shots_s']:>16.2f}{s['pack_s']:>8.2f}{total:>9.2f}{ff:>10.2f}{sd:>15.2f}"
              f"{s['frames'] / s['decode_shots_s']:>9.0f}{ff / total:>7.2f}{per_clip:>9.2f}")
    print(f"peak RSS {max_rss_mb():.0f} MB")
    _, s, ff, _, total = rows[0]
    print(f"spine_vs_ffmpeg={ff / total:.2f}")


if __name__ == "__main__":
    main()
