"""ROE solver (unish_model.losses.roe): exactness, robustness, brute force, MoGe's own solver, gradients.

All comparisons run in float64 unless a test is about float32: the search itself runs in float64, and the
tolerances below are a few hundred ulps of the compared quantity (measured: the largest cost difference to the
brute-force minimum over these problems is ~4e-16 relative; scales agree with MoGe's to ~1e-16 relative).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from unish_model.losses.roe import (align_depth_scale, align_depth_scale_shift, align_points_scale,
                                    align_points_scale_z_shift, downsample_masked_nearest, solve_scale_1d,
                                    strided_subset, truncated_l1_cost)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two shared cores: no OpenMP spinning

F64 = torch.float64
REL = 1e-12  # relative tolerance on float64 costs and scales (measured noise ~1e-16)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = REL) -> bool:
    return bool(((a - b).abs() <= rel * (1 + b.abs())).all())


def _random_1d(g: torch.Generator, n: int, trial: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(n, generator=g, dtype=F64)
    y = 1.5 * x + torch.randn(n, generator=g, dtype=F64)
    w = torch.rand(n, generator=g, dtype=F64)
    if trial % 3 == 0:  # zero weights: constant terms
        w[torch.rand(n, generator=g) < 0.3] = 0
    if trial % 5 == 0:  # x = 0: constant terms
        x[torch.rand(n, generator=g) < 0.3] = 0
    return x, y, w


# ------------------------------------------------------------------------------------------------ 1-D


def test_1d_equals_brute_force_over_candidate_scales() -> None:
    """The optimum of a piecewise-linear cost is at a breakpoint y_i/x_i: evaluating the plain definition at all
    of them (O(n^2)) must give our cost, and our scale must attain it."""
    g = torch.Generator().manual_seed(0)
    for trial in range(150):
        n = 1 + trial % 29
        x, y, w = _random_1d(g, n, trial)
        trunc = None if trial % 2 else 0.05 + float(torch.rand(1, generator=g)) * 2
        a, cost, index = solve_scale_1d(x, y, w, trunc)
        candidates = torch.where(x != 0, y / torch.where(x != 0, x, 1.0), torch.zeros_like(x))
        brute = truncated_l1_cost(candidates, x, y, w, trunc).min()
        assert _close(cost, brute), (trial, float(cost), float(brute))
        assert _close(truncated_l1_cost(a, x, y, w, trunc), brute)
        if int(index) >= 0:
            assert float(a) == float(y[index] / x[index])


def test_1d_no_candidate_beats_it_on_a_dense_grid() -> None:
    """Independent of the breakpoint argument: no scale on a fine grid has a lower cost."""
    g = torch.Generator().manual_seed(1)
    grid = torch.linspace(-6, 6, 24001, dtype=F64)
    for trial in range(20):
        x, y, w = _random_1d(g, 25, trial)
        for trunc in (None, 0.3):
            _, cost, _ = solve_scale_1d(x, y, w, trunc)
            assert float(truncated_l1_cost(grid, x, y, w, trunc).min()) >= float(cost) * (1 - REL)


def test_untruncated_is_the_weighted_median() -> None:
    g = torch.Generator().manual_seed(2)
    for _ in range(30):
        x = torch.randn(40, generator=g, dtype=F64)
        y = torch.randn(40, generator=g, dtype=F64)
        w = torch.rand(40, generator=g, dtype=F64)
        a, _, _ = solve_scale_1d(x, y, w)
        ratio, order = (y / x).sort()
        cum = (w * x.abs())[order].cumsum(0)
        median = ratio[int(torch.searchsorted(cum, cum[-1] / 2))]  # lower weighted median (continuous data)
        assert float(a) == float(median)


def test_1d_batched_equals_one_by_one_and_keeps_dtype() -> None:
    g = torch.Generator().manual_seed(3)
    x, y, w = (torch.randn(6, 5, 17, generator=g, dtype=F64) for _ in range(3))
    w = w.abs()
    a, cost, index = solve_scale_1d(x, y, w, 0.5)
    assert a.shape == cost.shape == index.shape == (6, 5)
    for i, j in itertools.product(range(6), range(5)):
        a1, c1, i1 = solve_scale_1d(x[i, j], y[i, j], w[i, j], 0.5)
        assert float(a1) == float(a[i, j]) and float(c1) == float(cost[i, j]) and int(i1) == int(index[i, j])
    a32 = solve_scale_1d(x.float(), y.float(), w.float(), 0.5)[0]
    assert a32.dtype == torch.float32
    # all weights zero: no solution (scale 0, index -1)
    a0, _, i0 = solve_scale_1d(x[0, 0], y[0, 0], torch.zeros_like(w[0, 0]))
    assert float(a0) == 0.0 and int(i0) == -1


# ------------------------------------------------------------------------------------------------ known answers


def _cloud(g: torch.Generator, batch: int, n: int, dtype: torch.dtype = F64) -> torch.Tensor:
    p = torch.randn(batch, n, 3, generator=g, dtype=dtype) * torch.tensor([1.0, 0.6, 0.5], dtype=dtype)
    return p + torch.tensor([0.0, 0.0, 3.0], dtype=dtype)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_recovers_known_scale_and_shift_exactly_on_clean_data(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    p = _cloud(g, 3, 50, dtype)
    s_true = torch.tensor([0.5, 1.7, 3.2], dtype=dtype)
    t_true = torch.tensor([0.3, -1.1, 2.0], dtype=dtype)
    w = torch.rand(3, 50, generator=g, dtype=dtype)
    # exact up to the rounding of the data itself: 1e-12 in float64, 8 ulps of float32 (2e-6) measured < 5e-7
    tol = 1e-12 if dtype == F64 else 2e-6
    s = align_points_scale(p, s_true[:, None, None] * p, w, trunc=1.0)
    torch.testing.assert_close(s, s_true, rtol=tol, atol=tol)
    q = s_true[:, None, None] * p + torch.stack([torch.zeros(3, dtype=dtype)] * 2 + [t_true], -1)[:, None]
    s, shift = align_points_scale_z_shift(p, q, w, trunc=1.0)
    torch.testing.assert_close(s, s_true, rtol=tol, atol=tol)
    torch.testing.assert_close(shift[:, 2], t_true, rtol=tol, atol=tol * 10)
    assert bool((shift[:, :2] == 0).all())
    d = p[..., 2]
    s, t = align_depth_scale_shift(d, s_true[:, None] * d + t_true[:, None], w, trunc=None)
    torch.testing.assert_close(s, s_true, rtol=tol, atol=tol)
    torch.testing.assert_close(t, t_true, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(align_depth_scale(d, s_true[:, None] * d, w), s_true, rtol=tol, atol=tol)


def test_within_one_percent_under_30_percent_outliers() -> None:
    """Inliers with 0.3% relative noise, 30% of the points replaced by gross outliers; MoGe's weights (1/z)
    and truncation 1.  Least squares would be pulled far off; ROE stays within 1%."""
    g = torch.Generator().manual_seed(5)
    batch, n = 4, 200
    p = _cloud(g, batch, n)
    s_true, t_true = 2.5, 0.8
    q = s_true * p + torch.tensor([0.0, 0.0, t_true], dtype=F64)
    q = q * (1 + 0.003 * torch.randn(q.shape, generator=g, dtype=F64))
    outlier = torch.rand(batch, n, generator=g) < 0.3
    # gross, one-sided outliers (1.5x to 4x too far, and scattered): they drag least squares off
    junk = q * (1.5 + 2.5 * torch.rand(batch, n, 1, generator=g, dtype=F64))
    junk = junk + torch.randn(batch, n, 3, generator=g, dtype=F64)
    q = torch.where(outlier[..., None], junk, q)
    w = 1 / q[..., 2].clamp_min(1e-2)
    s = align_points_scale(p, q - torch.tensor([0.0, 0.0, t_true], dtype=F64), w, trunc=1.0)
    assert bool(((s / s_true - 1).abs() < 0.01).all()), s
    s, shift = align_points_scale_z_shift(p, q, w, trunc=1.0)
    assert bool(((s / s_true - 1).abs() < 0.01).all()), s
    assert bool(((shift[:, 2] - t_true).abs() < 0.01 * 3 * s_true).all()), shift  # 1% of the depth (~7.5)
    s, t = align_depth_scale_shift(p[..., 2], q[..., 2], w, trunc=1.0)
    assert bool(((s / s_true - 1).abs() < 0.01).all()), s
    # the least-squares scale on the same data, for comparison: far off
    ls = (p * (q - torch.tensor([0.0, 0.0, t_true], dtype=F64))).sum((-1, -2)) / (p * p).sum((-1, -2))
    assert bool(((ls / s_true - 1).abs() > 0.2).all()), ls


# ------------------------------------------------------------------------------------------------ brute force 2-D


def _pair_brute_force(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, shifted: torch.Tensor,
                      trunc: float | None) -> float:
    """min over all (s, t) defined by two vanishing residuals, one of them shifted: the vertices of the cost's
    arrangement, enumerated one pair at a time (x, y, w over the flat terms, shifted: which terms t moves)."""
    best = math.inf
    n = x.shape[0]
    for p in range(n):
        if not shifted[p] or w[p] <= 0:
            continue
        for k in range(n):
            den = x[k] - (x[p] if shifted[k] else 0.0)
            if k == p or den == 0:
                continue
            s = (y[k] - (y[p] if shifted[k] else 0.0)) / den
            t = y[p] - s * x[p]
            r = w * (s * x + shifted * t - y).abs()
            best = min(best, float((r if trunc is None else r.clamp_max(trunc)).sum()))
    return best


@pytest.mark.parametrize("trunc", [None, 0.4])
def test_scale_shift_equals_brute_force_over_pairs(trunc: float | None) -> None:
    g = torch.Generator().manual_seed(6)
    for trial in range(6):
        n = 6 + trial
        p = _cloud(g, 1, n)[0]
        q = 1.3 * p + 0.4 * torch.randn(n, 3, generator=g, dtype=F64)
        w = torch.rand(n, generator=g, dtype=F64)
        w[0] = 0.0  # a zero-weight point is neither an anchor nor a residual
        s, shift = align_points_scale_z_shift(p, q, w, trunc)
        ours = truncated_l1_cost(torch.ones((), dtype=F64), (s * p + shift).reshape(-1), q.reshape(-1),
                                 w[:, None].expand(n, 3).reshape(-1), trunc)
        shifted = torch.tensor([0.0, 0.0, 1.0], dtype=F64).repeat(n)
        brute = _pair_brute_force(p.reshape(-1), q.reshape(-1), w[:, None].expand(n, 3).reshape(-1), shifted, trunc)
        assert abs(float(ours) - brute) <= REL * (1 + brute), (trial, float(ours), brute)
        # depth: every term shifted
        s, t = align_depth_scale_shift(p[:, 2], q[:, 2], w, trunc)
        ours = truncated_l1_cost(torch.ones((), dtype=F64), s * p[:, 2] + t, q[:, 2], w, trunc)
        brute = _pair_brute_force(p[:, 2], q[:, 2], w, torch.ones(n, dtype=F64), trunc)
        assert abs(float(ours) - brute) <= REL * (1 + brute), (trial, float(ours), brute)
        # and no random (s, t) nearby does better
        ss = s + 0.5 * torch.randn(2000, generator=g, dtype=F64)
        tt = t + 0.5 * torch.randn(2000, generator=g, dtype=F64)
        r = w * (ss[:, None] * p[:, 2] + tt[:, None] - q[:, 2]).abs()
        r = r if trunc is None else r.clamp_max(trunc)
        assert float(r.sum(-1).min()) >= float(ours) * (1 - REL)


def test_max_points_subset_and_chunking() -> None:
    g = torch.Generator().manual_seed(7)
    p = _cloud(g, 2, 300)
    w = (torch.rand(2, 300, generator=g) > 0.2).to(F64)
    q = 1.9 * p + torch.tensor([0, 0, 0.25], dtype=F64)
    # clean data: any two clean points give the exact answer, so a strided subset does too
    s, shift = align_points_scale_z_shift(p, q, w, 1.0, max_points=40)
    torch.testing.assert_close(s, torch.full((2,), 1.9, dtype=F64))
    torch.testing.assert_close(shift[:, 2], torch.full((2,), 0.25, dtype=F64))
    noisy = q + 0.05 * torch.randn(q.shape, generator=g, dtype=F64)
    full = align_points_scale_z_shift(p[:, :60], noisy[:, :60], w[:, :60], 1.0)
    same = align_points_scale_z_shift(p[:, :60], noisy[:, :60], w[:, :60], 1.0, max_points=60, chunk_elements=97)
    torch.testing.assert_close(full, same, rtol=0, atol=0)
    idx, ok = strided_subset(torch.tensor([[True, False, True, True, False, True, True, True]]), 3)
    assert idx.tolist() == [[0, 3, 6]] and ok.all()  # valid positions 0 2 3 5 6 7 -> every second one
    idx, ok = strided_subset(torch.tensor([[False, True, False, True]]), 3)
    assert idx[ok].tolist() == [1, 3] and ok.tolist() == [[True, True, False]]


def test_downsample_masked_nearest_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(8)
    height, width, h, w = 13, 17, 5, 4
    values = torch.randn(2, height, width, 3, generator=g)
    mask = torch.rand(2, height, width, generator=g) > 0.6
    mask[1, :6, :9] = False  # a whole empty cell
    out, out_mask = downsample_masked_nearest(values, mask=mask, size=(h, w))
    for b in range(2):
        for i in range(h):
            for j in range(w):
                rows = [r for r in range(height) if r * h // height == i]
                cols = [c for c in range(width) if c * w // width == j]
                ci, cj = (i + 0.5) * height / h - 0.5, (j + 0.5) * width / w - 0.5
                cands = [((r - ci) ** 2 + (c - cj) ** 2, r, c) for r in rows for c in cols if mask[b, r, c]]
                assert bool(out_mask[b, i, j]) == bool(cands)
                if cands:
                    _, r, c = min(cands)  # nearest, then the first in row-major order
                    assert torch.equal(out[b, i, j], values[b, r, c])
    with pytest.raises(ValueError):
        downsample_masked_nearest(values, mask=mask, size=(height + 1, width))


# ------------------------------------------------------------------------------------------------ MoGe, gradients


def test_same_optimum_as_moge_on_the_same_inputs() -> None:
    alignment = pytest.importorskip("moge.utils.alignment", reason="MoGe (dlr-moge) is not installed")
    g = torch.Generator().manual_seed(9)
    for trial in range(4):
        trunc = None if trial % 2 else 1.0
        p = _cloud(g, 3, 64)
        q = 1.4 * p + torch.tensor([0, 0, 0.3], dtype=F64) + 0.1 * torch.randn(3, 64, 3, generator=g, dtype=F64)
        q[:, :10] = torch.rand(3, 10, 3, generator=g, dtype=F64) * 6  # outliers
        w = 1 / q[..., 2].clamp_min(1e-2)
        w[:, 5] = 0

        a, cost, _ = solve_scale_1d(p[..., 0], q[..., 0], w, trunc)
        a_m, cost_m, _ = alignment.align(p[..., 0], q[..., 0], w, trunc)
        assert _close(cost, cost_m) and _close(a, a_m)
        assert _close(align_points_scale(p, q, w, trunc), alignment.align_points_scale(p, q, w, trunc))
        assert _close(align_depth_scale(p[..., 2], q[..., 2], w, trunc),
                      alignment.align_depth_scale(p[..., 2], q[..., 2], w, trunc))

        def point_cost(s: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            r = w[..., None] * (s[:, None, None] * p + shift[:, None] - q).abs()
            return (r if trunc is None else r.clamp_max(trunc)).sum((-1, -2))

        ours, theirs = align_points_scale_z_shift(p, q, w, trunc), alignment.align_points_scale_z_shift(p, q, w, trunc)
        assert _close(point_cost(*ours), point_cost(*theirs))
        assert _close(ours[0], theirs[0]) and _close(ours[1], theirs[1])

        def depth_cost(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            r = w * (s[:, None] * p[..., 2] + t[:, None] - q[..., 2]).abs()
            return (r if trunc is None else r.clamp_max(trunc)).sum(-1)

        ours = align_depth_scale_shift(p[..., 2], q[..., 2], w, trunc)
        theirs = alignment.align_depth_affine(p[..., 2], q[..., 2], w, trunc)
        assert _close(depth_cost(*ours), depth_cost(*theirs))


def test_gradients_match_finite_differences() -> None:
    """The returned scale / shift are smooth functions of the two chosen terms (the choice is locally
    constant on generic data): autograd must match central differences (gradcheck, float64, eps 1e-6)."""
    g = torch.Generator().manual_seed(10)
    p = _cloud(g, 2, 12).requires_grad_(True)
    q = (1.3 * p.detach() + 0.2 * torch.randn(2, 12, 3, generator=g, dtype=F64)).requires_grad_(True)
    w = torch.rand(2, 12, generator=g, dtype=F64)
    for trunc in (None, 0.5):
        assert torch.autograd.gradcheck(lambda a, b: align_points_scale(a, b, w, trunc), (p, q))
        assert torch.autograd.gradcheck(lambda a, b: align_points_scale_z_shift(a, b, w, trunc), (p, q))
        assert torch.autograd.gradcheck(lambda a, b: align_depth_scale_shift(a[..., 2], b[..., 2], w, trunc), (p, q))
    # and the gradient is not trivially zero
    s, shift = align_points_scale_z_shift(p, q, w, 0.5)
    (s.sum() + shift.sum()).backward()
    assert p.grad.abs().sum() > 0 and q.grad.abs().sum() > 0
