"""Stage 2, coarse alignment (synthetic data with ground truth; scene branch frozen, human branch + AlignNet train).

    L_2 = lambda_smpl * mean over frames of L_smpl + lambda_scale * mean over clips of |s - s_opt|_1
    L_smpl = 0.1 |V - V*|_1 + 0.1 |J3d - J3d*|_1 + 10 |J2d - J2d*|_1 + 0.1 |theta - theta*|^2
             + 0.1 |beta - beta*|^2 + 1 |s_opt t - t*|^2                               (paper, FACTS.md)

Definitions (the paper gives the weights; the rest is ours, as HMR-style trainers do it):
* Normalised scene: P_n = P / norm and t_n = t / norm with norm = the mean |p| of the model's masked
  camera-frame points over the clip (`postprocess.normalization_factor`, the same factor the model's metric
  scale s = AlignNet scale / norm uses), so s * P_n and s * t_n are metric.
* s_opt (per clip): the ROE-optimal scale of P_n onto the ground-truth camera-frame points, over all frames of
  the clip (`roe.align_points_scale`: scale only, no shift; weight valid / max(gt_z, 0.01), truncation 1, as
  MoGe's global alignment), on maps masked-nearest downsampled to 64 x 64.  It is a target: detached.  A clip
  whose s_opt is not positive has no usable alignment: its scale, translation and 2D terms are 0.
* |x|_1 and |x|^2 are means over the elements (MAE / MSE).  V and J3d are pelvis-relative (joint 0 subtracted
  from both), so they measure pose and shape only; the translation has its own term.  theta are the 24 joint
  rotation MATRICES (root in the camera frame), beta the per-frame shape.
* t is SMPL's `transl` in the camera frame (vertices_cam = BodyModel(theta, beta) + t); the model's metric
  estimate of it here is s_opt * t_n.  J2d = the joints at that translation projected with the PREDICTED pixel
  intrinsics, compared with the ground-truth 2D joints in units of the image's longer side (`keypoint_l1`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..body import BodyModel
from ..postprocess import normalization_factor
from ._common import full_precision, keypoint_l1, pose_body, pose_matrices
from .config import Stage2Config
from .roe import align_points_scale, downsample_masked_nearest

__all__ = ["Stage2Inputs", "stage2_loss", "optimal_scale"]


@dataclass
class Stage2Inputs:
    """B clips of T frames, H x W pixels.  Camera frames are OpenCV (x right, y down, z forward); masks bool."""

    local_points: Tensor  # (B, T, H, W, 3) predicted camera-frame points, model units (UniSHOutput.local_points)
    point_mask: Tensor  # (B, T, H, W) the model's mask (UniSHOutput.masks) that defines the normalisation
    scale: Tensor  # (B, 1) or (B,) AlignNet's scale of the normalised scene (UniSHOutput.scale)
    trans_cam: Tensor  # (B, T, 3) AlignNet's SMPL translation, camera frame, model units (UniSHOutput.trans_cam)
    pose: Tensor  # (B, T, 24, 3, 3) predicted joint rotations, root in the camera frame (UniSHOutput.pose_cam)
    betas: Tensor  # (B, T, 10) predicted shape per frame (UniSHOutput.betas_per_frame)
    intrinsics: Tensor  # (B, T, 3, 3) predicted pixel intrinsics (the scene branch's focal, principal point centred)
    gt_points: Tensor  # (B, T, H, W, 3) ground-truth camera-frame points, metres
    gt_point_mask: Tensor  # (B, T, H, W) bool: valid ground-truth points
    gt_pose: Tensor  # (B, T, 24, 3, 3) rotation matrices, or (B, T, 72) axis-angle; root in the camera frame
    gt_betas: Tensor  # (B, T, 10) or (B, 10)
    gt_trans: Tensor  # (B, T, 3) SMPL transl, camera frame, metres
    gt_joints_2d: Tensor  # (B, T, 24, 2) ground-truth 2D joints, pixels
    gt_joints_2d_weight: Tensor | None = None  # (B, T, 24) >= 0 (visibility), None = all ones


def optimal_scale(points_norm: Tensor, gt_points: Tensor, mask: Tensor, config: Stage2Config = Stage2Config()
                  ) -> Tensor:
    """s_opt (B,): the ROE scale of the normalised predicted points onto the ground truth over each clip.

    points_norm, gt_points: (B, T, H, W, 3) camera frame (model-normalised / metres); mask (B, T, H, W) bool,
    the pixels both are valid at.  Maps are masked-nearest downsampled to `align_resolution` squared per frame
    first; weight = 1 / max(gt_z, min_gt_depth), truncation `align_trunc`.  Detached (a target)."""
    with torch.no_grad():
        size = config.align_resolution
        height, width = mask.shape[-2:]
        if height > size or width > size:
            size_hw = (min(size, height), min(size, width))
            points_norm, gt_points, mask = downsample_masked_nearest(points_norm, gt_points, mask=mask, size=size_hw)
        b = mask.shape[0]
        src = points_norm.reshape(b, -1, 3)
        tgt = gt_points.reshape(b, -1, 3)
        m = mask.reshape(b, -1)
        tgt = torch.where(m[..., None], tgt, torch.ones_like(tgt))
        weight = m.to(src.dtype) / tgt[..., 2].abs().clamp_min(config.min_gt_depth)
        return align_points_scale(src, tgt, weight, config.align_trunc)


def stage2_loss(inputs: Stage2Inputs, body: BodyModel, config: Stage2Config = Stage2Config()
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 2 total and its terms (see the module docstring).

    body: the SMPL `BodyModel` (posed in float32).  Returns (total (), terms) with terms "smpl" (mean L_smpl),
    "vertices", "joints_3d", "joints_2d", "pose", "shape", "transl" (unweighted means), "scale" (mean
    |s - s_opt|), "s_opt" (mean, detached), "valid_clips" (detached) and "total".  Float32, autocast off."""
    cfg = config
    x = inputs
    device = x.local_points.device
    with full_precision(device):
        local_points = x.local_points.float()
        b, t, height, width = local_points.shape[:4]
        norm = normalization_factor(local_points.detach(), x.point_mask)  # (B,) frozen scene: a constant
        points_norm = local_points / norm[:, None, None, None, None]
        trans_norm = x.trans_cam.float() / norm[:, None, None]
        gt_points = x.gt_points.float()
        align_mask = x.point_mask & x.gt_point_mask & torch.isfinite(gt_points).all(-1)
        s_opt = optimal_scale(points_norm.detach(), gt_points, align_mask, cfg)  # (B,)
        clip_ok = s_opt > 0
        s_opt = torch.where(clip_ok, s_opt, torch.zeros_like(s_opt))

        pose = pose_matrices(x.pose.float())
        gt_pose = pose_matrices(x.gt_pose.float())
        betas = x.betas.float()
        gt_betas = x.gt_betas.float()
        if gt_betas.ndim == 2:
            gt_betas = gt_betas[:, None].expand(b, t, -1)
        verts, joints = pose_body(body, pose, betas)
        gt_verts, gt_joints = pose_body(body, gt_pose, gt_betas)
        verts, joints, gt_verts, gt_joints = (v.float() for v in (verts, joints, gt_verts, gt_joints))
        pelvis, gt_pelvis = joints[..., :1, :], gt_joints[..., :1, :]
        l_verts = ((verts - pelvis) - (gt_verts - gt_pelvis)).abs().mean(dim=(-2, -1))
        l_joints = ((joints - pelvis) - (gt_joints - gt_pelvis)).abs().mean(dim=(-2, -1))
        l_pose = (pose - gt_pose).square().mean(dim=(-3, -2, -1))
        l_shape = (betas - gt_betas).square().mean(-1)

        frame_ok = clip_ok[:, None].expand(b, t)
        transl = s_opt[:, None, None] * trans_norm  # (B, T, 3) metric
        l_transl = (transl - x.gt_trans.float()).square().mean(-1)
        weight_2d = None if x.gt_joints_2d_weight is None else x.gt_joints_2d_weight.float()
        l_j2d = keypoint_l1(joints + transl[..., None, :], x.intrinsics.float(), x.gt_joints_2d.float(), weight_2d,
                            (height, width), cfg.min_depth)
        zero = torch.zeros_like(l_transl)
        l_transl = torch.where(frame_ok, l_transl, zero)
        l_j2d = torch.where(frame_ok, l_j2d, zero)

        smpl = (cfg.w_vertices * l_verts + cfg.w_joints_3d * l_joints + cfg.w_joints_2d * l_j2d
                + cfg.w_pose * l_pose + cfg.w_shape * l_shape + cfg.w_transl * l_transl)  # (B, T)
        scale = x.scale.float().reshape(b)
        l_scale = torch.where(clip_ok, (scale - s_opt).abs(), torch.zeros_like(scale))
        total = cfg.lambda_smpl * smpl.mean() + cfg.lambda_scale * l_scale.mean()
        terms = {"smpl": smpl.mean(), "vertices": l_verts.mean(), "joints_3d": l_joints.mean(),
                 "joints_2d": l_j2d.mean(), "pose": l_pose.mean(), "shape": l_shape.mean(),
                 "transl": l_transl.mean(), "scale": l_scale.mean(), "s_opt": s_opt.mean().detach(),
                 "valid_clips": clip_ok.float().sum().detach(), "total": total}
    return total, terms
