"""Time pi3's scale&shift alignment on a Bonn-sized sequence (110 frames, 480x640).

Compares `unish_model.metrics.depth.adam_scale_shift` (nested boxes: only pixels near zero
residual are touched per step) with two plain references that touch every valid pixel every
step: our field with no boxes (float64), and pi3's own form (torch autograd + torch.optim.Adam,
float32 prediction, float64 GT). The references are slow, so they run `--ref-steps` steps and
their 1000-step time is extrapolated; the fast path runs the same number of steps too, to show
it lands on the same (s, t), and then the full 1000.

    .venv/bin/python bench/metrics.py [--frames 110] [--ref-steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from unish_model.metrics.depth import AdamConfig, adam_scale_shift, lower_median, valid_mask


def bonn_like(frames: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """GT 0.5-6 m with 15% holes; a prediction with 5% noise in another scale and offset."""
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.5, 6.0, size=(frames, h, w))
    gt[rng.random(gt.shape) < 0.15] = 0.0
    pred = ((gt * (1 + 0.05 * rng.standard_normal(gt.shape)) - 0.2) / 2.5).astype(np.float32)
    return torch.from_numpy(pred), torch.from_numpy(gt)


def pi3_autograd(p: torch.Tensor, g: torch.Tensor, s0: float, steps: int) -> tuple[float, float]:
    """pi3's loop as written: autograd on the summed L1, torch.optim.Adam, lr 1e-4."""
    s = torch.tensor([s0], dtype=p.dtype, requires_grad=True)
    t = torch.tensor([0.0], dtype=p.dtype, requires_grad=True)
    opt = torch.optim.Adam([s, t], lr=1e-4)
    prev = None
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.sum(torch.abs(s * p + t - g))
        loss.backward()
        opt.step()
        if prev is not None and abs(prev - loss.item()) < 1e-6:
            break
        prev = loss.item()
    return float(s.detach()), float(t.detach())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=110)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--ref-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pred, gt = bonn_like(args.frames, args.height, args.width)
    mask = valid_mask(gt)
    p, g = pred[mask], gt[mask]
    (s0, t_med) = timed(lambda: lower_median(g) / lower_median(p))
    print(f"{args.frames} frames {args.height}x{args.width}, {p.numel():,} valid pixels, "
          f"{torch.get_num_threads()} threads; medians for the start: {t_med:.2f} s\n")

    n = args.ref_steps
    cfg = AdamConfig()
    rows = []
    (fs, ft, _), t_fast_n = timed(lambda: adam_scale_shift(p, g, s0, 0.0, replace(cfg, steps=n)))
    (ds, dt, _), t_dense = timed(lambda: adam_scale_shift(p, g, s0, 0.0, replace(cfg, steps=n, boxes=())))
    (ps, pt), t_pi3 = timed(lambda: pi3_autograd(p, g, s0, n))
    (s_full, t_full, steps), t_full_time = timed(lambda: adam_scale_shift(p, g, s0, 0.0, cfg))
    rows.append(("nested boxes (ours)", n, t_fast_n, fs, ft, "measured"))
    rows.append(("dense float64, every pixel", n, t_dense, ds, dt, "extrapolated"))
    rows.append(("pi3 autograd + torch Adam", n, t_pi3, ps, pt, "extrapolated"))

    print(f"{'method':30s} {'steps':>5s} {'time s':>8s} {'ms/step':>8s} {'1000 steps s':>13s} "
          f"{'s':>12s} {'t':>12s} {'|ds| vs ours':>13s}")
    for name, k, sec, s, t, note in rows:
        est = sec / k * 1000
        print(f"{name:30s} {k:5d} {sec:8.2f} {sec / k * 1e3:8.1f} {est:10.1f} ({note[:4]}) "
              f"{s:12.8f} {t:12.8f} {abs(s - fs):13.2e}")
    print(f"{'nested boxes (ours), full':30s} {steps:5d} {t_full_time:8.2f} "
          f"{t_full_time / steps * 1e3:8.1f} {t_full_time:10.1f} (meas) {s_full:12.8f} {t_full:12.8f}")
    dense_est = t_dense / n * 1000
    print(f"\nspeed-up over the dense float64 reference at 1000 steps: {dense_est / t_full_time:.0f}x")


if __name__ == "__main__":
    main()
