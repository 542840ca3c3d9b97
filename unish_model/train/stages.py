"""The three training stages: what each trains, and its forward from a batch to its loss.

What trains, in one place (`TRAINABLE`; everything else is frozen, runs without gradients and keeps no
activations):

  stage 1  human surface refinement  the scene branch's point decoder and point head
  stage 2  coarse alignment          the human branch (ViT backbone + SMPL head) and AlignNet
  stage 3  fine alignment            AlignNet

Each stage's forward (`StageStep`, an nn.Module so DDP can wrap it) turns a `ClipBatch` into the inputs of
that stage's objective (unish_model/losses) and returns (total, named terms):

  1: the scene branch under no_grad; the live point path on its features (`scene.decode_points`); P_orig from a
     frozen copy of the original point path; the confidence C from the frozen confidence head; MoGe-2 depth,
     validity and intrinsics and the SAM2 mask from the batch.
  2: the scene branch under no_grad; the focal from its point map (the torch solver, as inference) gives the
     intrinsics and the CLIFF condition of the person crops (from the batch's boxes, else the mask's box);
     the human branch and AlignNet with gradients; ground-truth points from the gt_depth and gt intrinsics,
     ground-truth 2D joints projected with the gt intrinsics.
  3: scene and human branches under no_grad, AlignNet with gradients; the metric scene s*P and translation
     s*t with the focal solve's z-shift (inference's convention: points, translation and K in one frame);
     CameraHMR keypoints and the SAM2 mask from the batch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unish_model.body import BodyModel
from unish_model.losses import (FrozenPointHead, Stage1Config, Stage1Inputs, Stage2Config, Stage2Inputs,
                                Stage3Config, Stage3Inputs, stage1_loss, stage2_loss, stage3_loss)
from unish_model.pipeline import UniSH, person_inputs
from unish_model.postprocess import (bbox_condition_from_pixels, confidence_mask, depth_to_point_map,
                                     intrinsics_from_focal, keep_in_front, metric_scale, torch_focal_shift)
from unish_model.scene import SceneOutput, decode_points
from unish_model.train.batch import ClipBatch

TRAINABLE: dict[int, tuple[str, ...]] = {
    1: ("scene.point_decoder.", "scene.point_head."),
    2: ("human.", "align."),
    3: ("align.",),
}
STAGE_NAMES = {1: "human surface refinement", 2: "coarse alignment", 3: "fine alignment"}
LossConfig = Stage1Config | Stage2Config | Stage3Config


def default_loss_config(stage: int) -> LossConfig:
    return {1: Stage1Config, 2: Stage2Config, 3: Stage3Config}[stage]()


def trainable_names(model: nn.Module, stage: int) -> list[str]:
    return [name for name, _ in model.named_parameters() if name.startswith(TRAINABLE[stage])]


def freeze_for_stage(model: nn.Module, stage: int) -> list[str]:
    """Set requires_grad per `TRAINABLE`; returns the trainable parameter names (never empty)."""
    names = set(trainable_names(model, stage))
    if not names:
        raise ValueError(f"stage {stage}: the model has no parameters under {TRAINABLE[stage]}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return sorted(names)


def trainable_modules(model: nn.Module, stage: int) -> list[nn.Module]:
    """The top-level submodules that train (they run in train mode; the rest in eval mode)."""
    prefixes = {p.rstrip(".") for p in TRAINABLE[stage]}
    return [model.get_submodule(p) for p in sorted(prefixes)]


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (the forward is
    patched per instance, so parameter names and checkpoints are unchanged)."""
    for block in blocks:
        if getattr(block, "_unish_checkpointed", False):
            continue
        forward = block.forward
        block.forward = functools.partial(checkpoint, forward, use_reentrant=False)  # type: ignore[method-assign]
        block._unish_checkpointed = True


# ------------------------------------------------------------------------------------------------ inputs


def mask_boxes(masks: Tensor) -> tuple[Tensor, Tensor]:
    """(B,T,4) xyxy pixel boxes of the masks' true pixels and (B,T) whether a frame has any."""
    present = masks.flatten(-2).any(-1)
    rows, cols = masks.any(-1), masks.any(-2)
    height, width = masks.shape[-2:]
    y = torch.arange(height, device=masks.device)
    x = torch.arange(width, device=masks.device)
    big = max(height, width) + 1
    x0 = torch.where(cols, x, big).amin(-1)
    x1 = torch.where(cols, x, -1).amax(-1) + 1
    y0 = torch.where(rows, y, big).amin(-1)
    y1 = torch.where(rows, y, -1).amax(-1) + 1
    return torch.stack((x0, y0, x1, y1), -1).float(), present


def person_boxes(batch: ClipBatch) -> Tensor:
    """(B,T,4) the person box of every frame: the tracked box where the people family has one, else the
    mask's box, else the whole frame (the human branch needs a crop in every frame)."""
    frames = batch["frames"]
    b, t, _, height, width = frames.shape
    boxes = torch.tensor([0.0, 0.0, width, height], device=frames.device).expand(b, t, 4).clone()
    present = torch.zeros(b, t, dtype=torch.bool, device=frames.device)
    if "boxes" in batch:
        tracked = batch["boxes"].float()
        ok = batch["box_present"].bool() & torch.isfinite(tracked).all(-1)
        boxes = torch.where(ok[..., None], torch.nan_to_num(tracked), boxes)
        present |= ok
    if "masks" in batch:
        from_mask, has = mask_boxes(batch["masks"])
        use = has & ~present
        boxes = torch.where(use[..., None], from_mask, boxes)
    return boxes


def points_from_depth(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """(B,T,H,W,3) camera-frame points of a depth map (metres) with pixel intrinsics (B,T,3,3)."""
    height, width = depth.shape[-2:]
    scale = torch.tensor([width, height, 1.0], device=depth.device, dtype=intrinsics.dtype)[:, None]
    return depth_to_point_map(depth, intrinsics / scale)


def project(points: Tensor, intrinsics: Tensor, min_depth: float = 1e-3) -> Tensor:
    """(...,J,3) camera-frame points -> (...,J,2) pixels."""
    uvw = torch.einsum("...ij,...nj->...ni", intrinsics, points)
    return uvw[..., :2] / uvw[..., 2:].clamp_min(min_depth)


@dataclass
class SceneGeometry:
    """The frozen scene branch's output and what inference derives from it (no gradients)."""

    scene: SceneOutput
    masks: Tensor  # (B,T,H,W) confidence mask, points in front of the camera
    intrinsics: Tensor  # (B,T,3,3) pixels, from the focal solve on the normalised points
    shift: Tensor  # (B,T) the solve's z-shift


# ------------------------------------------------------------------------------------------------ the step


class StageStep(nn.Module):
    """One stage's forward, from a batch to (total, terms). Build it once per run, before any update: stage 1
    copies the original point path here (from `original`, or the model as it is)."""

    def __init__(self, model: UniSH, stage: int, loss_config: LossConfig | None = None,
                 body: BodyModel | None = None, activation_checkpointing: bool = False, original: UniSH | None = None):
        super().__init__()
        if stage not in TRAINABLE:
            raise ValueError(f"stage must be 1, 2 or 3, not {stage}")
        if stage in (2, 3) and body is None:
            raise ValueError(f"stage {stage} needs the SMPL body model (its vertices and joints are in the loss)")
        self.model = model
        self.stage = stage
        self.loss_config = loss_config or default_loss_config(stage)
        self.body = body
        # stage 1's P_orig: the point path of `original` (the pre-trained model), by default the model as it starts
        self.original_points = FrozenPointHead((original or model).scene) if stage == 1 else None
        if activation_checkpointing and stage == 2:
            checkpoint_blocks(model.human.backbone.blocks)

    def train(self, mode: bool = True) -> "StageStep":
        """Only the stage's trainable parts switch to train mode (dropout, for instance); frozen parts stay in eval."""
        super().train(False)
        for module in trainable_modules(self.model, self.stage):
            module.train(mode)
        return self

    def forward(self, batch: ClipBatch, generator: torch.Generator | None = None, fps: float = 6.0
                ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.stage == 1:
            return self._stage1(batch, generator)
        if self.stage == 2:
            return self._stage2(batch, fps)
        return self._stage3(batch, fps)

    # -- shared pieces
    def _scene_geometry(self, frames: Tensor) -> SceneGeometry:
        model = self.model
        with torch.no_grad():
            scene = model.run_scene(frames)
            local = scene.local_points.float()
            masks = confidence_mask(torch.sigmoid(scene.conf.float()[..., 0]), model.config.conf_threshold)
            with torch.autocast(device_type=frames.device.type, enabled=False):
                focal, shift = torch_focal_shift(local, masks)
            masks = keep_in_front(masks, local[..., 2], shift)
            intrinsics, _ = intrinsics_from_focal(focal.float(), *frames.shape[-2:])
        return SceneGeometry(scene, masks, intrinsics, shift.float())

    def _human_inputs(self, batch: ClipBatch, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            patches, bbox_px = person_inputs(batch["frames"], person_boxes(batch))
            return patches, bbox_condition_from_pixels(bbox_px, intrinsics)

    # -- the stages
    def _stage1(self, batch: ClipBatch, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.original_points is not None
        scene_branch = self.model.scene
        with torch.no_grad():
            scene = scene_branch(batch["frames"])
            p_orig = self.original_points(scene)
        points = decode_points(scene_branch.point_decoder, scene_branch.point_head, scene, scene_branch.config)
        inputs = Stage1Inputs(
            points=points, points_orig=p_orig, confidence=torch.sigmoid(scene.conf.float()[..., 0]),
            depth=batch["depth"], depth_valid=batch["depth_valid"], intrinsics=batch["intrinsics"],
            person_mask=batch["masks"])
        return stage1_loss(inputs, self.loss_config, generator)  # type: ignore[arg-type]

    def _stage2(self, batch: ClipBatch, fps: float) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.body is not None
        geo = self._scene_geometry(batch["frames"])
        patches, bbox_info = self._human_inputs(batch, geo.intrinsics)
        human = self.model.run_human(patches, bbox_info)
        align = self.model.run_align(geo.scene, human, fps)
        out = self.model.assemble(geo.scene, human, align, masks=geo.masks)
        gt_pose = batch["gt_pose"].float()
        gt_betas, gt_trans, gt_k = batch["gt_betas"].float(), batch["gt_trans"].float(), batch["gt_intrinsics"].float()
        with torch.no_grad():
            gt_body = self.body(gt_pose[..., :3], gt_pose[..., 3:], gt_betas, gt_trans)
            gt_joints_2d = project(gt_body.joints, gt_k)
            gt_points = points_from_depth(batch["gt_depth"].float(), gt_k)
        inputs = Stage2Inputs(
            local_points=out.local_points, point_mask=geo.masks, scale=out.scale, trans_cam=out.trans_cam,
            pose=out.pose_cam, betas=out.betas_per_frame, intrinsics=geo.intrinsics, gt_points=gt_points,
            gt_point_mask=batch["gt_depth_valid"], gt_pose=gt_pose, gt_betas=gt_betas, gt_trans=gt_trans,
            gt_joints_2d=gt_joints_2d)
        return stage2_loss(inputs, self.body, self.loss_config)  # type: ignore[arg-type]

    def _stage3(self, batch: ClipBatch, fps: float) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.body is not None
        geo = self._scene_geometry(batch["frames"])
        patches, bbox_info = self._human_inputs(batch, geo.intrinsics)
        with torch.no_grad():
            human = self.model.run_human(patches, bbox_info)
        align = self.model.run_align(geo.scene, human, fps)
        local = geo.scene.local_points.float()
        s = metric_scale(align.scale.float(), local, geo.masks)  # (B,) metres per scene unit, through AlignNet
        lift = torch.zeros_like(local[..., :1, 0, 0, :]).expand(*local.shape[:2], 3).clone()
        lift[..., 2] = geo.shift
        scene_points = local * s.view(-1, 1, 1, 1, 1) + lift[:, :, None, None, :]
        transl = align.trans_cam.float() * s.view(-1, 1, 1) + lift
        inputs = Stage3Inputs(
            pose=human.rotmats.float(), betas=human.betas.float(), transl=transl, scene_points=scene_points,
            person_mask=batch["masks"], intrinsics=geo.intrinsics, keypoints_2d=batch["keypoints"],
            keypoints_conf=batch["keypoint_conf"])
        return stage3_loss(inputs, self.body, self.loss_config)  # type: ignore[arg-type]


__all__ = ["STAGE_NAMES", "TRAINABLE", "StageStep", "checkpoint_blocks", "default_loss_config", "freeze_for_stage",
           "mask_boxes", "person_boxes", "points_from_depth", "project", "trainable_modules", "trainable_names"]
