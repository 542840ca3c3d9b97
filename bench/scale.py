"""Scale benchmark: videos per minute for one manifest with the local runner (1 and 2 workers) and Ray (2 workers)
in one run, and what a 100-GPU run of the paper profile would cost from the measured per-stage GPU throughputs
(`bench/results/gpu_check_h200.json`).

    python bench/scale.py [--videos 6] [--seconds 12] [--stages depth:none] [--gpu-hour-usd 3.5]

Each configuration runs in a fresh process (a cold run folder; Prefect's embedded server warmed before the clock
starts; Ray: a temporary local cluster of 2 CPUs, started before the clock, its start time shown apart). Peak RSS
is the whole process tree's (the driver, and Ray's daemons and workers), sampled every 0.2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_RESULTS = REPO / "bench" / "results" / "gpu_check_h200.json"
CONFIGS = [("local", 1), ("local", 2), ("ray", 2)]
# The paper profile's GPU stages as gpu_check measured them (section name -> the stage; fastest dtype is used).
PAPER_GPU_SECTIONS = {"masks:sam2": "masks:sam2", "depth:moge": "depth:moge", "keypoints:camerahmr":
                      "keypoints:camerahmr"}
PAPER_CLIPS = 1_200_000 // 30  # the paper's curated set: ~1.2 M frames in 30-frame clips (FACTS.md)
CLIP_FRAMES = 30


def make_manifest(folder: Path, videos: int, seconds: float) -> Path:
    """`videos` 640x360 25 fps clips of ffmpeg's test source, each tinted apart (distinct bytes, same work)."""
    for i in range(videos):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size=640x360:rate=25:duration={seconds}", "-vf", f"hue=h={i * 360 // videos}",
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(folder / f"v{i}.mp4")],
                       check=True)
    manifest = folder / "manifest.csv"
    manifest.write_text("source\n" + "".join(f"v{i}.mp4\n" for i in range(videos)))
    return manifest


def child(runner: str, workers: int, manifest: str, out: str, stages: list[str]) -> None:
    """One configuration, in this process: prints one JSON line."""
    sys.path.insert(0, str(REPO))
    from prefect.client.orchestration import get_client

    from flows.curate import run_curate
    from flows.params import CurateConfig

    with get_client(sync_client=True) as client:  # start Prefect's embedded server before the clock
        client.api_healthcheck()
    start_s = 0.0
    if runner == "ray":
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
        start_s = time.perf_counter() - t
    config = CurateConfig(runner=runner, workers=workers, stages=stages, progress=False)
    t = time.perf_counter()
    summary = run_curate(manifest, out, config)
    wall = time.perf_counter() - t
    print(json.dumps({"wall_s": wall, "start_s": start_s, "videos": summary["videos"], "ok": summary["ok"],
                      "errors": len(summary["errors"])}), flush=True)


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def run_config(runner: str, workers: int, manifest: Path, out: Path, stages: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, __file__, "--child", runner, str(workers), str(manifest), str(out), ",".join(stages)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{runner} x{workers} failed ({proc.returncode}):\n{stdout}")
    row = json.loads(stdout.strip().splitlines()[-1])
    return {"runner": runner, "workers": workers, **row, "peak_rss_mib": peak / 2**20,
            "videos_per_min": row["videos"] / row["wall_s"] * 60}


def gpu_seconds_per_clip(results: dict) -> dict[str, float]:
    """Each paper GPU stage's seconds for one 30-frame clip on one GPU, at its fastest measured dtype."""
    best: dict[str, float] = {}
    for row in results["rows"]:
        stage = next((s for s in PAPER_GPU_SECTIONS if row["section"].startswith(s)), None)
        if stage and row.get("frames_per_s"):
            best[stage] = min(best.get(stage, float("inf")), CLIP_FRAMES / row["frames_per_s"])
    return best


def cost_paragraph(rows: list[dict], gpus: int, usd_per_gpu_hour: float, cpu_s_per_clip: float) -> str:
    results = json.loads(GPU_RESULTS.read_text())
    per_stage = gpu_seconds_per_clip(results)
    gpu_s = sum(per_stage.values())
    clips_per_s = gpus / gpu_s
    hours = PAPER_CLIPS / clips_per_s / 3600
    cores = clips_per_s * cpu_s_per_clip
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(per_stage.items(), key=lambda kv: -kv[1]))
    return (
        f"Paper profile on {gpus} GPUs ({results['env']['device']}, from {GPU_RESULTS.relative_to(REPO)}): one 30-frame "
        f"clip costs {gpu_s:.2f} GPU-s ({stages}; people:yolo not measured there, taken as 0). "
        f"{gpus} GPUs label {clips_per_s:.0f} clips/s; the paper's {PAPER_CLIPS:,} clips (1.2 M frames) take "
        f"{hours * 60:.0f} min, {hours * gpus:.1f} GPU-hours, about ${hours * gpus * usd_per_gpu_hour:,.0f} at "
        f"${usd_per_gpu_hour:.2f}/GPU-hour. Keeping those GPUs fed needs {cores:.0f} CPU cores for fetch, decode and "
        f"pack at this run's {cpu_s_per_clip:.2f} CPU-s per clip (local, 1 worker; 640x360 input: 720p costs more). "
        f"Assumptions: every stage at its fastest measured dtype, one labeller per GPU holding all four models "
        f"(peak {max(r.get('peak_mib', 0) for r in results['rows'] if 'peak_mib' in r) / 1024:.0f} GiB on a 141 GiB "
        f"card), the stages run one after another per clip (no overlap inside a GPU), downloads not the limit, "
        f"and every clip labelled (rejections before masks would cut the GPU time).")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        runner, workers, manifest, out, stages = sys.argv[2:7]
        child(runner, int(workers), manifest, out, [s for s in stages.split(",") if s])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--stages", default="depth:none", help="labelling stages (a CPU one: its actor path runs too)")
    ap.add_argument("--gpus", type=int, default=100)
    ap.add_argument("--gpu-hour-usd", type=float, default=3.5, help="price of one GPU-hour (an assumption)")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="unish-scale-") as tmp:
        folder = Path(tmp)
        manifest = make_manifest(folder, args.videos, args.seconds)
        rows = [run_config(r, w, manifest, folder / f"out-{r}-{w}", stages) for r, w in CONFIGS]
    print(f"{args.videos} videos of {args.seconds:g} s (640x360, 25 fps), stages: {','.join(stages) or 'none'}; "
          f"{os.cpu_count()} CPU cores")
    print(f"{'runner':8} {'workers':>7} {'videos':>6} {'ok clips':>8} {'wall s':>7} {'videos/min':>10} "
          f"{'peak RSS MiB':>12} {'cluster start s':>15}")
    for r in rows:
        print(f"{r['runner']:8} {r['workers']:>7} {r['videos']:>6} {r['ok']:>8} {r['wall_s']:>7.1f} "
              f"{r['videos_per_min']:>10.1f} {r['peak_rss_mib']:>12.0f} {r['start_s']:>15.1f}")
    by = {(r["runner"], r["workers"]): r["videos_per_min"] for r in rows}
    print(f"ratios: local x2 / local x1 = {by[('local', 2)] / by[('local', 1)]:.2f}; "
          f"ray x2 / local x2 = {by[('ray', 2)] / by[('local', 2)]:.2f}")
    one = rows[0]
    cpu_s_per_clip = one["wall_s"] / max(one["ok"], 1)
    print()
    print(cost_paragraph(rows, args.gpus, args.gpu_hour_usd, cpu_s_per_clip))


if __name__ == "__main__":
    main()
