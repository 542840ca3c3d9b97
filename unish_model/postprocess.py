"""UniSH post-processing: pure functions from the network's outputs to metric, camera-calibrated results.

This is the official `UniSHPipeline.inference()` after the forward pass (murphylmf/UniSH @ 25a4653, read for
facts), written as small pure functions:

1. `confidence_mask`: point_conf > 0.1.
2. focal / z-shift of each frame's camera-frame point map (MoGe's recovery, principal point at the centre):
   a pluggable `FocalShiftSolver`. `"torch"` (default, torch only) solves the least-squares problem to its optimum;
   `"scipy"` runs scipy's `least_squares(method='lm', x0=0, ftol=1e-3)` per frame exactly as the official code,
   which stops early (ftol 1e-3), so only it reproduces the official numbers.
   Pixels whose shifted depth is not positive leave the mask (the official code does this in place, twice).
3. `metric_scale`: s = AlignNet scale / mean |local point| over the masked pixels of all frames; it multiplies
   the points, the camera translations and the SMPL translations (`to_metric`).
4. The focal/shift is solved again on the metric points; depth = z + shift, the SMPL camera translation's
   z gets + shift (so it matches the shifted depth / point maps), intrinsics in pixels, rotations as axis-angle.

Conventions: OpenCV camera axes; poses are 4x4 camera-to-world unless named w2c; `focal` is relative to the
half image diagonal (MoGe), intrinsics are in pixels with the principal point at the image centre.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import (axis_angle_to_matrix, focal_to_intrinsics, matrix_to_axis_angle, normalized_view_plane_uv,
                       recover_focal_shift, se3_inverse, transform_points)

__all__ = [
    "UniSHOutput", "UniSHInference", "FocalShiftSolver", "SolverName", "get_solver", "torch_focal_shift",
    "scipy_focal_shift", "confidence_mask", "keep_in_front", "normalization_factor", "metric_scale",
    "intrinsics_from_focal", "bbox_condition_from_pixels", "depth_to_point_map",
    "root_to_world", "translation_to_world", "finalize",
]

# (points (..., H, W, 3), mask (..., H, W) bool) -> (focal, shift), each (...)
FocalShiftSolver = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
SolverName = Literal["torch", "scipy"]


# ------------------------------------------------------------------------------------------------ outputs


@dataclass
class UniSHOutput:
    """Everything the official `UniSHPipeline.forward` returns (normalised scale), plus a few intermediates.

    B = batch, N = frames, J = 24 SMPL joints. "cano" = expressed in frame 0's camera (frame 0 = identity).
    """
    world_points: Tensor  # (B, N, H, W, 3) points in frame 0's camera: c2ws_cano @ local_points
    local_points: Tensor  # (B, N, H, W, 3) camera-frame points
    point_conf: Tensor  # (B, N, H, W) sigmoid of the confidence logits
    masks: Tensor  # (B, N, H, W) bool: point_conf > threshold (infer: also in front of the camera)
    c2ws: Tensor  # (B, N, 4, 4) raw scene-branch camera-to-world
    c2ws_cano: Tensor  # (B, N, 4, 4) inv(c2ws[:, 0]) @ c2ws
    w2cs_cano: Tensor  # (B, N, 4, 4) inverse of c2ws_cano
    pose_cam: Tensor  # (B, N, J, 3, 3) SMPL joint rotations, root in the camera frame
    pose_world: Tensor  # (B, N, J, 3, 3) root rotated into frame 0's camera: R_c2w_cano @ R_root
    betas: Tensor  # (B, 10) shape, mean over the frames
    trans_cam: Tensor  # (B, N, 3) SMPL translation, camera frame (normalised scene scale)
    trans_world: Tensor  # (B, N, 3) R_c2w_cano @ trans_cam + t_c2w_cano
    scale: Tensor  # (B, 1) AlignNet's metric scale of the normalised scene
    # intermediates (training, debugging)
    conf_logits: Tensor  # (B, N, H, W) confidence before the sigmoid
    scene_hidden: Tensor  # (B*N, R+hw, 2C) scene decoder tokens (AlignNet's keys/values)
    human_token: Tensor  # (B, N, D) human head output token (AlignNet's per-frame queries)
    betas_per_frame: Tensor  # (B, N, 10) shape before averaging


@dataclass
class UniSHInference:
    """Metric results of `UniSH.infer` (the official `inference()` dict, plus rotation matrices and focals)."""
    world_points: Tensor  # (B, N, H, W, 3) metric, frame 0's camera
    local_points: Tensor  # (B, N, H, W, 3) metric, each frame's camera, before the z-shift
    point_conf: Tensor  # (B, N, H, W)
    masks: Tensor  # (B, N, H, W) conf > threshold and positive shifted depth (both focal/shift solves)
    c2ws: Tensor  # (B, N, 4, 4) raw camera-to-world, metric translation
    c2ws_cano: Tensor  # (B, N, 4, 4) metric, frame 0 = identity
    w2cs_cano: Tensor  # (B, N, 4, 4) inverse of c2ws_cano
    intrinsics: Tensor  # (B, N, 3, 3) pixels, principal point at the image centre
    intrinsics_normalized: Tensor  # (B, N, 3, 3) divided by the image width / height (cx = cy = 0.5)
    focal: Tensor  # (B, N) relative to the half image diagonal (second solve, metric points)
    shift: Tensor  # (B, N) metric z-shift added to the depth
    depth_map: Tensor  # (B, N, H, W) local z + shift
    point_map: Tensor  # (B, N, H, W, 3) depth_map unprojected with the intrinsics
    pose_cam: Tensor  # (B, N, 72) axis-angle, root in the camera frame
    pose_world: Tensor  # (B, N, 72) axis-angle, root in frame 0's camera
    pose_cam_rotmats: Tensor  # (B, N, 24, 3, 3)
    pose_world_rotmats: Tensor  # (B, N, 24, 3, 3)
    betas: Tensor  # (B, N, 10) the clip's mean shape, repeated per frame
    trans_cam: Tensor  # (B, N, 3) metric; z includes + shift (consistent with depth_map / point_map)
    trans_world: Tensor  # (B, N, 3) metric, frame 0's camera (from the unshifted trans_cam, like world_points)
    scale: Tensor  # (B, 1) metric factor s = AlignNet scale / mean masked point distance (official `scale`)
    raw_scale: Tensor  # (B, 1) AlignNet's scale before the division
    first_focal: Tensor  # (B, N) focal of the first solve (normalised points): it sets the bbox condition
    first_shift: Tensor  # (B, N) shift of the first solve (normalised scale)

    def to(self, device: torch.device | str) -> "UniSHInference":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


# ------------------------------------------------------------------------------------------------ focal / shift


def torch_focal_shift(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Torch-only solver: the exact least-squares optimum (damped Gauss-Newton, see geometry.recover_focal_shift)."""
    return recover_focal_shift(points, mask)


def scipy_focal_shift(points: Tensor, mask: Tensor | None, downsample: tuple[int, int] = (64, 64),
                      ftol: float = 1e-3) -> tuple[Tensor, Tensor]:
    """The official solver: per frame, scipy `least_squares(method='lm', x0=0, ftol=1e-3)` on the
    nearest-downsampled (64x64) masked map; the residuals run in float64, the final focal in float32 from the
    float32 shift (as MoGe's code). Frames with < 2 valid pixels get focal 1, shift 0."""
    try:
        from scipy.optimize import least_squares
    except ImportError as exc:  # the torch solver needs nothing; this one reproduces the official numbers
        raise ImportError("solver='scipy' needs scipy (pip install scipy); solver='torch' works without it") from exc

    lead = points.shape[:-3]
    height, width = points.shape[-3:-1]
    flat = points.detach().reshape(-1, height, width, 3).to(torch.float32)
    uv = normalized_view_plane_uv(height, width, dtype=torch.float32, device=flat.device)
    flat_lr = F.interpolate(flat.permute(0, 3, 1, 2), downsample, mode="nearest").permute(0, 2, 3, 1)
    uv_lr = F.interpolate(uv.permute(2, 0, 1)[None], downsample, mode="nearest")[0].permute(1, 2, 0)
    if mask is None:
        valid = torch.ones(flat.shape[0], *downsample, dtype=torch.bool, device=flat.device)
    else:
        m = mask.reshape(-1, 1, height, width).to(torch.float32)
        valid = F.interpolate(m, downsample, mode="nearest")[:, 0] > 0
    points_np, uv_np, valid_np = flat_lr.cpu().numpy(), uv_lr.cpu().numpy(), valid.cpu().numpy()

    focals, shifts = [], []
    for frame in range(points_np.shape[0]):
        sel = valid_np[frame]
        xyz, uv_sel = points_np[frame][sel], uv_np[sel]
        if uv_sel.shape[0] < 2:
            focals.append(1.0)
            shifts.append(0.0)
            continue
        xy, z = xyz[:, :2], xyz[:, 2]

        def residuals(shift: np.ndarray, xy: np.ndarray = xy, z: np.ndarray = z, uv: np.ndarray = uv_sel) -> np.ndarray:
            proj = xy / (z + shift)[:, None]  # float64: the float64 shift promotes
            focal = (proj * uv).sum() / np.square(proj).sum()
            return (focal * proj - uv).ravel()

        solution = least_squares(residuals, x0=0, ftol=ftol, method="lm")
        shift32 = solution.x.squeeze().astype(np.float32)
        proj32 = xy / (z + shift32)[:, None]  # float32 from here, like the official focal
        focals.append(float((proj32 * uv_sel).sum() / np.square(proj32).sum()))
        shifts.append(float(shift32))
    as_tensor = lambda values: torch.tensor(values, dtype=points.dtype, device=points.device).reshape(lead)
    return as_tensor(focals), as_tensor(shifts)


def get_solver(solver: SolverName | FocalShiftSolver) -> FocalShiftSolver:
    """'torch' (default, no extra dependency), 'scipy' (official numbers; needs scipy) or your own callable."""
    if callable(solver):
        return solver
    if solver == "torch":
        return torch_focal_shift
    if solver == "scipy":
        try:
            import scipy.optimize  # noqa: F401  (fail now, not in the middle of a window)
        except ImportError as exc:
            raise ImportError("solver='scipy' needs scipy; use solver='torch'") from exc
        return scipy_focal_shift
    raise ValueError(f"unknown focal/shift solver {solver!r}: use 'torch', 'scipy' or a callable")


# ------------------------------------------------------------------------------------------------ scale, masks


def confidence_mask(point_conf: Tensor, threshold: float = 0.1) -> Tensor:
    return point_conf > threshold


def keep_in_front(mask: Tensor, depth: Tensor, shift: Tensor) -> Tensor:
    """mask & (depth + shift > 0); mask/depth (..., H, W), shift (...)."""
    return mask & (depth + shift[..., None, None] > 0)


def normalization_factor(local_points: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(B,) mean distance |p| of the masked camera-frame points over all frames of each batch item."""
    dist = local_points.norm(dim=-1) * mask
    return dist.sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)).to(dist.dtype) + eps)


def metric_scale(scale: Tensor, local_points: Tensor, mask: Tensor) -> Tensor:
    """(B,) metres per scene unit: AlignNet's scale (B, 1) / the mean masked point distance."""
    return scale.reshape(-1) / normalization_factor(local_points, mask)


# ------------------------------------------------------------------------------------------------ cameras


def intrinsics_from_focal(focal: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """(...,) focal relative to the half diagonal -> (K in pixels, K normalised by W/H), each (..., 3, 3)."""
    return (focal_to_intrinsics(focal, height, width),
            focal_to_intrinsics(focal, height, width, normalized=True))


def bbox_condition_from_pixels(bbox_px: Tensor, intrinsics: Tensor) -> Tensor:
    """CLIFF condition: [cx - W/2, cy - H/2, box size] in pixels (..., 3) / mean(fx, fy) (...)."""
    focal_px = (intrinsics[..., 0, 0] + intrinsics[..., 1, 1]) / 2
    return bbox_px / focal_px[..., None].to(bbox_px.dtype)


def depth_to_point_map(depth: Tensor, intrinsics_normalized: Tensor) -> Tensor:
    """Unproject (..., H, W) depth through pixel centres ((i + 0.5) / W, (j + 0.5) / H) -> (..., H, W, 3)."""
    height, width = depth.shape[-2:]
    u = (torch.arange(width, dtype=depth.dtype, device=depth.device) + 0.5) / width
    v = (torch.arange(height, dtype=depth.dtype, device=depth.device) + 0.5) / height
    k = intrinsics_normalized[..., None, None, :, :].to(depth.dtype)
    x = (u[None, :] - k[..., 0, 2]) / k[..., 0, 0] * depth
    y = (v[:, None] - k[..., 1, 2]) / k[..., 1, 1] * depth
    return torch.stack((x, y, depth), dim=-1)


# ------------------------------------------------------------------------------------------------ rotations


def root_to_world(pose_cam: Tensor, c2w: Tensor) -> Tensor:
    """(B, N, J, 3, 3) camera-frame joint rotations -> the root rotated by c2w's rotation, other joints unchanged."""
    root = c2w[..., :3, :3] @ pose_cam[..., 0, :, :]
    return torch.cat((root[..., None, :, :], pose_cam[..., 1:, :, :]), dim=-3)


def translation_to_world(trans_cam: Tensor, c2w: Tensor) -> Tensor:
    """(B, N, 3) camera-frame translation -> R trans + t."""
    return transform_points(c2w, trans_cam[..., None, :])[..., 0, :]


# ------------------------------------------------------------------------------------------------ inference


def finalize(out: UniSHOutput, solver: SolverName | FocalShiftSolver = "torch", *,
             first_focal: Tensor | None = None, first_shift: Tensor | None = None) -> UniSHInference:
    """Metric scaling, second focal/shift solve, depth / point maps and axis-angle, from a forward output.

    `out.masks` should already hold the first solve's in-front test (as `UniSH.infer` does); `first_focal`,
    `first_shift` (that solve's results) are only passed through (default: NaN).
    """
    solve = get_solver(solver)
    b, n, height, width = out.point_conf.shape
    s = metric_scale(out.scale, out.local_points, out.masks)  # (B,)
    s_points, s_pose = s.view(b, 1, 1, 1, 1), s.view(b, 1, 1)

    def scale_translation(pose: Tensor) -> Tensor:
        return _with_translation(pose, pose[..., :3, 3] * s_pose)

    local_points = out.local_points * s_points
    world_points = out.world_points * s_points
    c2ws = scale_translation(out.c2ws)
    c2ws_cano = scale_translation(out.c2ws_cano)
    trans_cam = out.trans_cam * s_pose
    trans_world = out.trans_world * s_pose

    with torch.autocast(device_type=local_points.device.type, enabled=False):
        focal, shift = solve(local_points.float(), out.masks)
    focal, shift = focal.to(local_points.dtype), shift.to(local_points.dtype)
    masks = keep_in_front(out.masks, local_points[..., 2], shift)
    intrinsics, intrinsics_norm = intrinsics_from_focal(focal, height, width)
    depth = local_points[..., 2] + shift[..., None, None]
    trans_cam = torch.cat((trans_cam[..., :2], trans_cam[..., 2:] + shift[..., None]), dim=-1)

    pose_cam_aa = matrix_to_axis_angle(out.pose_cam).reshape(b, n, -1)
    pose_world_aa = matrix_to_axis_angle(out.pose_world).reshape(b, n, -1)
    nan = torch.full_like(focal, math.nan)
    return UniSHInference(
        world_points=world_points, local_points=local_points, point_conf=out.point_conf, masks=masks,
        c2ws=c2ws, c2ws_cano=c2ws_cano, w2cs_cano=se3_inverse(c2ws_cano),
        intrinsics=intrinsics, intrinsics_normalized=intrinsics_norm, focal=focal, shift=shift,
        depth_map=depth, point_map=depth_to_point_map(depth, intrinsics_norm),
        pose_cam=pose_cam_aa, pose_world=pose_world_aa, pose_cam_rotmats=out.pose_cam,
        pose_world_rotmats=out.pose_world, betas=out.betas[:, None].expand(b, n, -1),
        trans_cam=trans_cam, trans_world=trans_world, scale=s[:, None], raw_scale=out.scale,
        first_focal=nan if first_focal is None else first_focal,
        first_shift=nan if first_shift is None else first_shift,
    )


def _with_translation(pose: Tensor, translation: Tensor) -> Tensor:
    """(..., 4, 4) pose with its translation column replaced by (..., 3)."""
    top = torch.cat((pose[..., :3, :3], translation[..., None]), dim=-1)
    return torch.cat((top, pose[..., 3:, :]), dim=-2)
