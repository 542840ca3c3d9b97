"""Stage 3, fine alignment (real clips; only AlignNet trains: the metric scale s and the SMPL translation).

    L_3 = mean over frames of  1 * L_align + 1 * L_dreg + 10 * L_j2d                    (paper, FACTS.md)

* L_align (Eq. 4): one-way Chamfer from the VISIBLE SMPL vertices to the person's point cloud,
  sum over visible v of min_p |v - p|^2 (a sum, not a mean), p in s * P restricted to the SAM2 mask.
  Visibility: the posed mesh is z-buffered with the predicted camera (`raster.visible_vertices`, pixel
  centres of the H x W frame); a vertex is visible when one of its triangles wins a pixel.  Visibility is a
  mask (no gradient); the distances carry the gradient to the vertices (hence the translation) and to the
  points (hence s).
* L_dreg = ReLU(mean z of the target points - mean z of the visible vertices): the scene's person surface must
  not lie behind the body's visible surface on average.  ("source" = the Chamfer's source, the visible
  vertices: at alignment both means describe the same surface, so the term is ~0 there.)
* L_j2d: the SMPL joints projected with the predicted intrinsics against CameraHMR's 2D keypoints, weighted by
  their confidence, in units of the image's longer side (`keypoint_l1`).
A frame with no visible vertex or no target point has L_align = L_dreg = 0.

All inputs are camera-frame, OpenCV axes, metres, in the frame the intrinsics project (e.g. the metric
points and translation the model gives, with the same z-shift applied to both).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..body import BodyModel
from ._common import full_precision, keypoint_l1, pose_body, pose_matrices
from .chamfer import one_way_chamfer
from .config import Stage3Config
from .raster import visible_vertices

__all__ = ["Stage3Inputs", "stage3_loss", "depth_order_loss"]


@dataclass
class Stage3Inputs:
    """B clips of T frames, H x W pixels; camera frame (OpenCV), metres; masks bool."""

    pose: Tensor  # (B, T, 24, 3, 3) joint rotations (root in the camera frame) or (B, T, 72) axis-angle
    betas: Tensor  # (B, T, 10) or (B, 10)
    transl: Tensor  # (B, T, 3) metric SMPL translation (s * t_n from AlignNet)
    scene_points: Tensor  # (B, T, H, W, 3) metric scene points s * P
    person_mask: Tensor  # (B, T, H, W) bool: the SAM2 mask (and any validity the trainer adds)
    intrinsics: Tensor  # (B, T, 3, 3) predicted pixel intrinsics
    keypoints_2d: Tensor  # (B, T, 24, 2) CameraHMR 2D keypoints, pixels
    keypoints_conf: Tensor | None = None  # (B, T, 24) their confidence in [0, 1]; None = ones


def depth_order_loss(source: Tensor, source_mask: Tensor, target: Tensor, target_mask: Tensor) -> Tensor:
    """ReLU(mean z of the masked targets - mean z of the masked sources) per item; source (..., S, 3),
    target (..., P, 3), masks (..., S) / (..., P) bool.  0 where either set is empty.  Returns (...)."""
    def mean_z(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = mask.to(points.dtype)
        count = m.sum(-1)
        return (points[..., 2] * m).sum(-1) / count.clamp_min(1), count > 0

    z_src, ok_src = mean_z(source, source_mask)
    z_tgt, ok_tgt = mean_z(target, target_mask)
    return torch.where(ok_src & ok_tgt, F.relu(z_tgt - z_src), torch.zeros_like(z_src))


def stage3_loss(inputs: Stage3Inputs, body: BodyModel, config: Stage3Config = Stage3Config()
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 3 total and its terms (see the module docstring).

    body: the SMPL `BodyModel` (its faces are the mesh rasterised).  Returns (total (), terms) with terms
    "align" (mean per-frame Chamfer sum), "dreg", "joints_2d", "visible" (mean visible vertices per frame,
    detached) and "total".  Float32, autocast off."""
    cfg = config
    x = inputs
    device = x.scene_points.device
    with full_precision(device):
        points = x.scene_points.float()
        b, t, height, width = points.shape[:4]
        pose = pose_matrices(x.pose.float())
        betas = x.betas.float()
        if betas.ndim == 2:
            betas = betas[:, None].expand(b, t, -1)
        verts, joints = pose_body(body, pose, betas, x.transl.float())
        verts, joints = verts.float(), joints.float()
        k = x.intrinsics.float()
        visible = visible_vertices(verts, body.faces, k, (height, width), near=cfg.near,
                                   chunk_elements=cfg.raster_chunk_elements)
        target = points.reshape(b, t, height * width, 3)
        target_mask = x.person_mask.reshape(b, t, height * width) & torch.isfinite(target).all(-1)
        target = torch.where(target_mask[..., None], target, torch.zeros_like(target))
        l_align = one_way_chamfer(verts, target, visible, target_mask, chunk_elements=cfg.chamfer_chunk_elements)
        l_dreg = depth_order_loss(verts, visible, target, target_mask)
        conf = None if x.keypoints_conf is None else x.keypoints_conf.float()
        l_j2d = keypoint_l1(joints, k, x.keypoints_2d.float(), conf, (height, width), cfg.min_depth)
        per_frame = cfg.lambda_align * l_align + cfg.lambda_dreg * l_dreg + cfg.lambda_j2d * l_j2d
        total = per_frame.mean()
        terms = {"align": l_align.mean(), "dreg": l_dreg.mean(), "joints_2d": l_j2d.mean(),
                 "visible": visible.float().sum(-1).mean().detach(), "total": total}
    return total, terms
