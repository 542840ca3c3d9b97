"""Stage 1, human surface refinement: the confidence-aware local human loss and the point-map regulariser.

    L_1 = mean over frames of  lambda_h L_h + lambda_preg |P - P_orig|_1          (paper, FACTS.md; 1 and 0.1)

    L_h = (1/K) sum_k (1/|N_k|) sum_{j in N_k} C_j |s_k D^_j + t_k - D_j|

* Anchors: K pixels per frame drawn uniformly (with replacement) from the SAM2 person mask restricted to valid
  MoGe pixels.  X_k = the anchor's MoGe point (depth unprojected with MoGe's pixel intrinsics).
* Patch N_k: every valid MoGe pixel whose point lies within tau (0.2 m; MoGe-2 is metric) of X_k, in 3D,
  anywhere in the image (a 3D ball, not a pixel window: the search runs over a pixel window computed to
  contain the whole ball, see `patch_members`; `patch_within_mask` restricts N_k to the person mask).  Patches
  with fewer than `min_patch_points` (32, MoGe's MINIMUM_POINTS_PER_PATCH) points are dropped; a patch with
  more than `max_patch_points` points is averaged over a uniform random subset of that size.
* (s_k, t_k): ROE scale and shift (`roe.align_depth_scale_shift`) of the predicted depths D^ (z of the
  predicted camera-frame points, model units) onto the MoGe depths D (metres) of the patch, weight 1/tau,
  truncation 1 (residuals in patch radii, capped at one radius, as MoGe's local loss), on a uniform random
  subset of `align_points` patch points (the downsampling before the O(N^2) anchor search).  Gradients flow
  through s_k and t_k (recomputed from the chosen pair of points, as MoGe).  A patch whose scale is <= 0 has
  no sensible alignment and is dropped.
* C = the model's confidence (sigmoid of its logits, UniSHOutput.point_conf).  Its decoder is frozen in
  stage 1, so C is detached here (it weights the loss, it is not learned by it).
* The per-frame sum over kept patches is divided by K, the number of anchors drawn (the paper's 1/K; MoGe
  also divides by the requested patch count), so frames without a usable patch contribute 0.

Where we differ from MoGe's `affine_invariant_local_loss` (the model for this one), as the paper does:
anchors on the person mask (MoGe: importance sampling over all valid pixels), a fixed metric radius tau
(MoGe: a radius from the focal and the level), depth scale + shift (MoGe: xyz scale + xyz shift), confidence
weights and a mean over the patch's points (MoGe: weights 1 / depth and a mean over a fixed window); and no
global-scale consistency check (MoGe drops patches whose scale is outside (0.1, 10) x the global scale; we have
no global alignment in this stage, so only scales <= 0 are dropped).

P_orig: the ORIGINAL point decoder applied to the same frozen features.  Only the point decoder trains in
stage 1, so `FrozenPointHead` keeps a frozen copy of just the point decoder and its pixel-shuffle head (not the
whole model) and reproduces the scene branch's point path from `SceneOutput.hidden`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..postprocess import depth_to_point_map
from ..scene import SceneBranch, SceneOutput, decode_points
from ._common import full_precision
from .config import Stage1Config
from .roe import align_depth_scale_shift

__all__ = ["Stage1Inputs", "stage1_loss", "local_human_loss", "sample_anchors", "patch_members",
           "point_regularizer", "FrozenPointHead", "original_points"]


@dataclass
class Stage1Inputs:
    """Everything the stage-1 loss reads; B clips of T frames, H x W pixels; camera frames are OpenCV (x right,
    y down, z forward); masks are bool."""

    points: Tensor  # (B, T, H, W, 3) predicted camera-frame points of the TRAINED point decoder, model units
    points_orig: Tensor  # (B, T, H, W, 3) the original point decoder's points on the same features (no grad)
    confidence: Tensor  # (B, T, H, W) the model's confidence in [0, 1] (point_conf), frozen
    depth: Tensor  # (B, T, H, W) MoGe-2 depth, metres
    depth_valid: Tensor  # (B, T, H, W) bool: MoGe's validity mask
    intrinsics: Tensor  # (B, T, 3, 3) MoGe's intrinsics in pixels (principal point at the centre)
    person_mask: Tensor  # (B, T, H, W) bool: the SAM2 mask of the person


# ------------------------------------------------------------------------------------------------ random


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers made on the generator's device (reproducible with a seeded generator)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def sample_anchors(candidates: Tensor, num: int, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
    """K anchor pixels per row, uniform with replacement over the row's candidates.

    candidates: (R, P) bool (person mask & valid depth, flattened pixels).  Returns (index (R, K) long,
    ok (R,) bool: the row had at least one candidate; rows without one get index 0)."""
    rows, pixels = candidates.shape
    ok = candidates.any(-1)
    # inverse-CDF sampling on the row's candidate count: no per-row multinomial, works with any generator
    count = candidates.sum(-1, keepdim=True)
    u = _rand((rows, num), generator, candidates.device)
    rank = (u * count).floor().long().clamp_max((count - 1).clamp_min(0))  # (R, K) in [0, count)
    cum = candidates.long().cumsum(-1)  # position among candidates, 1-based
    index = torch.searchsorted(cum, rank + 1)  # first pixel whose cumulative count reaches rank + 1
    return torch.where(ok[:, None], index.clamp_max(pixels - 1), 0), ok


def patch_members(points: Tensor, valid: Tensor, anchors: Tensor, intrinsics: Tensor, tau: float, max_points: int,
                  generator: torch.Generator | None = None, chunk_elements: int = 2 ** 24
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The points of each anchor's patch: valid points within `tau` (3D, inclusive) of the anchor's point.

    points: (R, H, W, 3) metric camera-frame points, the unprojection of a depth map through pixel centres with
    `intrinsics` (R, 3, 3) pixels; valid: (R, H, W) bool; anchors: (R, K) flat pixel indices.  Returns
    (index (R, K, M) long flat pixel indices, ok (R, K, M) bool, count (R, K) long): each patch's members in
    uniformly random order (a uniform random subset of M = `max_points` when it has more), then padding.

    Only a pixel window around each anchor is searched: a point p with |p - X| <= tau has depth >= z - tau and
    projects within f tau sqrt(1 + (x/z)^2) / (z - tau) pixels of X along u (likewise v), so that window holds
    the whole ball (+1 px of margin; anchors closer than tau search the whole image).  Windows are grouped by
    power-of-two radius and processed in chunks of `chunk_elements` (anchor, pixel) pairs."""
    rows, height, width, _ = points.shape
    num = anchors.shape[1]
    flat_pts = points.reshape(rows, -1, 3)
    flat_valid = valid.reshape(rows, -1)
    full = max(height, width)
    with torch.no_grad():
        centre = flat_pts.gather(1, anchors[..., None].expand(-1, -1, 3))  # (R, K, 3)
        z = centre[..., 2]
        near = z - tau
        safe = torch.where(near > 0, near, torch.ones_like(near))
        ru = intrinsics[:, 0, 0, None] * tau * torch.sqrt(1 + (centre[..., 0] / z).square()) / safe
        rv = intrinsics[:, 1, 1, None] * tau * torch.sqrt(1 + (centre[..., 1] / z).square()) / safe
        radius = torch.where(near > 0, torch.ceil(torch.maximum(ru, rv)) + 1, torch.full_like(ru, full))
        radius = radius.clamp(1, full).long()
        bucket = torch.pow(2, torch.ceil(torch.log2(radius.to(torch.float64)))).long().clamp_max(full).reshape(-1)
        frame = torch.arange(rows, device=points.device)[:, None].expand(rows, num).reshape(-1)
        a_row = (anchors // width).reshape(-1)
        a_col = (anchors % width).reshape(-1)
        biggest = int(bucket.max()) if bucket.numel() else 1
        m = max(1, min(max_points, (2 * biggest + 1) ** 2))
        index = torch.zeros(rows * num, m, dtype=torch.long, device=points.device)
        ok = torch.zeros(rows * num, m, dtype=torch.bool, device=points.device)
        count = torch.zeros(rows * num, dtype=torch.long, device=points.device)
        for rb in torch.unique(bucket).tolist():
            sel = torch.nonzero(bucket == rb)[:, 0]
            side = 2 * rb + 1
            offsets = torch.arange(side, device=points.device) - rb
            take = min(m, side * side)
            per_chunk = max(1, chunk_elements // (side * side))
            for lo in range(0, sel.numel(), per_chunk):
                s = sel[lo:lo + per_chunk]
                r = a_row[s, None] + offsets[None]  # (n, side)
                c = a_col[s, None] + offsets[None]
                inside = ((r >= 0) & (r < height))[:, :, None] & ((c >= 0) & (c < width))[:, None, :]
                pix = (r.clamp(0, height - 1) * width)[:, :, None] + c.clamp(0, width - 1)[:, None, :]
                pix = pix.reshape(s.numel(), -1)  # (n, side * side)
                f = frame[s, None]
                d2 = (flat_pts[f, pix] - centre.reshape(-1, 3)[s, None]).square().sum(-1)
                member = inside.reshape(s.numel(), -1) & flat_valid[f, pix] & (d2 <= tau * tau)
                keys = torch.where(member, _rand(tuple(member.shape), generator, member.device), -1.0)
                top, pos = keys.topk(take, dim=-1)
                index[s, :take] = pix.gather(1, pos)
                ok[s, :take] = top >= 0
                count[s] = member.sum(-1)
    return index.reshape(rows, num, m), ok.reshape(rows, num, m), count.reshape(rows, num)


# ------------------------------------------------------------------------------------------------ losses


def local_human_loss(pred_depth: Tensor, confidence: Tensor, depth: Tensor, depth_valid: Tensor,
                     intrinsics: Tensor, person_mask: Tensor, config: Stage1Config = Stage1Config(),
                     generator: torch.Generator | None = None, anchors: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
    """L_h per frame (the module docstring has the definition).

    pred_depth: (..., H, W) predicted camera-frame z, model units (any scale and offset: L_h is invariant to
    both); confidence: (..., H, W) in [0, 1] (detached); depth: (..., H, W) MoGe depth, metres; depth_valid,
    person_mask: (..., H, W) bool; intrinsics: (..., 3, 3) MoGe's, pixels.  `anchors` (frames, K) flat pixel
    indices replaces the random draw (tests).  Returns (L_h (...), patches kept (...) long)."""
    lead = pred_depth.shape[:-2]
    height, width = pred_depth.shape[-2:]
    frames = math.prod(lead)
    cfg = config
    pixels = height * width
    pred = pred_depth.reshape(frames, pixels)
    conf = confidence.detach().reshape(frames, pixels)
    with torch.no_grad():
        d = depth.detach().reshape(frames, height, width).to(pred.dtype)
        valid = depth_valid.reshape(frames, height, width) & torch.isfinite(d) & (d > cfg.min_depth)
        d = torch.where(valid, d, torch.zeros_like(d))
        k = intrinsics.detach().reshape(frames, 3, 3).to(pred.dtype)
        k_norm = k.clone()
        k_norm[:, 0] /= width
        k_norm[:, 1] /= height
        points = depth_to_point_map(d, k_norm)  # (F, H, W, 3) metric, MoGe's camera frame
        valid = valid.reshape(frames, pixels)
        person = person_mask.reshape(frames, pixels)
        if anchors is None:
            anchors, anchor_ok = sample_anchors(person & valid, cfg.num_anchors, generator)
        else:
            anchors = anchors.reshape(frames, -1).to(device=pred.device, dtype=torch.long)
            anchor_ok = torch.ones(frames, dtype=torch.bool, device=pred.device)
            anchor_ok = anchor_ok & valid.gather(1, anchors).all(-1)
        num = anchors.shape[1]
        member_valid = valid & person if cfg.patch_within_mask else valid
        index, ok, count = patch_members(points, member_valid.reshape(frames, height, width), anchors, k, cfg.tau,
                                         cfg.max_patch_points, generator, cfg.membership_chunk_elements)
        keep = (count >= cfg.min_patch_points) & anchor_ok[:, None]  # (F, K)
        frame_of, patch_of = torch.nonzero(keep, as_tuple=True)
    kept = torch.zeros(frames, dtype=torch.long, device=pred.device)
    loss = pred.new_zeros(frames)
    if frame_of.numel():
        idx, pok = index[frame_of, patch_of], ok[frame_of, patch_of]  # (N, M)
        p_hat = pred[frame_of[:, None], idx]  # predicted depths of the patch points (with gradient)
        d_patch = d.reshape(frames, pixels)[frame_of[:, None], idx]
        c_patch = conf[frame_of[:, None], idx]
        m = min(cfg.align_points, idx.shape[1])
        weight = pok[:, :m].to(pred.dtype) / cfg.tau
        scale, shift = align_depth_scale_shift(p_hat[:, :m], d_patch[:, :m], weight, cfg.align_trunc,
                                               chunk_elements=cfg.roe_chunk_elements)
        good = scale > 0
        residual = c_patch * (scale[:, None] * p_hat + shift[:, None] - d_patch).abs()
        residual = torch.where(pok, residual, torch.zeros_like(residual))
        per_patch = residual.sum(-1) / pok.sum(-1).clamp_min(1)
        per_patch = torch.where(good, per_patch, torch.zeros_like(per_patch))
        loss = loss.index_add(0, frame_of, per_patch) / num
        kept = kept.index_add(0, frame_of, good.long())
    return loss.reshape(lead), kept.reshape(lead)


def point_regularizer(points: Tensor, points_orig: Tensor) -> Tensor:
    """|P - P_orig|_1 per frame: the mean absolute difference over the H x W x 3 values (model units).
    points, points_orig: (..., H, W, 3); P_orig is treated as a constant.  Returns (...)."""
    return (points - points_orig.detach()).abs().mean(dim=(-3, -2, -1))


def stage1_loss(inputs: Stage1Inputs, config: Stage1Config = Stage1Config(),
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 1 total: mean over the B x T frames of lambda_h L_h + lambda_preg |P - P_orig|_1.

    Returns (total (), terms) with terms "local" (mean L_h), "point_reg" (mean regulariser), "patches" (mean
    kept patches per frame, detached) and "total".  Computed in float32 with autocast off (bf16 inputs are cast
    up).  Pass a seeded `generator` for reproducible anchors and subsets."""
    device = inputs.points.device
    with full_precision(device):
        points = inputs.points.float()
        local, kept = local_human_loss(points[..., 2], inputs.confidence.float(), inputs.depth.float(),
                                       inputs.depth_valid, inputs.intrinsics.float(), inputs.person_mask,
                                       config, generator)
        reg = point_regularizer(points, inputs.points_orig.float())
        total = (config.lambda_h * local + config.lambda_preg * reg).mean()
        terms = {"local": local.mean(), "point_reg": reg.mean(), "patches": kept.float().mean().detach(),
                 "total": total}
    return total, terms


# ------------------------------------------------------------------------------------------------ P_orig


class FrozenPointHead(nn.Module):
    """A frozen copy of the scene branch's point decoder and point head (only those: stage 1 trains nothing
    else), which maps the frozen decoder features to the ORIGINAL camera-frame points P_orig.

    Build it from the pre-trained scene branch BEFORE training starts: `FrozenPointHead(model.scene)`.  It
    deep-copies the two modules (no shared storage), turns off their gradients and stays in eval mode.  Its
    forward reproduces `SceneBranch.forward`'s point path: same RoPE, same autocast on CUDA (the decoder under
    the scene config's autocast dtype, the pixel-shuffle head in float32), local points [xy * exp(z), exp(z)].
    """

    def __init__(self, scene: SceneBranch) -> None:
        super().__init__()
        self.config = scene.config
        self.decoder = copy.deepcopy(scene.point_decoder)
        self.head = copy.deepcopy(scene.point_head)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenPointHead":
        return super().train(False)  # frozen: always in eval mode

    @torch.no_grad()
    def forward(self, scene_output: SceneOutput) -> Tensor:
        """P_orig (B, N, H, W, 3) float32, camera frame, model units, from a scene-branch output's features."""
        return decode_points(self.decoder, self.head, scene_output, self.config)


def original_points(head: FrozenPointHead, scene_output: SceneOutput) -> Tensor:
    """P_orig (B, N, H, W, 3) for a scene-branch output (its `hidden`, `positions`, registers and grid)."""
    return head(scene_output)
