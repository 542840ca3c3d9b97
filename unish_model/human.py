"""Human branch: CameraHMR's ViT-H backbone and SMPL transformer-decoder head (as used by UniSH).

One 256x192 person crop -> 16x12 image tokens (ViTPose-style ViT, no class token) -> one query token built from
the CLIFF bbox condition and the SMPL mean parameters cross-attends to them -> per-joint 6D rotations (+ mean),
shape (+ mean), and the 1024-d output token that AlignNet consumes.  CameraHMR's own checkpoint also has a
weak-perspective camera head (`deccam`) and an 88-number head (`deckp`); UniSH's release drops both, so they are
optional here (`HumanBranchConfig.with_camera_head` / `with_keypoint_head`).

What the two optional CameraHMR heads output (read from pixelite1201/CameraHMR @ 65d11a0, core/heads/
smpl_head_cliff.py, core/camerahmr_trainer_smpl.py, mesh_estimator.py):
* `deccam`: `pred_cam = deccam(token) + init_cam` = [s, tx, ty], a weak-perspective camera in the crop's
  normalised frame (the crop spans [-1, 1]).  CameraHMR turns it into a full-image translation with
  `tz = 2 f / (box_size * s)`, `tx' = tx + 2 (cx - W/2) / (s * box_size)`, `ty' = ty + 2 (cy - H/2) / (s * box_size)`
  and projects the SMPL joints with K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]].  Those projected joints are
  CameraHMR's 2D keypoints (`camerahmr_keypoints_2d` below).
* `deckp`: 88 raw numbers (44 x 2, NUM_JOINTS = 44).  The released code computes it and never reads it: no loss,
  metric or demo uses it, so its values carry no known meaning.  We expose it reshaped (`keypoints_raw`, ...x44x2)
  only so a checkpoint loads completely; use `camerahmr_keypoints_2d` for keypoint labels.

Pure preprocessing helpers mirror the official pipeline: a square box (longer side) around the person, a
256x256 crop (bilinear, zero border), its central 192 columns ([..., 32:-32]) for the backbone, and
bbox info = [cx - W/2, cy - H/2, box size] / focal.  UniSH feeds [0, 1] RGB crops without normalisation;
CameraHMR's own demo normalises with the ImageNet mean/std (`imagenet_normalize`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unish_model.layers import Mlp, TransformerBlock

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class HumanBranchConfig:
    image_size: tuple[int, int] = (256, 192)  # backbone input (height, width)
    patch_size: int = 16
    patch_padding: int = 2  # the official PatchEmbed pads by 2: 256x192 -> 16x12 tokens
    vit_width: int = 1280
    vit_depth: int = 32
    vit_heads: int = 16
    vit_mlp_ratio: float = 4.0
    head_width: int = 1024  # the query token's width (= AlignNet's human token)
    head_depth: int = 6
    head_heads: int = 8
    head_dim_head: int = 64
    head_mlp_dim: int = 1024
    num_joints: int = 24
    num_betas: int = 10
    with_camera_head: bool = False  # CameraHMR's `deccam`
    with_keypoint_head: bool = False  # CameraHMR's `deckp`
    num_raw_keypoints: int = 44

    def __post_init__(self) -> None:
        if self.vit_width % self.vit_heads:
            raise ValueError(f"vit_width {self.vit_width} is not divisible by vit_heads {self.vit_heads}")
        if self.grid != (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size):
            # the official pos_embed has (H/p)*(W/p) rows and is added without interpolation
            raise ValueError(f"patch grid {self.grid} does not match the position table for {self.image_size}")

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.image_size
        k, p = self.patch_size, self.patch_padding
        return (h + 2 * p - k) // k + 1, (w + 2 * p - k) // k + 1

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def pose_dim(self) -> int:
        return 6 * self.num_joints

    @property
    def query_dim(self) -> int:
        # bbox info 3 + 6D pose + betas + weak-perspective camera 3
        return 3 + self.pose_dim + self.num_betas + 3

    @classmethod
    def paper(cls) -> HumanBranchConfig:
        """UniSH's release: ViT-H/16 on 256x192, head depth 6 / 8 heads x 64 / mlp 1024, no camera or kp head."""
        return cls()

    @classmethod
    def camerahmr(cls) -> HumanBranchConfig:
        """CameraHMR's SMPL checkpoint: the paper sizes plus `deccam` and `deckp`."""
        return cls(with_camera_head=True, with_keypoint_head=True)

    @classmethod
    def tiny(cls, **overrides: object) -> HumanBranchConfig:
        """The golden's tiny sizes (width 32, depth 2, head depth 2 / 2 heads x 8 / mlp 16)."""
        base = cls(vit_width=32, vit_depth=2, vit_heads=2, head_depth=2, head_heads=2, head_dim_head=8,
                   head_mlp_dim=16)
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class HumanOutput:
    rotmats: Tensor  # (..., J, 3, 3); joint 0 = global orientation, camera frame
    betas: Tensor  # (..., num_betas), per crop (UniSH averages them over a clip's frames)
    token: Tensor  # (..., head_width): AlignNet's human token
    camera: Tensor | None = None  # (..., 3) weak-perspective [s, tx, ty] in crop space (CameraHMR)
    keypoints_raw: Tensor | None = None  # (..., 44, 2) CameraHMR's unused `deckp` output


# ----------------------------------------------------------------------------------------------- backbone


class ViTBackbone(nn.Module):
    """ViTPose-style ViT: padded patch conv, learned positions (no class token), pre-norm blocks, final norm."""

    def __init__(self, cfg: HumanBranchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.vit_width, cfg.patch_size, stride=cfg.patch_size,
                                     padding=cfg.patch_padding)
        # row 0 is the pretraining class token's slot: the official code adds it to every patch
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.vit_width))
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.vit_width, cfg.vit_heads, cfg.vit_mlp_ratio, norm_eps=1e-6)
            for _ in range(cfg.vit_depth))
        self.final_norm = nn.LayerNorm(cfg.vit_width, eps=1e-6)

    def tokens(self, images: Tensor) -> Tensor:
        """(M, 3, H, W) -> (M, h*w, C) image tokens, row-major over the patch grid."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def forward(self, images: Tensor) -> Tensor:
        """(M, 3, H, W) -> (M, C, h, w) channel-first feature map (the official backbone's output)."""
        h, w = self.cfg.grid
        x = self.tokens(images)
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


# ----------------------------------------------------------------------------------------------- SMPL head


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.qkv = nn.Linear(width, 3 * inner, bias=False)
        self.out = nn.Linear(inner, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class _CrossAttention(nn.Module):
    def __init__(self, width: int, context_width: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.q = nn.Linear(width, inner, bias=False)
        self.kv = nn.Linear(context_width, 2 * inner, bias=False)
        self.out = nn.Linear(inner, width)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class _HeadLayer(nn.Module):
    """Pre-norm: self-attention, cross-attention to the image tokens, GELU feed-forward."""

    def __init__(self, cfg: HumanBranchConfig) -> None:
        super().__init__()
        d = cfg.head_width
        self.self_norm = nn.LayerNorm(d)
        self.self_attn = _SelfAttention(d, cfg.head_heads, cfg.head_dim_head)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attn = _CrossAttention(d, cfg.vit_width, cfg.head_heads, cfg.head_dim_head)
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = Mlp(d, cfg.head_mlp_dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_norm(x))
        x = x + self.cross_attn(self.cross_norm(x), context)
        return x + self.ffn(self.ffn_norm(x))


def rot6d_to_rotmat(x: Tensor) -> Tensor:
    """(..., 6) -> (..., 3, 3).  The 6 numbers are the first two columns a1 = x[:3], a2 = x[3:]
    (official `x.reshape(-1, 2, 3).permute(0, 2, 1)`); Gram-Schmidt gives the columns b1, b2, b1 x b2."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


class SMPLHead(nn.Module):
    """One query token (CLIFF bbox info + mean pose/shape/camera) -> transformer decoder -> SMPL residuals."""

    def __init__(self, cfg: HumanBranchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.head_width
        self.query_embed = nn.Linear(cfg.query_dim, d)
        self.query_pos = nn.Parameter(torch.zeros(1, 1, d))
        self.layers = nn.ModuleList(_HeadLayer(cfg) for _ in range(cfg.head_depth))
        self.pose_out = nn.Linear(d, cfg.pose_dim)
        self.betas_out = nn.Linear(d, cfg.num_betas)
        self.camera_out = nn.Linear(d, 3) if cfg.with_camera_head else None
        self.keypoint_out = nn.Linear(d, 2 * cfg.num_raw_keypoints) if cfg.with_keypoint_head else None
        # SMPL mean parameters; the real values come with the checkpoint (identity rotations until then)
        identity6d = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).repeat(cfg.num_joints)
        self.register_buffer("mean_pose", identity6d[None].clone())
        self.register_buffer("mean_betas", torch.zeros(1, cfg.num_betas))
        self.register_buffer("mean_camera", torch.tensor([[0.9, 0.0, 0.0]]))

    def forward(self, image_tokens: Tensor, bbox_info: Tensor) -> HumanOutput:
        """image_tokens (M, L, vit_width), bbox_info (M, 3) -> per-crop outputs with leading dim M."""
        m = image_tokens.shape[0]
        mean_pose = self.mean_pose.expand(m, -1)
        mean_betas = self.mean_betas.expand(m, -1)
        mean_camera = self.mean_camera.expand(m, -1)
        query = torch.cat([bbox_info.to(mean_pose.dtype), mean_pose, mean_betas, mean_camera], dim=-1)
        x = self.query_embed(query[:, None]) + self.query_pos
        for layer in self.layers:
            x = layer(x, image_tokens)
        token = x[:, 0]
        pose6d = self.pose_out(token) + mean_pose
        rotmats = rot6d_to_rotmat(pose6d.reshape(m, self.cfg.num_joints, 6))
        out = HumanOutput(rotmats=rotmats, betas=self.betas_out(token) + mean_betas, token=token)
        if self.camera_out is not None:
            out.camera = self.camera_out(token) + mean_camera
        if self.keypoint_out is not None:
            out.keypoints_raw = self.keypoint_out(token).reshape(m, self.cfg.num_raw_keypoints, 2)
        return out


class HumanBranch(nn.Module):
    """Backbone + SMPL head.  forward(crops (..., 3, H, W), bbox_info (..., 3)) -> HumanOutput with the same
    leading dims; crops are the backbone's 256x192 input (see `backbone_columns` for 256x256 patches)."""

    def __init__(self, cfg: HumanBranchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ViTBackbone(cfg)
        self.head = SMPLHead(cfg)

    def forward(self, crops: Tensor, bbox_info: Tensor) -> HumanOutput:
        if tuple(crops.shape[-3:]) != (3, *self.cfg.image_size):
            raise ValueError(f"human crops must be (..., 3, {self.cfg.image_size[0]}, {self.cfg.image_size[1]}), "
                             f"got {tuple(crops.shape)}; slice 256x256 patches with backbone_columns()")
        if bbox_info.shape[:-1] != crops.shape[:-3] or bbox_info.shape[-1] != 3:
            raise ValueError(f"bbox_info must be {tuple(crops.shape[:-3])} + (3,), got {tuple(bbox_info.shape)}")
        lead = crops.shape[:-3]
        tokens = self.backbone.tokens(crops.reshape(-1, *crops.shape[-3:]))
        # the official pipeline runs the head in float32 even when the backbone runs in bf16
        out = self.head(tokens.to(self.head.query_pos.dtype), bbox_info.reshape(-1, 3))
        return HumanOutput(
            rotmats=out.rotmats.reshape(*lead, *out.rotmats.shape[1:]),
            betas=out.betas.reshape(*lead, -1),
            token=out.token.reshape(*lead, -1),
            camera=None if out.camera is None else out.camera.reshape(*lead, 3),
            keypoints_raw=None if out.keypoints_raw is None else out.keypoints_raw.reshape(
                *lead, *out.keypoints_raw.shape[1:]),
        )


# ----------------------------------------------------------------------------------------------- preprocessing


def square_boxes(boxes_xyxy: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """(..., 4) pixel boxes -> centres (..., 2) and square side (...) = longer side * scale (UniSH's rule)."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    centre = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2], dim=-1)
    size = torch.maximum(x2 - x1, y2 - y1) * scale
    return centre, size


def bbox_condition(centre: Tensor, size: Tensor, image_hw: tuple[float, float] | Tensor,
                   focal: Tensor | float) -> Tensor:
    """CLIFF conditioning [cx - W/2, cy - H/2, size] / focal, shape (..., 3); image_hw = (H, W) or (..., 2)."""
    hw = torch.as_tensor(image_hw, dtype=centre.dtype, device=centre.device)
    f = torch.as_tensor(focal, dtype=centre.dtype, device=centre.device)
    info = torch.stack([centre[..., 0] - hw[..., 1] / 2, centre[..., 1] - hw[..., 0] / 2, size], dim=-1)
    return info / f[..., None]


def crop_transform(centre: Tensor, size: Tensor, out_size: int = 256) -> Tensor:
    """(..., 2, 3) affine map from full-image pixel coordinates to crop pixel coordinates (no rotation):
    the box centre goes to the crop centre and `size` pixels to `out_size` (the official cv2 transform)."""
    s = out_size / size
    zero = torch.zeros_like(s)
    row0 = torch.stack([s, zero, out_size / 2 - s * centre[..., 0]], dim=-1)
    row1 = torch.stack([zero, s, out_size / 2 - s * centre[..., 1]], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def crop_patches(images: Tensor, centre: Tensor, size: Tensor, out_size: int = 256) -> Tensor:
    """Bilinear square crops with a zero border: images (M, C, H, W), centre (M, 2), size (M,) ->
    (M, C, out_size, out_size).  Same geometry as cv2.warpAffine with `crop_transform` (pixel centres at
    integer coordinates); values differ from OpenCV only by its fixed-point interpolation weights."""
    m, _, h, w = images.shape
    u = torch.arange(out_size, dtype=images.dtype, device=images.device)
    # crop pixel u -> image pixel x = cx + (u - out/2) * size/out
    step = (size / out_size).to(images.dtype)[:, None]
    xs = centre[:, 0:1].to(images.dtype) + (u[None] - out_size / 2) * step  # (M, out)
    ys = centre[:, 1:2].to(images.dtype) + (u[None] - out_size / 2) * step
    gx = (2 * xs + 1) / w - 1  # grid_sample, align_corners=False: pixel i spans [i-0.5, i+0.5]
    gy = (2 * ys + 1) / h - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def backbone_columns(patches: Tensor, width: int = 192) -> Tensor:
    """Square patches (..., H, H) -> the central `width` columns (official `[..., 32:-32]` for 256 -> 192)."""
    full = patches.shape[-1]
    left = (full - width) // 2
    return patches[..., left:left + width]


def imagenet_normalize(images: Tensor) -> Tensor:
    """[0, 1] RGB (..., 3, H, W) -> ImageNet-normalised (CameraHMR's own input; UniSH skips this)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std


# ----------------------------------------------------------------------------------------------- camera, 2D keypoints


def weak_perspective_to_translation(camera: Tensor, centre: Tensor, size: Tensor,
                                    image_hw: tuple[float, float] | Tensor, focal: Tensor | float) -> Tensor:
    """CameraHMR's crop camera [s, tx, ty] -> SMPL translation (..., 3) in the full image's camera frame."""
    hw = torch.as_tensor(image_hw, dtype=camera.dtype, device=camera.device)
    f = torch.as_tensor(focal, dtype=camera.dtype, device=camera.device)
    s, tx, ty = camera.unbind(-1)
    denom = s * size
    tz = 2 * f / denom
    dx = 2 * (centre[..., 0] - hw[..., 1] / 2) / denom
    dy = 2 * (centre[..., 1] - hw[..., 0] / 2) / denom
    return torch.stack([tx + dx, ty + dy, tz], dim=-1)


def project_points(points: Tensor, translation: Tensor, focal: Tensor | float, principal: Tensor) -> Tensor:
    """Pinhole projection of (..., J, 3) points shifted by (..., 3) with K = [[f, 0, px], [0, f, py], [0, 0, 1]]."""
    p = points + translation[..., None, :]
    f = torch.as_tensor(focal, dtype=p.dtype, device=p.device)[..., None, None]
    return p[..., :2] / p[..., 2:3] * f + principal[..., None, :].to(p.dtype)


def camerahmr_keypoints_2d(joints: Tensor, camera: Tensor, centre: Tensor, size: Tensor,
                           image_hw: tuple[float, float] | Tensor, focal: Tensor | float,
                           principal: Tensor | None = None) -> Tensor:
    """CameraHMR's 2D keypoints in full-image pixels: body-model joints (..., J, 3) (posed, without
    translation) placed with the crop camera's full-image translation and projected with the focal.
    The principal point defaults to the image centre (CameraHMR's K)."""
    hw = torch.as_tensor(image_hw, dtype=joints.dtype, device=joints.device)
    if principal is None:
        principal = torch.stack([hw[..., 1] / 2, hw[..., 0] / 2], dim=-1).expand(*camera.shape[:-1], 2)
    translation = weak_perspective_to_translation(camera, centre, size, image_hw, focal)
    return project_points(joints, translation, focal, principal)
