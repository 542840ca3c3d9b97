"""Video depth metrics as pi3 / CUT3R / MonST3R evaluate Bonn (one alignment per sequence).

Protocol:
- predictions are resized to the GT size with bicubic interpolation;
- valid pixels: 0 < gt < max_depth (GT only; the prediction is never used to pick pixels);
- one alignment over all valid pixels of the whole sequence:
  `scale&shift`: start s = median(gt) / median(pred) (torch's lower median), t = 0, then Adam
  (lr 1e-4, default betas/eps) on the summed L1 residual for 1000 steps, stopping early only when
  the loss repeats to within 1e-6. This lands near the median start, not at the L1 optimum;
  `scale`: s from mean(gt) / mean(pred), then 10 Weiszfeld (IRLS) steps of the L1 scale, s >= 1e-3;
  `median`: s = median(gt) / median(pred);
  `metric`: none;
- Abs Rel = mean |p - g| / g; delta < 1.25 = mean(max(p/g, g/p) < 1.25) with p clamped at 1e-5;
- the dataset number averages per-sequence metrics weighted by their valid pixel counts.

The Adam loop is exact but cheap: a pixel whose residual is far from zero keeps its sign while
(s, t) stays in a small box, so its share of the loss and gradient is linear in (s, t) and is
summed once. Only pixels near zero residual are touched per step; the boxes are rebuilt (from the
outer level's undecided pixels) whenever Adam leaves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence, get_args

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

Align = Literal["scale&shift", "scale", "median", "metric"]
ALIGN_MODES: tuple[str, ...] = get_args(Align)
DEFAULT_MAX_DEPTH = 70.0
DELTA_CLAMP = 1e-5


@dataclass(frozen=True)
class AdamConfig:
    """pi3's scale&shift optimiser (CUT3R's `absolute_value_scaling2`)."""

    lr: float = 1e-4
    steps: int = 1000
    tol: float = 1e-6
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # Half-widths of the nested (s, t) boxes, in units of lr, outermost first (speed only).
    boxes: tuple[float, ...] = (1024.0, 128.0, 16.0, 2.0)
    chunk: int = 1 << 22  # elements per pass when splitting the full pixel set


@dataclass(frozen=True)
class DepthResult:
    """Metrics of one sequence, with the alignment that produced them."""

    metrics: dict[str, float]
    valid_pixels: int
    scale: float
    shift: float
    align: str
    steps_run: int = 0  # Adam iterations actually run (scale&shift only)

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            **self.metrics,
            "valid_pixels": self.valid_pixels,
            "scale": self.scale,
            "shift": self.shift,
            "align": self.align,
        }


def _tensor(x: ArrayLike | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.from_numpy(np.ascontiguousarray(x))


def resize_to(pred: ArrayLike | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (F, h, w) or (h, w) depth to (H, W), as cv2.INTER_CUBIC does."""
    p = _tensor(pred)
    squeeze = p.ndim == 2
    if squeeze:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"pred depth: expected (frames, H, W) or (H, W), got {tuple(p.shape)}")
    if tuple(p.shape[-2:]) != tuple(size):
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32  # bf16/int in
        p = F.interpolate(p[:, None].to(dtype), size=size, mode="bicubic", align_corners=False)[:, 0]
    return p[0] if squeeze else p


def valid_mask(gt: torch.Tensor, max_depth: float | None = DEFAULT_MAX_DEPTH) -> torch.Tensor:
    """Pixels that count: 0 < gt (< max_depth). NaN GT never counts."""
    mask = gt > 0
    if max_depth is not None:
        mask &= gt < max_depth
    return mask


def lower_median(x: torch.Tensor) -> float:
    """torch.median: for an even count, the lower of the two middle values (what pi3 uses)."""
    return float(torch.median(x))


# ---------------------------------------------------------------------------------------------
# scale&shift: pi3's Adam on the summed L1, made cheap by freezing far-from-zero residuals.


@dataclass
class _Level:
    """Pixels whose residual sign cannot change while (s, t) stays inside this box."""

    s0: float
    t0: float
    half: float
    sum_sp: float  # sum over frozen pixels of sign * pred
    sum_sign: float  # sum of signs
    sum_sg: float  # sum of sign * gt
    pred: torch.Tensor  # undecided pixels, float64
    gt: torch.Tensor

    def holds(self, s: float, t: float) -> bool:
        return abs(s - self.s0) <= self.half and abs(t - self.t0) <= self.half


def _split(
    pred: torch.Tensor, gt: torch.Tensor, s: float, t: float, half: float, chunk: int
) -> _Level:
    """Freeze the pixels whose |residual| exceeds what a move of `half` in s and t can change."""
    sum_sp = sum_sign = sum_sg = 0.0
    empty = torch.zeros(0, dtype=torch.float64)
    keep_p: list[torch.Tensor] = [empty]
    keep_g: list[torch.Tensor] = [empty]
    for start in range(0, pred.numel(), chunk):
        p = pred[start : start + chunk].to(torch.float64)
        g = gt[start : start + chunk].to(torch.float64)
        r = p * s + t - g
        # Small slack over the exact bound so float rounding of r never freezes a wrong sign.
        margin = (p.abs() + 1.0) * half * (1.0 + 1e-9) + 1e-12 * (g.abs() + 1.0)
        sign = (r > margin).to(torch.float64) - (r < -margin).to(torch.float64)
        sum_sp += float(torch.dot(sign, p))
        sum_sign += float(sign.sum())
        sum_sg += float(torch.dot(sign, g))
        undecided = sign == 0
        keep_p.append(p[undecided])
        keep_g.append(g[undecided])
    return _Level(s, t, half, sum_sp, sum_sign, sum_sg, torch.cat(keep_p), torch.cat(keep_g))


@dataclass
class _L1Field:
    """Loss and gradient of sum |s * pred + t - gt| at any (s, t), through nested boxes."""

    pred: torch.Tensor
    gt: torch.Tensor
    halves: tuple[float, ...]
    chunk: int
    levels: list[_Level] = field(default_factory=list)
    rebuilt_pixels: int = 0  # work counter, for the benchmark

    def _refresh(self, s: float, t: float) -> None:
        first_bad = next(
            (i for i, lv in enumerate(self.levels) if not lv.holds(s, t)), len(self.levels)
        )
        if first_bad == len(self.halves):
            return
        del self.levels[first_bad:]
        for half in self.halves[first_bad:]:
            src_p, src_g = (
                (self.levels[-1].pred, self.levels[-1].gt) if self.levels else (self.pred, self.gt)
            )
            self.rebuilt_pixels += src_p.numel()
            self.levels.append(_split(src_p, src_g, s, t, half, self.chunk))

    def __call__(self, s: float, t: float) -> tuple[float, float, float]:
        """(loss, d loss / d s, d loss / d t); torch's sign(0) = 0 subgradient."""
        if not self.halves:
            p, g = self.pred.to(torch.float64), self.gt.to(torch.float64)
            r = p * s + t - g
            sign = torch.sign(r)
            return float(r.abs().sum()), float(torch.dot(sign, p)), float(sign.sum())
        self._refresh(s, t)
        loss = grad_s = grad_t = 0.0
        for lv in self.levels:
            loss += s * lv.sum_sp + t * lv.sum_sign - lv.sum_sg
            grad_s += lv.sum_sp
            grad_t += lv.sum_sign
        inner = self.levels[-1]
        r = inner.pred * s + t - inner.gt
        sign = torch.sign(r)
        loss += float(r.abs().sum())
        grad_s += float(torch.dot(sign, inner.pred))
        grad_t += float(sign.sum())
        return loss, grad_s, grad_t


def adam_scale_shift(
    pred: torch.Tensor,
    gt: torch.Tensor,
    s_init: float,
    t_init: float = 0.0,
    config: AdamConfig = AdamConfig(),
) -> tuple[float, float, int]:
    """pi3's Adam on sum |s * pred + t - gt| from (s_init, t_init): returns (s, t, steps run).

    Same update as torch.optim.Adam on two scalars, in float64. As in pi3, the step is taken
    before the early-stop test, which compares this step's loss with the previous one.
    """
    halves = tuple(h * config.lr for h in config.boxes)
    l1 = _L1Field(pred.reshape(-1), gt.reshape(-1), halves, config.chunk)
    s, t = float(s_init), float(t_init)
    m_s = m_t = v_s = v_t = 0.0
    prev_loss: float | None = None
    b1, b2 = config.beta1, config.beta2
    step = 0
    for step in range(1, config.steps + 1):
        loss, g_s, g_t = l1(s, t)
        m_s = b1 * m_s + (1 - b1) * g_s
        m_t = b1 * m_t + (1 - b1) * g_t
        v_s = b2 * v_s + (1 - b2) * g_s * g_s
        v_t = b2 * v_t + (1 - b2) * g_t * g_t
        step_size = config.lr / (1 - b1**step)
        root_bc2 = math.sqrt(1 - b2**step)
        s -= step_size * m_s / (math.sqrt(v_s) / root_bc2 + config.eps)
        t -= step_size * m_t / (math.sqrt(v_t) / root_bc2 + config.eps)
        if prev_loss is not None and abs(prev_loss - loss) < config.tol:
            break
        prev_loss = loss
    return s, t, step


def irls_scale(pred: torch.Tensor, gt: torch.Tensor, iters: int = 10) -> float:
    """pi3's `scale` mode: L1 scale by Weiszfeld iterations from the ratio of means."""
    p, g = pred.to(torch.float64), gt.to(torch.float64)
    s = g.mean() / p.mean()
    for _ in range(iters):
        w = 1.0 / ((s * p - g).abs() + 1e-8)
        s = (w * p * g).sum() / (w * p * p).sum()
    return float(s.clamp(min=1e-3))


# ---------------------------------------------------------------------------------------------


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Standard depth errors over matching 1-D arrays of aligned prediction and valid GT."""
    p, g = pred.to(torch.float64), gt.to(torch.float64)
    diff = p - g
    abs_rel = float((diff.abs() / g).mean())
    sq_rel = float((diff**2 / g).mean())
    rmse = float(torch.sqrt((diff**2).mean()))
    pc = p.clamp(min=DELTA_CLAMP)
    log_rmse = float(torch.sqrt(((pc.log() - g.log()) ** 2).mean()))
    ratio = torch.maximum(pc / g, g / pc)
    return {
        "abs_rel": abs_rel,
        "sq_rel": sq_rel,
        "rmse": rmse,
        "log_rmse": log_rmse,
        "delta_1.25": float((ratio < 1.25).to(torch.float64).mean()),
        "delta_1.25^2": float((ratio < 1.25**2).to(torch.float64).mean()),
        "delta_1.25^3": float((ratio < 1.25**3).to(torch.float64).mean()),
    }


METRIC_KEYS: tuple[str, ...] = (
    "abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1.25", "delta_1.25^2", "delta_1.25^3",
)


def evaluate_sequence(
    pred: ArrayLike | torch.Tensor,
    gt: ArrayLike | torch.Tensor,
    align: str = "scale&shift",
    max_depth: float | None = DEFAULT_MAX_DEPTH,
    adam: AdamConfig = AdamConfig(),
    post_clip_max: float | None = None,
) -> DepthResult:
    """Metrics of one video: pred (F, h, w) resized to gt (F, H, W), one alignment for all frames.

    `post_clip_max` clamps the aligned prediction from above (pi3 does this for Sintel, not Bonn).
    """
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
    g_all = _tensor(gt)
    if g_all.ndim == 2:
        g_all = g_all[None]
    if g_all.ndim != 3:
        raise ValueError(f"gt depth: expected (frames, H, W) or (H, W), got {tuple(g_all.shape)}")
    p_all = resize_to(pred, (int(g_all.shape[-2]), int(g_all.shape[-1])))
    if p_all.ndim == 2:
        p_all = p_all[None]
    if p_all.shape[0] != g_all.shape[0]:
        raise ValueError(f"pred has {p_all.shape[0]} frames, gt has {g_all.shape[0]}")
    mask = valid_mask(g_all, max_depth)
    n_valid = int(mask.sum())
    if n_valid == 0:
        nan = float("nan")
        return DepthResult({k: nan for k in METRIC_KEYS}, 0, nan, nan, align)
    p, g = p_all[mask], g_all[mask]

    s, t, steps = 1.0, 0.0, 0
    if align == "scale&shift":
        s, t, steps = adam_scale_shift(p, g, lower_median(g) / lower_median(p), 0.0, adam)
    elif align == "scale":
        s = irls_scale(p, g)
    elif align == "median":
        s = lower_median(g) / lower_median(p)
    aligned = p.to(torch.float64) * s + t
    if post_clip_max is not None:
        aligned = aligned.clamp(max=post_clip_max)
    return DepthResult(depth_metrics(aligned, g), n_valid, s, t, align, steps)


def aggregate_depth(results: Iterable[DepthResult]) -> dict[str, float]:
    """Dataset numbers: per-sequence metrics averaged with weights = valid pixel counts."""
    rows = [r for r in results if r.valid_pixels > 0]
    if not rows:
        raise ValueError("no sequence has valid pixels")
    weights = np.array([r.valid_pixels for r in rows], dtype=np.float64)
    out = {
        key: float(np.average([r.metrics[key] for r in rows], weights=weights))
        for key in METRIC_KEYS
    }
    out["valid_pixels"] = float(weights.sum())
    return out


def evaluate_dataset(
    sequences: Sequence[tuple[ArrayLike, ArrayLike]],
    align: str = "scale&shift",
    max_depth: float | None = DEFAULT_MAX_DEPTH,
) -> tuple[dict[str, float], list[DepthResult]]:
    """(dataset numbers, per-sequence results) for (pred, gt) pairs."""
    per_seq = [evaluate_sequence(p, g, align, max_depth) for p, g in sequences]
    return aggregate_depth(per_seq), per_seq
