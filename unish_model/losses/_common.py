"""Helpers shared by the stage losses: float32 regions, 2D keypoint error, SMPL posing."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..body import BodyModel
from ..geometry import axis_angle_to_matrix
from .raster import project_points

__all__ = ["full_precision", "keypoint_l1", "pose_matrices", "pose_body"]


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on `device`: every loss computes in float32 whatever the inputs' dtype (bf16 model outputs
    are cast up on entry), so only the inputs' own rounding separates a bf16 run from a float32 one."""
    return torch.autocast(device_type=device.type, enabled=False)


def keypoint_l1(points_cam: Tensor, intrinsics: Tensor, target_px: Tensor, weight: Tensor | None,
                image_size: tuple[int, int], min_depth: float = 1e-3) -> Tensor:
    """Weighted L1 error of projected joints, per item: mean over joints and (u, v) of w_j |uv_j - uv*_j| / L.

    points_cam: (..., J, 3) camera frame (OpenCV), metres; intrinsics (..., 3, 3) pixels; target_px (..., J, 2)
    pixels; weight (..., J) >= 0 (a keypoint confidence; None = 1); L = max(H, W) pixels (the unit of the error,
    so it does not change with the image size).  Returns (...)."""
    uv = project_points(points_cam, intrinsics, min_depth=min_depth)
    err = (uv - target_px).abs() / float(max(image_size))
    if weight is not None:
        err = err * weight[..., None]
    return err.mean(dim=(-2, -1))


def pose_matrices(pose: Tensor, joints: int = 24) -> Tensor:
    """(..., J, 3, 3) rotation matrices, or (..., 3J) / (..., J, 3) axis-angle -> (..., J, 3, 3)."""
    if pose.ndim >= 3 and pose.shape[-2:] == (3, 3):
        return pose
    if pose.shape[-1] == 3 * joints:
        pose = pose.reshape(*pose.shape[:-1], joints, 3)
    return axis_angle_to_matrix(pose)


def pose_body(body: BodyModel, pose: Tensor, betas: Tensor, transl: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(vertices (..., V, 3), joints (..., 24, 3)) of SMPL with joint rotations (..., 24, 3, 3) (root first),
    betas (..., B) and an optional translation (..., 3), in the body model's dtype (float32 for ours)."""
    out = body(pose[..., 0, :, :], pose[..., 1:, :, :], betas=betas, transl=transl)
    return out.vertices, out.joints
