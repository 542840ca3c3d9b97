"""The three stages' loss weights and knobs, one frozen dataclass per stage, with where each number comes from.

"paper" = the UniSH paper (FACTS.md, "Paper numbers"); "MoGe" = microsoft/MoGe's training losses
(FACTS.md, "MoGe's training losses"); "ours" = a choice the paper leaves open, with the reason.
2D keypoint errors (stages 2 and 3) are measured in units of the image's longer side (ours: the paper does not
state the unit; a 10 px error on a 518 px wide frame is 0.019), see `keypoint_l1`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stage1Config", "Stage2Config", "Stage3Config"]


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1, human surface refinement: lambda_h * L_h + lambda_preg * |P - P_orig|_1, mean over frames."""

    lambda_h: float = 1.0  # paper
    lambda_preg: float = 0.1  # paper
    tau: float = 0.2  # paper: patch radius, metres (a 3D distance on the metric MoGe-2 points)
    num_anchors: int = 16  # K anchors per frame. ours: the paper does not give K; MoGe's local loss draws 16
    min_patch_points: int = 32  # MoGe: MINIMUM_POINTS_PER_PATCH; smaller patches are dropped
    # ours: a patch's loss averages over at most this many of its points (a uniform random subset when larger;
    # a person 2-4 m away at f ~ 500 px gives patches of a few hundred to ~3000 pixels)
    max_patch_points: int = 4096
    # the "downsample before the O(N^2) anchor search": ROE runs on a uniform random subset of this many patch
    # points (MoGe resizes a patch to 32 x 32 on GPU; 64 keeps the CPU cost ~1 s for 2 x 30 frames x 16 patches)
    align_points: int = 64
    # ROE weights 1 / tau and truncation 1: residuals are measured in patch radii and capped at one radius
    # (MoGe's local loss: weight mask / radius_3d, trunc 1)
    align_trunc: float = 1.0
    patch_within_mask: bool = False  # ours: N_k is every valid MoGe point within tau (the paper), not only the mask's
    min_depth: float = 1e-3  # MoGe depths <= this (metres) are invalid
    roe_chunk_elements: int = 2 ** 20  # anchor-search chunk (see roe.py)
    membership_chunk_elements: int = 2 ** 24  # (anchor, pixel) distance tests per chunk


@dataclass(frozen=True)
class Stage2Config:
    """Stage 2, coarse alignment: lambda_smpl * mean over frames of L_smpl + lambda_scale * |s - s_opt|_1."""

    lambda_smpl: float = 1.0  # paper
    lambda_scale: float = 0.1  # paper
    w_vertices: float = 0.1  # paper: 0.1 |V - V_gt|_1
    w_joints_3d: float = 0.1  # paper: 0.1 |J3d - J3d_gt|_1
    w_joints_2d: float = 10.0  # paper: 10 |J2d - J2d_gt|_1
    w_pose: float = 0.1  # paper: 0.1 |theta - theta_gt|^2
    w_shape: float = 0.1  # paper: 0.1 |beta - beta_gt|^2
    w_transl: float = 1.0  # paper: 1 |s_opt t - t_gt|^2
    # s_opt: ROE scale of the normalised predicted points onto the ground truth, per clip, on maps
    # masked-nearest downsampled to this size (MoGe's global loss aligns at 64 x 64)
    align_resolution: int = 64
    align_trunc: float = 1.0  # MoGe: trunc 1 with weight mask / gt_z (residuals relative to depth)
    min_gt_depth: float = 1e-2  # MoGe: gt_z.clamp_min(1e-2) in the alignment weight
    min_depth: float = 1e-3  # metres: projected joints' depth is clamped here (a joint behind the camera)


@dataclass(frozen=True)
class Stage3Config:
    """Stage 3, fine alignment: mean over frames of lambda_align L_align + lambda_dreg L_dreg + lambda_j2d L_j2d."""

    lambda_align: float = 1.0  # paper
    lambda_dreg: float = 1.0  # paper
    lambda_j2d: float = 10.0  # paper
    near: float = 1e-3  # metres: triangles with a vertex closer than this are not rasterised
    raster_chunk_elements: int = 2 ** 22  # (triangle, pixel) pairs per rasteriser chunk
    chamfer_chunk_elements: int = 2 ** 20  # (vertex, point) pairs per nearest-neighbour chunk (cache-sized)
    min_depth: float = 1e-3  # metres: projected joints' depth is clamped here
