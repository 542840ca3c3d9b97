"""One-way Chamfer distance from mesh vertices to a point cloud (UniSH stage 3, Eq. 4), batched and chunked.

    L(S -> P) = sum over the masked sources s of min over the masked targets p of |s - p|^2

A sum over the sources, not a mean (the paper's Eq. 4: a sum over the visible SMPL vertices).  The nearest
target of each source is found without gradients, chunk by chunk (at most `chunk_elements` source-target
pairs at once), from |s|^2 - 2 s.p + |p|^2 on coordinates centred on the targets' mean (smaller magnitudes,
less cancellation); then the chosen pairs' squared distances are recomputed exactly with autograd, so the
gradient reaches both the sources and their nearest targets (the gradient of a min is that of its argmin).
The targets of each item are first packed to the front (masked points dropped), so the cost scales with the
number of valid target points, not with the image size.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["nearest_target", "one_way_chamfer", "pack_masked"]

DEFAULT_CHAMFER_CHUNK = 2 ** 20  # source-target pairs per chunk (float32: 4 MB per temporary, cache-sized)


def pack_masked(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's masked-in points to the front: points (R, N, C), mask (R, N) bool ->
    (packed (R, M, C), packed_mask (R, M)) with M = the largest count over the rows (at least 1).
    Differentiable in `points` (a gather)."""
    rows, n = mask.shape
    count = mask.sum(-1)
    m = max(1, int(count.max()) if rows else 1)
    order = torch.sort(mask.to(torch.uint8), dim=-1, descending=True, stable=True).indices[:, :m]
    packed = points.gather(1, order[..., None].expand(-1, -1, points.shape[-1]))
    packed_mask = torch.arange(m, device=mask.device)[None] < count[:, None]
    return packed, packed_mask


def nearest_target(source: Tensor, target: Tensor, target_mask: Tensor | None = None, *,
                   chunk_elements: int = DEFAULT_CHAMFER_CHUNK) -> Tensor:
    """Index (R, S) of the nearest masked target of every source; source (R, S, 3), target (R, P, 3),
    target_mask (R, P) bool (None: all).  Rows without any target get index 0.  No gradient."""
    rows, n_src, _ = source.shape
    n_tgt = target.shape[1]
    with torch.no_grad():
        src, tgt = source.detach(), target.detach()
        if target_mask is None:
            target_mask = torch.ones(rows, n_tgt, dtype=torch.bool, device=target.device)
        weight = target_mask.to(tgt.dtype)[..., None]
        centre = (tgt * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)
        src, tgt = src - centre, tgt - centre
        tgt_sq = (tgt * tgt).sum(-1)
        tgt_sq = torch.where(target_mask, tgt_sq, math.inf)
        index = torch.empty(rows, n_src, dtype=torch.long, device=source.device)
        src_per_chunk = max(1, chunk_elements // max(n_tgt, 1))
        rows_per_chunk = max(1, src_per_chunk // max(n_src, 1))
        for r0 in range(0, rows, rows_per_chunk):
            r1 = min(rows, r0 + rows_per_chunk)
            for s0 in range(0, n_src, src_per_chunk):
                s1 = min(n_src, s0 + src_per_chunk)
                s = src[r0:r1, s0:s1]
                # |p|^2 - 2 s.p in one fused call (|s|^2 is the same for every target of a source)
                d = torch.baddbmm(tgt_sq[r0:r1, None, :], s, tgt[r0:r1].transpose(1, 2), alpha=-2.0)
                index[r0:r1, s0:s1] = d.argmin(dim=-1)
    return index


def one_way_chamfer(source: Tensor, target: Tensor, source_mask: Tensor | None = None,
                    target_mask: Tensor | None = None, *, chunk_elements: int = DEFAULT_CHAMFER_CHUNK) -> Tensor:
    """sum_{s in S, source_mask} min_{p in P, target_mask} |s - p|^2 per item (UniSH Eq. 4).

    source: (..., S, 3) e.g. SMPL vertices; target: (..., P, 3) e.g. the person's points; same frame and unit
    (squared units out).  Masks (..., S) / (..., P) bool, None = all.  Returns (...); an item with no masked
    target or no masked source gives 0.  Differentiable in both clouds; invariant to the order of the points.
    """
    lead = source.shape[:-2]
    rows = math.prod(lead)
    src = source.reshape(rows, -1, 3)
    tgt = target.reshape(rows, -1, 3)
    src_mask = (torch.ones(src.shape[:2], dtype=torch.bool, device=src.device) if source_mask is None
                else source_mask.reshape(rows, -1))
    tgt_mask = (torch.ones(tgt.shape[:2], dtype=torch.bool, device=tgt.device) if target_mask is None
                else target_mask.reshape(rows, -1))
    tgt, tgt_mask = pack_masked(tgt, tgt_mask)
    src, src_mask = pack_masked(src, src_mask)
    index = nearest_target(src, tgt, tgt_mask, chunk_elements=chunk_elements)
    nearest = tgt.gather(1, index[..., None].expand(-1, -1, 3))
    sq = (src - nearest).square().sum(-1)
    has_target = tgt_mask.any(-1, keepdim=True)
    sq = torch.where(src_mask & has_target, sq, torch.zeros_like(sq))
    return sq.sum(-1).reshape(lead)
