"""One prepared GPU check: paper-size forward timings (random weights) of the UniSH model and of each
labeller's architecture, in bf16 autocast and fp32, with peak memory; plus a CPU-vs-CUDA agreement check
of the whole pipeline at a small size.

    python bench/gpu_check.py --out results.json            # on a CUDA machine
    python bench/gpu_check.py --tiny                         # a quick dry run of every code path on a CPU

Each section is independent: one that fails (a package missing on the box) is reported and the rest go on.
Labeller packages that a bare GPU image lacks (sam2, moge and their pure-Python dependencies) can be put on
PYTHONPATH as a folder copied from a working environment.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

FRAMES, HEIGHT, WIDTH = 30, 294, 518


def timed(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, float]:
    """(median seconds per call, peak MiB) after one warm-up call."""
    with torch.inference_mode():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return float(np.median(times)), peak


def autocast(device: str, dtype: str):
    if device == "cuda" and dtype == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def unish_section(device: str, tiny: bool, repeats: int) -> list[dict]:
    from unish_model.pipeline import UniSH, UniSHConfig

    rows = []
    frames, h, w = (4, 112, 196) if tiny else (FRAMES, HEIGHT, WIDTH)
    for dtype in ("bf16", "fp32"):
        cfg = UniSHConfig.tiny() if tiny else UniSHConfig.paper()
        if dtype == "fp32" and hasattr(cfg, "autocast_dtype"):
            from dataclasses import replace

            cfg = replace(cfg, autocast_dtype=None)
        with torch.device(device):  # initialise on the device: paper size is 1.6 B parameters
            model = UniSH(cfg).eval()
        images = torch.rand(1, frames, 3, h, w, device=device)
        patches = torch.rand(1, frames, 3, 256, 256, device=device)
        bbox = torch.randn(1, frames, 3, device=device) * 0.1
        sec, peak = timed(lambda: model(images, patches, bbox, 6.0), device, repeats)
        rows.append({"section": "unish forward", "what": f"{frames} frames {w}x{h}", "dtype": dtype,
                     "seconds": sec, "frames_per_s": frames / sec, "peak_mib": peak})
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def agreement_section(device: str) -> list[dict]:
    """The small pipeline on CUDA (fp32, TF32 off; and bf16) against the CPU fp32 result."""
    from dataclasses import replace

    from unish_model.pipeline import UniSH, UniSHConfig

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    base = UniSHConfig.tiny()
    model = UniSH(replace(base, autocast_dtype=None) if hasattr(base, "autocast_dtype") else base).eval()
    images = torch.rand(1, 4, 3, 112, 196)
    patches = torch.rand(1, 4, 3, 256, 256)
    bbox = torch.randn(1, 4, 3) * 0.1
    with torch.inference_mode():
        ref = model(images, patches, bbox, 6.0)
    rows = []
    for dtype in ("fp32", "bf16"):
        cfg = replace(base, autocast_dtype="bfloat16" if dtype == "bf16" else None) if hasattr(base, "autocast_dtype") else base
        gpu = UniSH(cfg).eval()
        gpu.load_state_dict(model.state_dict())
        gpu.to(device)
        with torch.inference_mode():
            out = gpu(images.to(device), patches.to(device), bbox.to(device), 6.0)
        for name in ("local_points", "world_points", "c2ws", "pose_cam", "trans_cam", "scale"):
            a, b = getattr(ref, name).float(), getattr(out, name).float().cpu()
            rel = float((a - b).abs().max() / max(1.0, float(a.abs().max())))
            rows.append({"section": "cuda vs cpu", "what": name, "dtype": dtype, "rel_err": rel})
    return rows


def human_section(device: str, tiny: bool, repeats: int) -> list[dict]:
    from unish_model.human import HumanBranch, HumanBranchConfig

    rows = []
    cfg = HumanBranchConfig.tiny() if tiny else HumanBranchConfig.camerahmr()
    with torch.device(device):
        model = HumanBranch(cfg).eval()
    crops = torch.rand(FRAMES, 3, 256, 192, device=device)
    bbox = torch.randn(FRAMES, 3, device=device) * 0.1
    for dtype in ("bf16", "fp32"):
        def run():
            with autocast(device, dtype):
                return model(crops, bbox)

        sec, peak = timed(run, device, repeats)
        rows.append({"section": "keypoints:camerahmr (ViT-H)", "what": f"{FRAMES} crops 256x192", "dtype": dtype,
                     "seconds": sec, "frames_per_s": FRAMES / sec, "peak_mib": peak})
    return rows


def moge_section(device: str, tiny: bool, repeats: int) -> list[dict]:
    from moge.model.v2 import MoGeModel

    from tasks.depth import MOGE2_VITL_CONFIG

    with torch.device(device):
        model = MoGeModel(**json.loads(json.dumps(MOGE2_VITL_CONFIG))).eval()
    batch = 10 if not tiny else 2
    x = torch.rand(batch, 3, HEIGHT, WIDTH, device=device)
    rows = []
    for dtype in ("bf16", "fp32"):
        fp16 = dtype == "bf16" and device == "cuda"

        def run():
            return model.infer(x, num_tokens=None if not tiny else 300, resolution_level=9, apply_mask=False,
                               force_projection=True, use_fp16=fp16)

        sec, peak = timed(run, device, repeats)
        rows.append({"section": "depth:moge (MoGe-2 ViT-L)", "what": f"batch {batch} {WIDTH}x{HEIGHT}",
                     "dtype": "fp16" if fp16 else "fp32", "seconds": sec, "frames_per_s": batch / sec,
                     "peak_mib": peak})
    return rows


def sam2_section(device: str, tiny: bool, repeats: int) -> list[dict]:
    import cv2
    from sam2.build_sam import build_sam2_video_predictor

    cfg = "configs/sam2.1/sam2.1_hiera_t.yaml" if tiny else "configs/sam2.1/sam2.1_hiera_l.yaml"
    predictor = build_sam2_video_predictor(cfg, ckpt_path=None, device=device)
    n = 4 if tiny else FRAMES
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.clip(rng.normal(120, 30, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), img)
    box = np.array([150, 40, 370, 280], np.float32)
    rows = []
    for dtype in ("bf16", "fp32"):
        def run():
            with autocast(device, dtype):
                state = predictor.init_state(str(folder))
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=box)
                for _ in predictor.propagate_in_video(state):
                    pass

        sec, peak = timed(run, device, max(1, repeats - 1))
        rows.append({"section": "masks:sam2 (SAM2.1 hiera-L video)", "what": f"{n} frames {WIDTH}x{HEIGHT}",
                     "dtype": dtype, "seconds": sec, "frames_per_s": n / sec, "peak_mib": peak})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: check the code paths quickly on a CPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", default="unish,agreement,human,moge,sam2")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__}
    print(json.dumps(env), flush=True)
    sections = {"unish": lambda: unish_section(device, args.tiny, args.repeats),
                "agreement": lambda: agreement_section(device) if device == "cuda" else [],
                "human": lambda: human_section(device, args.tiny, args.repeats),
                "moge": lambda: moge_section(device, args.tiny, args.repeats),
                "sam2": lambda: sam2_section(device, args.tiny, args.repeats)}
    rows: list[dict] = []
    for name in args.only.split(","):
        t = time.perf_counter()
        try:
            got = sections[name]()
        except Exception as e:  # one missing package must not lose the other sections
            got = [{"section": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}]
        rows.extend(got)
        for r in got:
            print(json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
        print(f"# {name} took {time.perf_counter() - t:.1f} s", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{'section':<36}{'what':<24}{'dtype':<7}{'s/call':>9}{'frames/s':>10}{'peak MiB':>10}{'rel err':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['section']:<36}ERROR {r['error'][:120]}")
            continue
        print(f"{r['section']:<36}{r['what']:<24}{r['dtype']:<7}{r.get('seconds', float('nan')):>9.3f}"
              f"{r.get('frames_per_s', float('nan')):>10.1f}{r.get('peak_mib', float('nan')):>10.0f}"
              f"{r.get('rel_err', float('nan')):>10.2e}")
    if args.out:
        args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
