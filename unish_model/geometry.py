"""Pure torch geometry: rotations, homogeneous transforms, intrinsics recovery from a camera-frame point map.

Conventions: OpenCV camera axes (x right, y down, z forward); poses are 4x4 camera-to-world unless named
otherwise; points are (..., 3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "svd_rotation", "pose_from_rotation_translation", "homogenize", "transform_points", "se3_inverse",
    "relative_to_first", "normalized_view_plane_uv", "solve_focal_shift", "recover_focal_shift",
    "focal_to_intrinsics",
]


# ---------------------------------------------------------------- rotations and rigid transforms

def svd_rotation(m: Tensor) -> Tensor:
    """Project 9 numbers per item onto SO(3): (..., 9) or (..., 3, 3) -> (..., 3, 3).

    pi3's camera head: rows are L2-normalised first, then the nearest rotation U diag(1, 1, det) V^T
    (det-corrected so a reflection never comes out).
    """
    m = m.reshape(*m.shape[:-1], 3, 3) if m.shape[-1] == 9 else m
    m = F.normalize(m, p=2, dim=-1)
    u, _, vh = torch.linalg.svd(m)
    det = torch.det(u @ vh)
    flip = torch.ones_like(u[..., 0, :])  # (..., 3)
    flip = torch.cat((flip[..., :2], det[..., None]), dim=-1)
    return (u * flip[..., None, :]) @ vh


def pose_from_rotation_translation(rotation: Tensor, translation: Tensor) -> Tensor:
    """(..., 3, 3) and (..., 3) -> (..., 4, 4) homogeneous transform."""
    bottom = torch.zeros(*rotation.shape[:-2], 1, 4, dtype=rotation.dtype, device=rotation.device)
    bottom[..., 0, 3] = 1.0
    top = torch.cat((rotation, translation[..., None]), dim=-1)
    return torch.cat((top, bottom), dim=-2)


def homogenize(points: Tensor) -> Tensor:
    return torch.cat((points, torch.ones_like(points[..., :1])), dim=-1)


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """Apply (..., 4, 4) transforms to points (..., P1, ..., Pk, 3) that share the transform's leading dims.

    Written as R @ p + t on the last axis; the leading dims of `transform` must prefix those of `points`.
    """
    extra = points.ndim - transform.ndim + 1  # number of point axes between the batch dims and xyz
    rotation = transform[..., :3, :3]
    translation = transform[..., :3, 3]
    for _ in range(extra):
        rotation = rotation.unsqueeze(-3)
        translation = translation.unsqueeze(-2)
    return (rotation @ points[..., None])[..., 0] + translation


def se3_inverse(transform: Tensor) -> Tensor:
    """Inverse of rigid (..., 4, 4) transforms: [R^T, -R^T t]."""
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    translation = -(rotation_t @ transform[..., :3, 3:4])[..., 0]
    return pose_from_rotation_translation(rotation_t, translation)


def relative_to_first(c2w: Tensor) -> Tensor:
    """(B, N, 4, 4) camera-to-world -> the same cameras expressed in frame 0's camera (frame 0 = identity)."""
    return se3_inverse(c2w[:, :1]) @ c2w


# ---------------------------------------------------------------- focal / shift recovery (MoGe-style)

def normalized_view_plane_uv(height: int, width: int, dtype: torch.dtype = torch.float32,
                             device: torch.device | str | None = None) -> Tensor:
    """(H, W, 2) pixel-centre coordinates scaled by the half diagonal: u = (x + 0.5 - W/2) / (diag/2).

    A pinhole with principal point at the centre then projects as uv = focal * xy / z, with `focal`
    relative to the half diagonal (MoGe's convention).
    """
    diagonal = math.hypot(width, height)
    span_x, span_y = width / diagonal, height / diagonal
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype,
                       device=device)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack((uu, vv), dim=-1)


def _focal_for_shift(uv: Tensor, xy: Tensor, z: Tensor, w: Tensor, shift: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form focal for a given shift, plus the projected xy and the denominator (z + shift)."""
    denom = z + shift[:, None]
    proj = xy / denom[..., None]
    focal = (w[..., None] * proj * uv).sum((1, 2)) / (w[..., None] * proj.square()).sum((1, 2)).clamp_min(1e-12)
    return focal, proj, denom


def solve_focal_shift(uv: Tensor, xyz: Tensor, weight: Tensor | None = None, iterations: int = 50,
                      fixed_focal: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Least squares min_{f, s} sum w |f * xy / (z + s) - uv|^2 per batch item.

    uv (B, P, 2), xyz (B, P, 3), weight (B, P) (0 = ignore). The focal has a closed form for each shift
    (variable projection); the shift is found by damped Gauss-Newton (Levenberg-Marquardt) from s = 0,
    like MoGe's scipy `least_squares(method='lm', x0=0)`. Runs in float64. Returns (focal, shift), (B,).
    With `fixed_focal` (B,) only the shift is solved.
    """
    dtype = torch.float64
    uv, xyz = uv.to(dtype), xyz.to(dtype)
    w = torch.ones(xyz.shape[:2], dtype=dtype, device=xyz.device) if weight is None else weight.to(dtype)
    xy, z = xyz[..., :2], xyz[..., 2]
    batch = xyz.shape[0]
    shift = torch.zeros(batch, dtype=dtype, device=xyz.device)
    damping = torch.full_like(shift, 1e-3)
    focal_fixed = None if fixed_focal is None else fixed_focal.to(dtype).reshape(batch)

    def cost_and_parts(s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if focal_fixed is None:
            f, proj, denom = _focal_for_shift(uv, xy, z, w, s)
        else:
            f = focal_fixed
            denom = z + s[:, None]
            proj = xy / denom[..., None]
        residual = f[:, None, None] * proj - uv
        cost = (w[..., None] * residual.square()).sum((1, 2))
        return cost, f, proj, denom

    cost, focal, proj, denom = cost_and_parts(shift)
    for _ in range(iterations):
        # d proj / d s = -proj / denom; with variable projection, d f / d s follows from the closed form.
        dproj = -proj / denom[..., None]
        if focal_fixed is None:
            a = (w[..., None] * proj * uv).sum((1, 2))
            b = (w[..., None] * proj.square()).sum((1, 2)).clamp_min(1e-12)
            da = (w[..., None] * dproj * uv).sum((1, 2))
            db = 2.0 * (w[..., None] * proj * dproj).sum((1, 2))
            dfocal = (da * b - a * db) / b.square()
        else:
            dfocal = torch.zeros_like(shift)
        residual = focal[:, None, None] * proj - uv
        jac = dfocal[:, None, None] * proj + focal[:, None, None] * dproj
        grad = (w[..., None] * jac * residual).sum((1, 2))
        hess = (w[..., None] * jac.square()).sum((1, 2))
        step = -grad / (hess * (1.0 + damping)).clamp_min(1e-30)
        candidate = shift + step
        new_cost, new_focal, new_proj, new_denom = cost_and_parts(candidate)
        better = torch.isfinite(new_cost) & (new_cost <= cost)
        shift = torch.where(better, candidate, shift)
        cost = torch.where(better, new_cost, cost)
        focal = torch.where(better, new_focal, focal)
        proj = torch.where(better[:, None, None], new_proj, proj)
        denom = torch.where(better[:, None], new_denom, denom)
        damping = torch.where(better, damping * 0.3, damping * 10.0).clamp(1e-9, 1e9)
    return focal, shift


def recover_focal_shift(points: Tensor, mask: Tensor | None = None, downsample: tuple[int, int] | None = (64, 64),
                        fixed_focal: Tensor | None = None, iterations: int = 50) -> tuple[Tensor, Tensor]:
    """Focal (relative to the half diagonal) and z-shift of camera-frame point maps (..., H, W, 3).

    Assumes principal point at the image centre, no distortion, square pixels. Like MoGe, the map (and
    mask) are nearest-downsampled first; frames with fewer than 2 valid pixels get focal 1, shift 0.
    Returns (focal, shift), each of shape (...).
    """
    lead = points.shape[:-3]
    height, width = points.shape[-3:-1]
    flat = points.reshape(-1, height, width, 3).to(torch.float32)
    uv = normalized_view_plane_uv(height, width, device=points.device)
    valid = None if mask is None else mask.reshape(-1, height, width).to(torch.float32)
    if downsample is not None:
        flat = F.interpolate(flat.permute(0, 3, 1, 2), downsample, mode="nearest").permute(0, 2, 3, 1)
        uv = F.interpolate(uv.permute(2, 0, 1)[None], downsample, mode="nearest")[0].permute(1, 2, 0)
        if valid is not None:
            valid = F.interpolate(valid[:, None], downsample, mode="nearest")[:, 0]
    batch = flat.shape[0]
    xyz = flat.reshape(batch, -1, 3)
    uv_b = uv.reshape(1, -1, 2).expand(batch, -1, -1)
    weight = torch.ones(xyz.shape[:2], device=points.device) if valid is None else (valid > 0).reshape(batch, -1).float()
    fixed = None if fixed_focal is None else fixed_focal.reshape(-1)
    focal, shift = solve_focal_shift(uv_b, xyz, weight, iterations=iterations, fixed_focal=fixed)
    too_few = weight.sum(1) < 2
    focal = torch.where(too_few, torch.ones_like(focal), focal)
    shift = torch.where(too_few, torch.zeros_like(shift), shift)
    if fixed is not None:
        focal = fixed.to(focal.dtype)
    return focal.to(points.dtype).reshape(lead), shift.to(points.dtype).reshape(lead)


def focal_to_intrinsics(focal: Tensor, height: int, width: int, normalized: bool = False) -> Tensor:
    """(..., ) focal relative to the half diagonal -> (..., 3, 3) intrinsics with the principal point at the centre.

    Pixels by default (fx = focal * diag / 2, cx = W / 2); `normalized=True` gives the image-size-normalised
    K (cx = cy = 0.5), as the official UniSH pipeline also returns.
    """
    half_diagonal = math.hypot(width, height) / 2.0
    f_px = focal * half_diagonal
    if normalized:
        fx, fy, cx, cy = f_px / width, f_px / height, 0.5, 0.5
    else:
        fx, fy, cx, cy = f_px, f_px, width / 2.0, height / 2.0
    k = torch.zeros(*focal.shape, 3, 3, dtype=focal.dtype, device=focal.device)
    k[..., 0, 0] = fx
    k[..., 1, 1] = fy
    k[..., 0, 2] = cx
    k[..., 1, 2] = cy
    k[..., 2, 2] = 1.0
    return k


# ------------------------------------------------------------------------------ rotation conversions


def _matrix_to_quaternion(rotation: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternion (w, x, y, z) with w >= 0 (Shepperd: divide by the largest term)."""
    m = rotation
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    four_sq = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1)
    root = four_sq.clamp_min(0).sqrt()  # 2|w|, 2|x|, 2|y|, 2|z|
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s10, s02, s21 = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    candidates = torch.stack((
        torch.stack((four_sq[..., 0], d21, d02, d10), -1),
        torch.stack((d21, four_sq[..., 1], s10, s02), -1),
        torch.stack((d02, s10, four_sq[..., 2], s21), -1),
        torch.stack((d10, s02, s21, four_sq[..., 3]), -1),
    ), dim=-2) / (2 * root.clamp_min(0.1))[..., None]
    best = root.argmax(dim=-1)
    quat = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    quat = F.normalize(quat, dim=-1)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def matrix_to_axis_angle(rotation: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis * angle, angle in [0, pi]."""
    quat = _matrix_to_quaternion(rotation)
    vec = quat[..., 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, quat[..., :1])
    # angle / sin(angle / 2), with its small-angle limit 2 / cos(angle / 2)
    small = sin_half < 1e-6
    factor = torch.where(small, 2 / quat[..., :1].clamp_min(1e-12), angle / sin_half.clamp_min(1e-12))
    return vec * factor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) (Rodrigues, with Taylor terms near zero)."""
    theta2 = (axis_angle * axis_angle).sum(-1)[..., None, None]
    theta = theta2.clamp_min(1e-24).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), -1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a * k + b * (k @ k)
