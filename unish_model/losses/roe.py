"""Robust optimal estimation (ROE): the scale, or scale and shift, that best aligns a prediction to a target
under a truncated, weighted L1 cost (MoGe's alignment, FACTS.md "ROE solver"; our own implementation).

The 1-D core (`solve_scale_1d`) minimises, per batch item,

    f(a) = sum_i min(T, w_i * |a * x_i - y_i|)          (T = inf: no truncation)

exactly.  With x_i made positive (flip the signs of x_i and y_i), term i is a "tent" around its ratio
r_i = y_i / x_i: w_i x_i |a - r_i|, capped at T outside [r_i - T/(w_i x_i), r_i + T/(w_i x_i)].  f is piecewise
linear; its convex kinks are the r_i and its concave kinks the cap points, so a minimum sits on some r_i.  We
evaluate f at EVERY r_k at once in one sweep: the tents' left ends, centres and right ends sorted together as
3n "events", f at each centre read off two prefix sums (see `_search_1d`), and take the smallest: O(n log n),
no iteration, no tolerance.  MoGe instead finds the local minima from left/right derivatives (three sorts,
six binary searches) and re-evaluates the cost at each of them with an O(n) sum; both are exact.  The search
runs without gradients in float64 (the prefix-sum form subtracts large sums); the returned scale is then
recomputed as y_k / x_k from the chosen term in the inputs' dtype, so gradients flow into the two numbers
that define it, as in MoGe.

Scale and shift (`align_points_scale_z_shift`, `align_depth_scale_shift`): the optimum of a piecewise-linear
cost in (scale, shift) lies where two residuals vanish, one of them a shifted one (the "anchor").  For every
candidate anchor p, subtracting p's values from the shifted coordinates removes the shift, and the 1-D solver
finds the best scale; the best anchor wins (O(n^2 log n)).  Then scale and shift are recomputed from the two
chosen terms, differentiably.  Zero-weight points take no part (neither anchors nor residuals).  `max_points`
keeps an evenly strided subset of the weighted points for that search (the "downsample before the O(N^2)
search"); `downsample_masked_nearest` does the same for image-shaped maps (MoGe's masked nearest resize to
64 x 64).  The anchor search is chunked (`chunk_elements` 1-D terms at once).

Signatures follow MoGe's `moge.utils.alignment` so both can run on the same inputs:
`align_points_scale(points_src, points_tgt, weight, trunc)` -> scale (...),
`align_points_scale_z_shift(points_src, points_tgt, weight, trunc)` -> (scale (...), shift (..., 3)),
`align_depth_scale(depth_src, depth_tgt, weight, trunc)` -> scale, `align_depth_scale_shift(...)`
(MoGe: `align_depth_affine`) -> (scale, shift).  A returned scale <= 0 means "no positive solution": callers
treat that item as invalid, as MoGe's losses do.  Ties between equal costs go to the smallest ratio / first
anchor, which may differ from MoGe's choice; the cost of both choices is the same.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "solve_scale_1d", "align_points_scale", "align_points_scale_z_shift", "align_depth_scale",
    "align_depth_scale_shift", "truncated_l1_cost", "downsample_masked_nearest", "strided_subset",
]

_SEARCH_DTYPE = torch.float64
DEFAULT_CHUNK_ELEMENTS = 2 ** 20  # 1-D terms per anchor-search chunk (about 200 MB of float64 temporaries)


# ------------------------------------------------------------------------------------------------ 1-D core


def truncated_l1_cost(a: Tensor, x: Tensor, y: Tensor, w: Tensor, trunc: float | None = None) -> Tensor:
    """f(a) = sum_i min(T, w_i |a x_i - y_i|) over the last axis; a (...) or (..., k) against x, y, w (..., n).

    The plain (O(n) per candidate) definition, used for checking and by callers that want the cost."""
    if a.ndim == x.ndim:  # (..., k) candidates
        r = w[..., None, :] * (a[..., :, None] * x[..., None, :] - y[..., None, :]).abs()
    else:
        r = w * (a[..., None] * x - y).abs()
    return (r if trunc is None else r.clamp_max(trunc)).sum(-1)


def _search_1d(x: Tensor, y: Tensor, w: Tensor, trunc: float | None) -> tuple[Tensor, Tensor]:
    """Exact minimiser of the (truncated) weighted L1 cost per row: x, y, w (R, n) float64 -> (cost (R,),
    index (R,)) with the optimum a = y[index] / x[index]; index = -1 where no term depends on a.

    One sweep over sorted "events": with x_i >= 0, term i is the tent wx_i |a - r_i| capped at T.  Written as
    f(a) = base(a) + sum over the events e <= a of (k_e - a m_e), each tent contributes three events:
    its left end r_i - T/wx_i (k = wy_i - T, m = wx_i), its centre r_i (k = -2 wy_i, m = -2 wx_i) and its right
    end r_i + T/wx_i (k = wy_i + T, m = wx_i), with base = T * (number of tents).  Without truncation only the
    centres remain and base(a) = sum wy - a sum wx.  Each event's own contribution is zero where it sits, so
    the order of tied events does not change the value.  f is evaluated at every centre (the only candidates)
    with one sort and two prefix sums.
    """
    flip = torch.where(x < 0, -1.0, 1.0).to(x.dtype)
    x, y = x * flip, y * flip  # x >= 0 now; |a x - y| is unchanged
    wx, wy = w * x, w * y
    active = wx > 0  # terms that depend on a (x = 0 or w = 0: constant)
    const_terms = w * y.abs()
    if trunc is not None:
        const_terms = const_terms.clamp_max(trunc)
    const = torch.where(active, 0.0, const_terms).sum(-1)
    inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    wx = torch.where(active, wx, 0.0)
    wy = torch.where(active, wy, 0.0)
    ratio = torch.where(active, y / torch.where(active, x, 1.0), inf)
    n = x.shape[-1]
    if trunc is None:
        values, k, m = ratio, -2 * wy, -2 * wx
        base_k, base_m = wy.sum(-1, keepdim=True), wx.sum(-1, keepdim=True)
        centre_lo, centre_hi = 0, n
    else:
        t = float(trunc)
        half = t / torch.where(active, wx, 1.0)
        values = torch.cat((ratio - half, ratio, ratio + half), dim=-1)  # inactive: inf +- finite = inf
        k = torch.cat((wy - t, -2 * wy, wy + t), dim=-1)
        k = torch.where(torch.isfinite(values), k, 0.0)
        m = torch.cat((wx, -2 * wx, wx), dim=-1)
        base_k, base_m = t * active.sum(-1, keepdim=True).to(x.dtype), torch.zeros_like(const)[:, None]
        centre_lo, centre_hi = n, 2 * n
    values, order = values.sort(dim=-1)
    k_cum = k.gather(1, order).cumsum(-1)
    m_cum = m.gather(1, order).cumsum(-1)
    is_centre = (order >= centre_lo) & (order < centre_hi) & torch.isfinite(values)
    a = torch.where(is_centre, values, 0.0)
    cost = (base_k + k_cum) - a * (base_m + m_cum)
    cost = torch.where(is_centre, cost, inf)
    best = cost.argmin(dim=-1, keepdim=True)
    none = ~active.any(-1)
    best_cost = torch.where(none, 0.0, cost.gather(1, best)[:, 0]) + const
    index = torch.where(none, -1, order.gather(1, best)[:, 0] - centre_lo)
    return best_cost, index


def solve_scale_1d(x: Tensor, y: Tensor, w: Tensor, trunc: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """argmin_a sum_i min(T, w_i |a x_i - y_i|) over the last axis, exactly (sorting and prefix sums).

    x, y, w: broadcastable (..., n); w >= 0; trunc T > 0 or None (plain weighted L1: the weighted median of
    y_i / x_i with weights w_i |x_i|).  Returns (a (...), cost (...) detached, index (...) long) with
    a = y[index] / x[index] differentiable in x and y; a = 0 and index = -1 where no term has w_i x_i != 0.
    """
    x, y, w = torch.broadcast_tensors(x, y, w)
    lead, n = x.shape[:-1], x.shape[-1]
    with torch.no_grad():
        cost, index = _search_1d(*(t.detach().reshape(-1, n).to(_SEARCH_DTYPE) for t in (x, y, w)), trunc)
    index = index.reshape(lead)
    safe = index.clamp_min(0)[..., None]
    xk, yk = x.gather(-1, safe)[..., 0], y.gather(-1, safe)[..., 0]
    ok = index >= 0
    a = torch.where(ok, yk / torch.where(ok, xk, torch.ones_like(xk)), torch.zeros_like(yk))
    return a, cost.reshape(lead).to(x.dtype), index


# ------------------------------------------------------------------------------------------------ subsets


def strided_subset(valid: Tensor, max_points: int) -> tuple[Tensor, Tensor]:
    """An evenly spaced subset of each row's valid entries: valid (R, n) bool -> (index (R, m), ok (R, m)),
    m = min(max_points, n).  Rows with <= m valid entries keep all of them (the rest of the row is padding)."""
    rows, n = valid.shape
    m = min(max_points, n)
    count = valid.sum(-1, keepdim=True)
    valid_first = torch.sort(valid.to(torch.uint8), dim=-1, descending=True, stable=True).indices
    k = torch.arange(m, device=valid.device)[None].expand(rows, -1)
    pick = torch.where(count > m, (k * count) // m, k)  # positions among the valid entries
    ok = k < count
    index = valid_first.gather(1, pick.clamp_max(n - 1))
    return index, ok


def downsample_masked_nearest(*maps: Tensor, mask: Tensor, size: tuple[int, int]) -> tuple[Tensor, ...]:
    """Nearest downsampling of image-shaped maps that skips masked-out pixels (MoGe's masked nearest resize).

    maps: each (..., H, W, C) or (..., H, W); mask (..., H, W) bool; size (h, w).  Output cell (i, j) covers the
    source rows [i H / h, (i + 1) H / h) and columns likewise; it takes the valid source pixel nearest to the
    cell's centre (ties: the first in row-major order).  Returns (*maps at (..., h, w[, C]), mask (..., h, w)):
    a cell with no valid pixel is masked out.  Differentiable in the maps (a gather)."""
    height, width = mask.shape[-2:]
    h, w = size
    device = mask.device
    # every cell's candidate source pixels, nearest to the cell centre first
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    cell_r, cell_c = (rows * h) // height, (cols * w) // width
    centre_r = (cell_r.to(torch.float64) + 0.5) * height / h - 0.5
    centre_c = (cell_c.to(torch.float64) + 0.5) * width / w - 0.5
    dist = (rows - centre_r)[:, None] ** 2 + (cols - centre_c)[None, :] ** 2  # (H, W)
    cell = (cell_r[:, None] * w + cell_c[None, :]).reshape(-1)
    # sort pixels by (cell, distance, index): a stable sort on distance, then on cell
    by_dist = torch.sort(dist.reshape(-1), stable=True).indices
    by_cell = by_dist[torch.sort(cell[by_dist], stable=True).indices]
    per_cell = torch.bincount(cell, minlength=h * w)
    if int(per_cell.min()) == 0:
        raise ValueError(f"downsampling {height}x{width} to {h}x{w}: the output must not be larger than the input")
    slots = int(per_cell.max())
    start = torch.cumsum(per_cell, 0) - per_cell
    slot = torch.arange(slots, device=device)
    table_ok = slot[None, :] < per_cell[:, None]  # (hw, slots)
    table = by_cell[(start[:, None] + slot[None, :]).clamp_max(height * width - 1)]

    lead = mask.shape[:-2]
    flat_mask = mask.reshape(-1, height * width)
    cand_valid = flat_mask[:, table] & table_ok  # (R, hw, slots)
    first = cand_valid.to(torch.uint8).argmax(dim=-1)  # first valid candidate (0 if none)
    mask_lr = cand_valid.any(dim=-1)
    src = table[torch.arange(h * w, device=device)[None], first]  # (R, hw) source pixel of each cell
    out = []
    for m in maps:
        has_channels = m.ndim == mask.ndim + 1
        flat = m.reshape(-1, height * width, *(m.shape[-1:] if has_channels else ()))
        if has_channels:
            picked = flat.gather(1, src[..., None].expand(-1, -1, flat.shape[-1]))
            out.append(picked.reshape(*lead, h, w, flat.shape[-1]))
        else:
            out.append(flat.gather(1, src).reshape(*lead, h, w))
    return (*out, mask_lr.reshape(*lead, h, w))


# ------------------------------------------------------------------------------------------------ anchors


def _anchor_search(x: Tensor, y: Tensor, w: Tensor, shifted: Tensor, anchors: Tensor, anchor_ok: Tensor,
                   trunc: float | None, chunk_elements: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each row, the (anchor, term) pair of the optimal scale and shift.

    x, y, w: (R, n) terms (float64, no grad); shifted: (n,) bool, the terms the shift applies to; anchors:
    (R, m) candidate anchor terms (shifted ones), anchor_ok (R, m).  For anchor p the shift is y_p - s x_p, so
    the residual of term i is s (x_i - [i shifted] x_p) - (y_i - [i shifted] y_p): a 1-D scale problem.
    Returns (anchor term (R,), scale term (R,), cost (R,)); -1 terms where a row has no usable anchor."""
    rows, n = x.shape
    m = anchors.shape[1]
    pair_row, pair_slot = torch.nonzero(anchor_ok, as_tuple=True)  # only the usable anchors are searched
    pair_anchor = anchors[pair_row, pair_slot]
    step = max(1, chunk_elements // max(n, 1))
    costs, terms = [], []
    sh = shifted.to(x.dtype)[None]
    for start in range(0, pair_row.numel(), step):
        r = pair_row[start:start + step]
        p = pair_anchor[start:start + step]
        xp = x[r, p][:, None]
        yp = y[r, p][:, None]
        cost, term = _search_1d(x[r] - sh * xp, y[r] - sh * yp, w[r], trunc)
        costs.append(cost)
        terms.append(term)
    cost = torch.full((rows, m), math.inf, dtype=x.dtype, device=x.device)
    term = torch.full((rows, m), -1, dtype=torch.long, device=x.device)
    if costs:
        cost[pair_row, pair_slot] = torch.cat(costs)
        term[pair_row, pair_slot] = torch.cat(terms)
    usable = anchor_ok & (term >= 0)
    cost = torch.where(usable, cost, math.inf)
    best = cost.argmin(dim=-1)
    found = usable.gather(1, best[:, None])[:, 0]
    anchor_term = torch.where(found, anchors.gather(1, best[:, None])[:, 0], -1)
    scale_term = torch.where(found, term.gather(1, best[:, None])[:, 0], -1)
    return anchor_term, scale_term, cost.gather(1, best[:, None])[:, 0]


def _scale_shift_from_terms(x: Tensor, y: Tensor, shifted: Tensor, anchor_term: Tensor, scale_term: Tensor
                            ) -> tuple[Tensor, Tensor]:
    """Recompute (scale, shift) (R,) from the chosen terms of x, y (R, n), differentiably:
    s = (y_k - c_k y_p) / (x_k - c_k x_p) with c_k = [k shifted], shift = y_p - s x_p.  Rows without a
    solution (terms -1) get s = 0, shift = 0."""
    ok = (anchor_term >= 0) & (scale_term >= 0)
    p, k = anchor_term.clamp_min(0)[:, None], scale_term.clamp_min(0)[:, None]
    xp, yp = x.gather(1, p)[:, 0], y.gather(1, p)[:, 0]
    xk, yk = x.gather(1, k)[:, 0], y.gather(1, k)[:, 0]
    ck = shifted[scale_term.clamp_min(0)].to(x.dtype)
    den = xk - ck * xp
    ok = ok & (den != 0)
    scale = torch.where(ok, (yk - ck * yp) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    shift = torch.where(ok, yp - scale * xp, torch.zeros_like(yp))
    return scale, shift


def _weights_or_ones(weight: Tensor | None, like: Tensor) -> Tensor:
    return torch.ones_like(like) if weight is None else weight.to(like.dtype)


def _solve_scale_shift(x: Tensor, y: Tensor, w_point: Tensor, per_point: int, shifted_col: Tensor,
                       trunc: float | None, max_points: int | None, chunk_elements: int) -> tuple[Tensor, Tensor]:
    """Shared body of the two scale+shift solvers.  x, y: (R, N, per_point); w_point (R, N) >= 0; shifted_col
    (per_point,) bool: which of a point's coordinates the shift moves (the anchor is that coordinate)."""
    rows, npts = w_point.shape
    anchor_col = int(torch.nonzero(shifted_col)[0, 0])  # the shifted coordinate an anchor pins
    with torch.no_grad():
        valid = w_point > 0
        # the weighted points packed to the front (an evenly strided subset of max_points when there are more):
        # zero-weight points are neither anchors nor residuals, so they cost nothing
        sub, sub_ok = strided_subset(valid, npts if max_points is None else max_points)  # (R, m)
        m = max(1, int(sub_ok.sum(-1).max()))
        sub, sub_ok = sub[:, :m], sub_ok[:, :m]
        gather3 = sub[..., None].expand(-1, -1, per_point)
        xs = x.detach().gather(1, gather3).to(_SEARCH_DTYPE).reshape(rows, -1)
        ys = y.detach().gather(1, gather3).to(_SEARCH_DTYPE).reshape(rows, -1)
        ws = (w_point.detach().gather(1, sub) * sub_ok).to(_SEARCH_DTYPE)
        ws = ws[..., None].expand(-1, -1, per_point).reshape(rows, -1)
        shifted = shifted_col.repeat(m)
        local_anchor = torch.arange(m, device=x.device)[None].expand(rows, -1) * per_point + anchor_col
        anchor_ok = sub_ok & (ws[:, anchor_col::per_point] > 0)
        anchor_term, scale_term, _ = _anchor_search(xs, ys, ws, shifted, local_anchor, anchor_ok, trunc,
                                                    chunk_elements)
        # back to the full problem's term indices
        def to_full(term: Tensor) -> Tensor:
            point = sub.gather(1, (term.clamp_min(0) // per_point)[:, None])[:, 0]
            return torch.where(term >= 0, point * per_point + term.clamp_min(0) % per_point, -1)

        anchor_full, scale_full = to_full(anchor_term), to_full(scale_term)
    shifted_full = shifted_col.repeat(npts)
    return _scale_shift_from_terms(x.reshape(rows, -1), y.reshape(rows, -1), shifted_full, anchor_full, scale_full)


# ------------------------------------------------------------------------------------------------ public API


def align_points_scale(points_src: Tensor, points_tgt: Tensor, weight: Tensor | None,
                       trunc: float | None = None) -> Tensor:
    """Scale s minimising sum_i sum_{c in xyz} min(T, w_i |s p_ic - q_ic|).

    points_src, points_tgt: (..., N, 3) in any consistent frame; weight: (..., N) >= 0 (None: ones);
    trunc: T or None.  Returns s (...), differentiable (through the one coordinate pair that defines it);
    s <= 0 means no positive solution.  Same call as MoGe's `align_points_scale`."""
    w = _weights_or_ones(weight, points_src[..., 0])
    scale, _, _ = solve_scale_1d(points_src.flatten(-2), points_tgt.flatten(-2),
                                 w[..., None].expand_as(points_src).flatten(-2), trunc)
    return scale


def align_points_scale_z_shift(points_src: Tensor, points_tgt: Tensor, weight: Tensor | None,
                               trunc: float | None = None, *, max_points: int | None = None,
                               chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Scale s and z-shift t minimising sum_i sum_c min(T, w_i |s p_ic + [c = z] t - q_ic|).

    points_src, points_tgt: (..., N, 3), camera frame (the shift is along z, the optical axis); weight
    (..., N) >= 0 (None: ones; MoGe trains with mask / gt_z); trunc T or None.  Anchor search over every
    weighted point (O(N^2 log N)), or over an evenly strided subset of `max_points` valid points.
    Returns (s (...), shift (..., 3) = (0, 0, t)), differentiable; s <= 0: no positive solution.
    Same call as MoGe's `align_points_scale_z_shift` (plus the keyword-only knobs)."""
    lead, n = points_src.shape[:-2], points_src.shape[-2]
    rows = math.prod(lead)
    w = _weights_or_ones(weight, points_src[..., 0]).reshape(rows, n)
    shifted_col = torch.tensor([False, False, True], device=points_src.device)
    scale, shift = _solve_scale_shift(points_src.reshape(rows, n, 3), points_tgt.reshape(rows, n, 3), w, 3,
                                      shifted_col, trunc, max_points, chunk_elements)
    zeros = torch.zeros_like(shift)
    return scale.reshape(lead), torch.stack((zeros, zeros, shift), dim=-1).reshape(*lead, 3)


def align_depth_scale(depth_src: Tensor, depth_tgt: Tensor, weight: Tensor | None,
                      trunc: float | None = None) -> Tensor:
    """Scale s minimising sum_i min(T, w_i |s d_i - D_i|); depth (..., N), weight (..., N).  Returns s (...)."""
    scale, _, _ = solve_scale_1d(depth_src, depth_tgt, _weights_or_ones(weight, depth_src), trunc)
    return scale


def align_depth_scale_shift(depth_src: Tensor, depth_tgt: Tensor, weight: Tensor | None,
                            trunc: float | None = None, *, max_points: int | None = None,
                            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Scale s and shift t minimising sum_i min(T, w_i |s d_i + t - D_i|) (MoGe's `align_depth_affine`).

    depth_src, depth_tgt, weight: (..., N); anchor search over the weighted entries (or an evenly strided
    subset of `max_points`).  Returns (s (...), t (...)), differentiable; s <= 0: no positive solution."""
    lead, n = depth_src.shape[:-1], depth_src.shape[-1]
    rows = math.prod(lead)
    w = _weights_or_ones(weight, depth_src).reshape(rows, n)
    shifted_col = torch.tensor([True], device=depth_src.device)
    scale, shift = _solve_scale_shift(depth_src.reshape(rows, n, 1), depth_tgt.reshape(rows, n, 1), w, 1,
                                      shifted_col, trunc, max_points, chunk_elements)
    return scale.reshape(lead), shift.reshape(lead)
