"""Benchmark UniSH's forward pass: time and peak memory of the tiny model for one 30-frame window on this CPU.

    .venv/bin/python bench/model.py [--frames 30] [--repeats 3] [--threads N] [--no-estimate]

Each row runs in a fresh child process, so its peak resident memory (ru_maxrss) belongs to that run alone:
`base MB` is the process after importing torch and building the model, `peak MB` the highest point during the
timed calls.  `forward` is `UniSH.forward` (the three networks); `infer` adds the post-processing (focal/shift
solves on the CPU, metric scale, axis-angle).  The tiny model has random weights: its times say what the
pipeline's plumbing costs, not what the paper model costs.

The paper-size row is an estimate, not a run (building the 1.4 B-parameter model and running 30 frames at
518x294 would take tens of minutes on a laptop CPU): the scene branch's and human branch's transformer FLOPs,
counted from the configs (linear layers and attention; heads, norms and post-processing left out), divided by
this machine's measured float32 matmul rate.  It is a lower bound on the time.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def child(mode: str, frames: int, height: int, width: int, repeats: int, threads: int | None) -> dict:
    import torch

    from unish_model.pipeline import UniSH, UniSHConfig, person_inputs

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = UniSH(UniSHConfig.tiny()).eval()
    images = torch.rand(1, frames, 3, height, width)
    boxes = torch.tensor([0.3 * width, 0.1 * height, 0.7 * width, 0.95 * height]).expand(1, frames, 4)
    patches, bbox_px = person_inputs(images, boxes)
    base = _rss_mb()

    def call() -> None:
        with torch.no_grad():
            if mode == "forward":
                model(images, patches, bbox_px / 500.0)
            else:
                model.infer(images, patches, bbox_px)

    call()  # warm-up (first-call allocations and kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"mode": mode, "frames": frames, "size": f"{width}x{height}", "median_s": sorted(times)[len(times) // 2],
            "min_s": min(times), "base_mb": base, "peak_mb": _rss_mb(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------- paper estimate


def _block_flops(tokens: int, seq: int, width: int, mlp_ratio: float) -> float:
    """FLOPs of one pre-norm transformer block over `tokens` tokens in sequences of `seq` tokens."""
    linear = 2 * tokens * (4 * width * width + 2 * mlp_ratio * width * width)
    attention = 2 * 2 * tokens * seq * width  # QK^T and attention @ V
    return linear + attention


def paper_flops(frames: int, height: int, width: int) -> dict[str, float]:
    from unish_model.human import HumanBranchConfig
    from unish_model.scene import SceneBranchConfig

    s = SceneBranchConfig.paper()
    patches = (height // s.patch_size) * (width // s.patch_size)
    enc_seq = patches + 1 + s.encoder_registers
    encoder = s.encoder_depth * _block_flops(frames * enc_seq, enc_seq, s.encoder_dim, s.encoder_mlp_ratio)
    dec_seq = patches + s.decoder_registers
    half = s.decoder_depth // 2
    decoder = half * _block_flops(frames * dec_seq, dec_seq, s.decoder_dim, s.decoder_mlp_ratio) + \
        half * _block_flops(frames * dec_seq, frames * dec_seq, s.decoder_dim, s.decoder_mlp_ratio)
    heads = 3 * s.point_decoder_depth * _block_flops(frames * dec_seq, dec_seq, s.point_decoder_dim,
                                                     s.head_mlp_ratio)
    h = HumanBranchConfig.paper()
    human_seq = (h.image_size[0] // h.patch_size) * (h.image_size[1] // h.patch_size)
    human = h.vit_depth * _block_flops(frames * human_seq, human_seq, h.vit_width, 4.0)
    return {"scene encoder": encoder, "scene decoder": decoder, "scene point/conf/camera decoders": heads,
            "human ViT-H": human}


def matmul_gflops(threads: int | None, size: int = 1024, repeats: int = 5, trials: int = 5) -> float:
    """Best of `trials` float32 matmul rates (the best trial is the least disturbed by other processes)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9)
    return best


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-estimate", action="store_true", help="skip the paper-size estimate")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "H", "W"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, h, w = args.child
        print(json.dumps(child(mode, args.frames, int(h), int(w), args.repeats, args.threads)))
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    for mode, (h, w) in [("forward", (126, 224)), ("infer", (126, 224)), ("forward", (294, 518)),
                         ("infer", (294, 518))]:
        cmd = [sys.executable, __file__, "--child", mode, str(h), str(w), "--frames", str(args.frames),
               "--repeats", str(args.repeats)] + (["--threads", str(args.threads)] if args.threads else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)  # noqa: S603 - fixed argv
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    table = Table(title=f"UniSH tiny (random weights), one window of {args.frames} frames, CPU "
                        f"({rows[0]['threads']} threads)")
    for col in ("call", "input WxH", "params (M)", "median s", "min s", "frames/s", "base MB", "peak MB",
                "peak - base MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["mode"], r["size"], f"{r['params_m']:.2f}", f"{r['median_s']:.2f}", f"{r['min_s']:.2f}",
                      f"{args.frames / r['median_s']:.1f}", f"{r['base_mb']:.0f}", f"{r['peak_mb']:.0f}",
                      f"{r['peak_mb'] - r['base_mb']:.0f}")
    console = Console(width=max(Console().width, 130))  # a pipe gets 80 columns: keep the table whole
    console.print(table)

    if not args.no_estimate:
        flops = paper_flops(args.frames, 294, 518)
        rate = matmul_gflops(args.threads)
        est = Table(title=f"paper size, 30 frames at 518x294: analytic estimate (matmul rate {rate:.0f} GFLOP/s "
                          f"float32 on this CPU; lower bound, not a run)")
        for col in ("part", "TFLOP", "seconds (est.)"):
            est.add_column(col, justify="right")
        for part, f in flops.items():
            est.add_row(part, f"{f / 1e12:.2f}", f"{f / rate / 1e9:.0f}")
        total = sum(flops.values())
        est.add_row("total", f"{total / 1e12:.2f}", f"{total / rate / 1e9:.0f}")
        console.print(est)


if __name__ == "__main__":
    main()
