"""UniSH: scene branch (pi3) + human branch (CameraHMR ViT-H + SMPL head) + AlignNet, and its inference.

Public API (everything else is an implementation detail)::

    from unish_model.pipeline import UniSH, UniSHConfig, load_unish, person_inputs

    model = load_unish("unish_release.safetensors", device="cuda")   # official weights, paper sizes
    # or: model = UniSH(UniSHConfig.tiny())                            # random weights, any config

    # one window of N frames, RGB in [0, 1], H and W multiples of 14 (the paper: 294 x 518)
    patches, bbox_px = person_inputs(frames, boxes_xyxy)   # (N, 3, 256, 256) crops, (N, 3) pixel boxes
    out = model.infer(frames[None], patches[None], bbox_px[None], fps=6.0, solver="torch")
    out.world_points, out.c2ws_cano, out.intrinsics        # metric scene, cameras (frame 0 = identity)
    out.pose_world, out.betas, out.trans_world             # SMPL (axis-angle 72, 10, metres) per frame

* `UniSH.forward(images, human_patches, bbox_info, fps)` -> `UniSHOutput` is the official `forward()`:
  normalised scene scale, bbox_info already divided by the focal, rotation matrices (the training entry point).
* `UniSH.infer(...)` -> `UniSHInference` is the official `inference()`: bbox_info in PIXELS
  ([cx - W/2, cy - H/2, box size], see `person_inputs`), focal/shift recovery, metric scale, intrinsics,
  depth and point maps, axis-angle. The post-processing lives in `unish_model.postprocess` (pure functions).
  `solver="torch"` (default) needs torch only; `solver="scipy"` reproduces the official numbers exactly
  (scipy's LM with ftol 1e-3 stops before the optimum, so the two differ slightly); a callable also works.
* Inputs are batched: images (B, N, 3, H, W), human_patches (B, N, 3, 256, 256) (or already the backbone's
  256 x 192), bbox (B, N, 3). Outputs keep the batch dimension.
* Precision: on CUDA the scene trunk and the human ViT run under `config.autocast_dtype` (bf16, as the official
  release) while every head, the SMPL head, AlignNet and the post-processing run in float32; CPU runs float32.
  Keep the weights in float32 (autocast does the casting).

One deliberate difference from the official code: `pose_world`'s root is R_c2w_cano @ R_root. The official
`forward()` passes the rotation matrices to `transform_smpl` in a layout that takes its axis-angle branch and
rotates the first ROW of the root matrix as if it were an axis-angle vector (see the unish_pipeline golden).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .alignnet import AlignNet, AlignNetConfig, AlignOutput
from .geometry import relative_to_first, se3_inverse, transform_points
from .human import HumanBranch, HumanBranchConfig, HumanOutput, backbone_columns, bbox_condition, crop_patches, \
    square_boxes
from .postprocess import (FocalShiftSolver, SolverName, UniSHInference, UniSHOutput, bbox_condition_from_pixels,
                          confidence_mask, finalize, get_solver, intrinsics_from_focal, keep_in_front, root_to_world,
                          translation_to_world)
from .scene import SceneBranch, SceneBranchConfig, SceneOutput

__all__ = ["UniSHConfig", "UniSH", "UniSHOutput", "UniSHInference", "load_unish", "person_inputs"]

_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class UniSHConfig:
    """The three sub-configs plus the pipeline's own settings.

    `autocast_dtype` (CUDA only) overrides the scene config's own and also applies to the human ViT.
    """
    scene: SceneBranchConfig = field(default_factory=lambda: SceneBranchConfig.paper(round_encoder_input_bf16=True))
    human: HumanBranchConfig = field(default_factory=HumanBranchConfig.paper)
    align: AlignNetConfig = field(default_factory=AlignNetConfig.paper)
    conf_threshold: float = 0.1
    autocast_dtype: str | None = "bfloat16"

    def __post_init__(self) -> None:
        if self.align.scene_dim != self.scene.hidden_dim:
            raise ValueError(f"AlignNet scene_dim {self.align.scene_dim} != scene hidden {self.scene.hidden_dim}")
        if self.align.human_dim != self.human.head_width:
            raise ValueError(f"AlignNet human_dim {self.align.human_dim} != human token {self.human.head_width}")
        if self.align.num_register_tokens != self.scene.decoder_registers:
            raise ValueError("AlignNet's register-token count must equal the scene decoder's")
        if self.autocast_dtype not in (None, *_AUTOCAST_DTYPES):
            raise ValueError(f"autocast_dtype must be None or one of {sorted(_AUTOCAST_DTYPES)}")

    @classmethod
    def paper(cls) -> UniSHConfig:
        """The released model (unish_release.safetensors)."""
        return cls()

    @classmethod
    def small(cls) -> UniSHConfig:
        """A mid-size model for experiments (no released weights)."""
        scene = SceneBranchConfig.small(round_encoder_input_bf16=True)
        human = HumanBranchConfig(vit_width=384, vit_depth=12, vit_heads=6, head_width=512, head_depth=3,
                                  head_heads=8, head_dim_head=64, head_mlp_dim=512)
        align = AlignNetConfig(scene_dim=scene.hidden_dim, human_dim=human.head_width, hidden_dim=256, num_heads=4,
                               ff_dim=256)
        return cls(scene=scene, human=human, align=align)

    @classmethod
    def tiny(cls) -> UniSHConfig:
        """The sizes of the unish_pipeline golden (tests)."""
        return cls(scene=SceneBranchConfig.tiny(round_encoder_input_bf16=True), human=HumanBranchConfig.tiny(),
                   align=AlignNetConfig.tiny())


class UniSH(nn.Module):
    def __init__(self, config: UniSHConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UniSHConfig.paper()
        self.scene = SceneBranch(replace(config.scene, autocast_dtype=config.autocast_dtype))
        self.human = HumanBranch(config.human)
        self.align = AlignNet(config.align)

    # ------------------------------------------------------------------ the three networks
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        name = self.config.autocast_dtype
        if name is None or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=_AUTOCAST_DTYPES[name])

    @staticmethod
    def _float32(device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast off (the heads, AlignNet and the post-processing run in float32)."""
        if device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", enabled=False)

    def run_scene(self, images: Tensor) -> SceneOutput:
        """images (B, N, 3, H, W) in [0, 1] -> pi3 outputs (heads in float32)."""
        return self.scene(images)

    def run_human(self, human_patches: Tensor, bbox_info: Tensor) -> HumanOutput:
        """Person crops (B, N, 3, 256, 256 or 192) and the CLIFF condition (B, N, 3) (already / focal)."""
        width = self.config.human.image_size[1]
        crops = backbone_columns(human_patches, width) if human_patches.shape[-1] != width else human_patches
        if crops.ndim != 5 or bbox_info.shape != (*crops.shape[:2], 3):
            raise ValueError(f"human_patches must be (B, N, 3, H, W) and bbox_info (B, N, 3); got "
                             f"{tuple(human_patches.shape)} and {tuple(bbox_info.shape)}")
        lead = crops.shape[:2]
        weight = self.human.backbone.patch_embed.weight
        with self._autocast(crops.device):
            tokens = self.human.backbone.tokens(crops.flatten(0, 1).to(weight.dtype))
        with self._float32(crops.device):  # the SMPL head runs in float32, as the official pipeline
            head_dtype = self.human.head.query_pos.dtype
            out = self.human.head(tokens.to(head_dtype), bbox_info.reshape(-1, 3).to(head_dtype))
        return HumanOutput(rotmats=out.rotmats.reshape(*lead, *out.rotmats.shape[1:]),
                           betas=out.betas.reshape(*lead, -1), token=out.token.reshape(*lead, -1))

    def run_align(self, scene: SceneOutput, human: HumanOutput, fps: float = 6.0) -> AlignOutput:
        b, n = human.token.shape[:2]
        with self._float32(human.token.device):
            dtype = self.align.scale_token.dtype
            hidden = scene.hidden.reshape(b, n, scene.hidden.shape[1], -1).to(dtype)
            return self.align(hidden, human.token.to(dtype), fps=fps)

    def assemble(self, scene: SceneOutput, human: HumanOutput, align: AlignOutput, masks: Tensor | None = None
                 ) -> UniSHOutput:
        """The official forward()'s output dict from the three networks' outputs (float32)."""
        local_points = scene.local_points.float()
        c2ws = scene.camera_poses.float()
        c2ws_cano = relative_to_first(c2ws)
        conf_logits = scene.conf.float()[..., 0]
        point_conf = torch.sigmoid(conf_logits)
        pose_cam = human.rotmats.float()
        trans_cam = align.trans_cam.float()
        betas = human.betas.float()
        return UniSHOutput(
            world_points=transform_points(c2ws_cano, local_points), local_points=local_points,
            point_conf=point_conf,
            masks=confidence_mask(point_conf, self.config.conf_threshold) if masks is None else masks,
            c2ws=c2ws, c2ws_cano=c2ws_cano, w2cs_cano=se3_inverse(c2ws_cano),
            pose_cam=pose_cam, pose_world=root_to_world(pose_cam, c2ws_cano), betas=betas.mean(dim=1),
            trans_cam=trans_cam, trans_world=translation_to_world(trans_cam, c2ws_cano), scale=align.scale.float(),
            conf_logits=conf_logits, scene_hidden=scene.hidden, human_token=human.token, betas_per_frame=betas,
        )

    # ------------------------------------------------------------------ entry points
    def forward(self, images: Tensor, human_patches: Tensor, bbox_info: Tensor, fps: float = 6.0) -> UniSHOutput:
        """The official forward(): bbox_info is the CLIFF condition as given (already divided by a focal)."""
        scene = self.run_scene(images)
        human = self.run_human(human_patches, bbox_info)
        return self.assemble(scene, human, self.run_align(scene, human, fps))

    @torch.no_grad()
    def infer(self, images: Tensor, human_patches: Tensor, bbox_px: Tensor, fps: float = 6.0,
              solver: SolverName | FocalShiftSolver = "torch") -> UniSHInference:
        """The official inference(): metric scene, cameras, intrinsics and SMPL for one batch of windows.

        bbox_px (B, N, 3) = [cx - W/2, cy - H/2, box size] in pixels of `images` (see `person_inputs`); it is
        divided by the focal recovered from the scene branch's point map before the human branch runs.
        """
        solve = get_solver(solver)
        scene = self.run_scene(images)
        height, width = images.shape[-2:]
        with self._float32(images.device):
            local_points = scene.local_points.float()
            masks = confidence_mask(torch.sigmoid(scene.conf.float()[..., 0]), self.config.conf_threshold)
            first_focal, first_shift = solve(local_points, masks)
            first_focal, first_shift = first_focal.float(), first_shift.float()
            masks = keep_in_front(masks, local_points[..., 2], first_shift)
            intrinsics, _ = intrinsics_from_focal(first_focal, height, width)
            bbox_info = bbox_condition_from_pixels(bbox_px.float(), intrinsics)
        human = self.run_human(human_patches, bbox_info)
        out = self.assemble(scene, human, self.run_align(scene, human, fps), masks=masks)
        with self._float32(images.device):
            return finalize(out, solve, first_focal=first_focal, first_shift=first_shift)


def person_inputs(images: Tensor, boxes_xyxy: Tensor, box_scale: float = 1.0, patch_size: int = 256
                  ) -> tuple[Tensor, Tensor]:
    """The official crops and pixel bbox info from person boxes.

    images (..., 3, H, W) in [0, 1], boxes (..., 4) pixel xyxy -> square crops around the box centre with side
    max(w, h) * box_scale, (..., 3, patch_size, patch_size) (bilinear, zero border), and bbox_px (..., 3) =
    [cx - W/2, cy - H/2, side] for `UniSH.infer`.
    """
    lead = images.shape[:-3]
    height, width = images.shape[-2:]
    centre, size = square_boxes(boxes_xyxy.to(images.dtype), box_scale)
    patches = crop_patches(images.reshape(-1, *images.shape[-3:]), centre.reshape(-1, 2), size.reshape(-1),
                           patch_size)
    bbox_px = bbox_condition(centre, size, (height, width), 1.0)
    return patches.reshape(*lead, *patches.shape[1:]), bbox_px


def load_unish(path: str | Path, config: UniSHConfig | None = None, *, device: str | torch.device = "cpu",
               mmap: bool = True) -> UniSH:
    """Build UniSH (paper sizes by default) and load the official `unish_release.safetensors` (or a
    `torch.save`d state dict) into it, strictly. The model is built on the meta device and takes the file's
    tensors as they are (memory-mapped for safetensors), then moves to `device` in eval mode."""
    from .convert.unish import load_unish_file

    return load_unish_file(path, config, mmap=mmap).to(device).eval()
