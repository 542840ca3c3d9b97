"""Scene branch of UniSH: the pi3 architecture (our own implementation).

images (B, N, 3, H, W) in [0, 1]
  -> normalise with the model's own mean/std buffers
  -> ViT encoder with register tokens (DINOv2-style), patch tokens after the final norm
  -> prepend `decoder_registers` per frame, alternating frame / global transformer blocks with 2D RoPE
  -> hidden = concat(last two decoder blocks) (B*N, R+hw, 2C)   (AlignNet reads this)
  -> point / conf / camera transformer decoders -> pixel-shuffle heads and a camera head
  -> local points, confidence logits, camera-to-world poses, world points.

pi3 is permutation-equivariant over frames: there is no frame-index embedding.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import pose_from_rotation_translation, svd_rotation, transform_points
from .layers import RopeFn, TransformerBlock
from .rope import Rope2D

__all__ = ["SceneBranchConfig", "SceneBranch", "SceneOutput", "ViTEncoder", "HeadDecoder", "PixelShuffleHead",
           "CameraHead"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SceneBranchConfig:
    patch_size: int = 14
    # encoder: DINOv2 ViT with registers
    encoder_dim: int = 1024
    encoder_depth: int = 24
    encoder_heads: int = 16
    encoder_mlp_ratio: float = 4.0
    encoder_registers: int = 4
    encoder_layer_scale: float | None = 1.0
    encoder_img_size: int = 518  # the pos-embed grid is encoder_img_size // patch_size squared
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0
    # alternating frame/global decoder (width must equal encoder_dim: no projection in between)
    decoder_depth: int = 36
    decoder_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    decoder_layer_scale: float | None = 0.01
    decoder_registers: int = 5
    rope_base: float = 100.0
    # point and confidence decoders (same sizes) and their pixel-shuffle heads
    point_decoder_dim: int = 1024
    point_decoder_heads: int = 16
    point_decoder_depth: int = 5
    point_decoder_out: int = 1024
    # camera decoder and head (the head's width is camera_decoder_out)
    camera_decoder_dim: int = 1024
    camera_decoder_heads: int = 16
    camera_decoder_depth: int = 5
    camera_decoder_out: int = 512
    head_mlp_ratio: float = 4.0
    # On CUDA: run encoder and decoders under autocast with this dtype ("bfloat16" / "float16"); the heads
    # always run in float32. None = float32 everywhere. Ignored on the CPU.
    autocast_dtype: str | None = None
    # UniSH's copy of pi3 casts the normalised images to bfloat16 before the encoder; True reproduces that
    # rounding (the tensor is cast back to the compute dtype).
    round_encoder_input_bf16: bool = False

    def __post_init__(self) -> None:
        if self.encoder_dim % self.encoder_heads or self.encoder_dim % self.decoder_heads:
            raise ValueError("encoder/decoder width must be divisible by their head counts")
        if self.decoder_depth < 2:
            raise ValueError("the decoder needs at least 2 blocks (its output concatenates the last two)")
        if self.encoder_img_size % self.patch_size:
            raise ValueError("encoder_img_size must be a multiple of patch_size")

    @property
    def decoder_dim(self) -> int:
        return self.encoder_dim

    @property
    def hidden_dim(self) -> int:
        """Width of the decoder output that the heads and AlignNet read (concat of two blocks)."""
        return 2 * self.encoder_dim

    @property
    def pos_embed_grid(self) -> int:
        return self.encoder_img_size // self.patch_size

    @classmethod
    def paper(cls, **overrides: object) -> "SceneBranchConfig":
        """Official pi3 sizes (ViT-L encoder, 36-block large decoder)."""
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: object) -> "SceneBranchConfig":
        """The sizes of the pi3 golden (tests)."""
        base = cls(encoder_dim=48, encoder_depth=2, encoder_heads=4, decoder_depth=4, decoder_heads=3,
                   point_decoder_dim=32, point_decoder_heads=2, point_decoder_out=40,
                   camera_decoder_dim=32, camera_decoder_heads=2, camera_decoder_out=24)
        return replace(base, **overrides)

    @classmethod
    def small(cls, **overrides: object) -> "SceneBranchConfig":
        """A mid-size model for quick experiments (not a released size)."""
        base = cls(encoder_dim=384, encoder_depth=12, encoder_heads=6, decoder_depth=12, decoder_heads=6,
                   point_decoder_dim=384, point_decoder_heads=6, point_decoder_out=384,
                   camera_decoder_dim=384, camera_decoder_heads=6, camera_decoder_out=256)
        return replace(base, **overrides)


@dataclass
class SceneOutput:
    points: Tensor  # (B, N, H, W, 3) world points = camera_poses @ local_points
    local_points: Tensor  # (B, N, H, W, 3) camera frame (OpenCV axes)
    conf: Tensor  # (B, N, H, W, 1) confidence logits (no sigmoid)
    camera_poses: Tensor  # (B, N, 4, 4) camera-to-world, not re-expressed in frame 0
    hidden: Tensor  # (B*N, R+hw, 2C) decoder tokens: R register tokens then the h*w patch tokens
    positions: Tensor  # (B*N, R+hw, 2) RoPE (y, x): registers 0, patches (row+1, col+1)
    num_registers: int
    patch_grid: tuple[int, int]  # (h, w)
    debug: dict[str, Tensor] = field(default_factory=dict)


class ViTEncoder(nn.Module):
    """DINOv2-style ViT with register tokens; returns the normalised patch tokens (B, h*w, C)."""

    def __init__(self, config: SceneBranchConfig) -> None:
        super().__init__()
        dim, grid = config.encoder_dim, config.pos_embed_grid
        self.patch_size = config.patch_size
        self.antialias = config.interpolate_antialias
        self.offset = config.interpolate_offset
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.registers = nn.Parameter(torch.zeros(1, config.encoder_registers, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.encoder_heads, config.encoder_mlp_ratio, config.encoder_layer_scale)
            for _ in range(config.encoder_depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def resized_pos_embed(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Tensor:
        """(1, 1 + h*w, C): cls pos-embed + the square grid resized (bicubic) to the patch grid, in float32."""
        grid = math.isqrt(self.pos_embed.shape[1] - 1)
        if (grid_h, grid_w) == (grid, grid):
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        if self.offset:
            # DINOv2's legacy path: a scale factor with a small offset instead of an output size
            scale = ((grid_h + self.offset) / grid, (grid_w + self.offset) / grid)
            patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=self.antialias)
        else:
            patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=self.antialias)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"pos-embed resize gave {tuple(patch_pos.shape[-2:])}, wanted {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W), already normalised -> patch tokens (B, h*w, C)."""
        _, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        # no casts here: under autocast the float32 tokens promote the stream to float32, as in DINOv2
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.resized_pos_embed(grid_h, grid_w, x.dtype)
        # registers go after cls and carry no position embedding
        registers = self.registers.expand(x.shape[0], -1, -1)
        x = torch.cat((x[:, :1], registers, x[:, 1:]), dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 1 + self.registers.shape[1]:]


class FrameGlobalDecoder(nn.Module):
    """Register tokens + alternating frame-wise (even blocks) and all-frames (odd blocks) attention."""

    def __init__(self, config: SceneBranchConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.registers = nn.Parameter(torch.zeros(1, 1, config.decoder_registers, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.decoder_heads, config.decoder_mlp_ratio, config.decoder_layer_scale,
                             qk_norm=True, qk_norm_eps=1e-5)
            for _ in range(config.decoder_depth))

    @property
    def num_registers(self) -> int:
        return self.registers.shape[2]

    def forward(self, tokens: Tensor, num_frames: int, rope: Rope2D) -> Tensor:
        """tokens (B*N, hw, C) -> (B*N, R+hw, 2C); `rope` is prepared for the (B*N, R+hw) layout."""
        frames_total, _, dim = tokens.shape
        batch = frames_total // num_frames
        registers = self.registers[0].expand(frames_total, -1, -1)
        x = torch.cat((registers, tokens), dim=1)
        seq = x.shape[1]
        global_rope = rope.regroup(batch, num_frames * seq)
        last_two: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            if index % 2 == 0:
                x = block(x.reshape(frames_total, seq, dim), rope)
            else:
                x = block(x.reshape(batch, num_frames * seq, dim), global_rope)
            if index >= len(self.blocks) - 2:
                last_two.append(x.reshape(frames_total, seq, dim))
        return torch.cat(last_two, dim=-1)


class HeadDecoder(nn.Module):
    """Linear in, a few RoPE transformer blocks (no LayerScale, no qk-norm), linear out."""

    def __init__(self, in_dim: int, dim: int, heads: int, depth: int, out_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.in_proj = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.out_proj = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, rope: RopeFn | None) -> Tensor:
        x = self.in_proj(x)
        for block in self.blocks:
            x = block(x, rope)
        return self.out_proj(x)


class PixelShuffleHead(nn.Module):
    """Each patch token -> a patch_size x patch_size block of `channels` values (linear + pixel shuffle)."""

    def __init__(self, in_dim: int, channels: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_dim, channels * patch_size * patch_size)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """tokens (B, h*w, D) -> (B, H, W, channels)."""
        batch = tokens.shape[0]
        feat = self.proj(tokens).transpose(1, 2).reshape(batch, -1, *grid)
        return F.pixel_shuffle(feat, self.patch_size).permute(0, 2, 3, 1)


class ResidualMlpBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.fc3 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))))


class CameraHead(nn.Module):
    """Per-frame camera-to-world pose from the camera decoder's patch tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(ResidualMlpBlock(dim) for _ in range(2))
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.translation = nn.Linear(dim, 3)
        self.rotation = nn.Linear(dim, 9)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, h*w, D) -> (B, 4, 4) c2w, rotation projected onto SO(3)."""
        x = tokens
        for block in self.res_blocks:
            x = block(x)
        x = x.mean(dim=1)  # average over all patches of the frame
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        # SVD has no bf16 kernel; the pose is assembled in float32 like the official head
        rotation = svd_rotation(self.rotation(x).float())
        return pose_from_rotation_translation(rotation, self.translation(x).float())


def _as_weights(x: Tensor, layer: nn.Linear) -> Tensor:
    """Cast head inputs to the head's parameter dtype: float32 unless the whole model was cast down."""
    return x.to(layer.weight.dtype)


def autocast_dtype(config: SceneBranchConfig, device: torch.device) -> torch.dtype | None:
    """The trunk's autocast dtype on `device` (CUDA only; None: full precision)."""
    name = config.autocast_dtype
    if name is None or device.type != "cuda":
        return None
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def local_points_from_raw(raw: Tensor) -> Tensor:
    """The point head's raw (..., 3) output -> camera-frame points [xy * exp(z), exp(z)], float32."""
    xy, log_z = raw.float().split((2, 1), dim=-1)
    z = torch.exp(log_z)
    return torch.cat((xy * z, z), dim=-1)


def decode_points(decoder: HeadDecoder, head: PixelShuffleHead, scene: SceneOutput, config: SceneBranchConfig
                  ) -> Tensor:
    """The point path from the trunk's features (`scene.hidden`): (B, N, H, W, 3) camera-frame points, float32,
    computed as `SceneBranch.forward` does (the decoder under the autocast dtype on CUDA, the head in float32).
    Training calls it with the live point decoder (stage 1 trains only this path) or a frozen copy of it."""
    hidden, frames = scene.hidden, scene.local_points.shape[1]
    amp_dtype = autocast_dtype(config, hidden.device)
    amp = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with amp:
        rope = Rope2D.build(scene.positions, config.point_decoder_dim // config.point_decoder_heads, config.rope_base,
                            amp_dtype or decoder.in_proj.weight.dtype)
        tokens = decoder(hidden, rope)
    amp_off = torch.autocast(device_type="cuda", enabled=False) if amp_dtype is not None else contextlib.nullcontext()
    with amp_off:
        raw = head(_as_weights(tokens[:, scene.num_registers:], head.proj), scene.patch_grid)
        height, width = (g * head.patch_size for g in scene.patch_grid)
        return local_points_from_raw(raw.reshape(hidden.shape[0] // frames, frames, height, width, 3))


class SceneBranch(nn.Module):
    def __init__(self, config: SceneBranchConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SceneBranchConfig.paper()
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.encoder = ViTEncoder(config)
        self.decoder = FrameGlobalDecoder(config)
        hidden = config.hidden_dim

        def point_like_decoder() -> HeadDecoder:
            return HeadDecoder(hidden, config.point_decoder_dim, config.point_decoder_heads,
                               config.point_decoder_depth, config.point_decoder_out, config.head_mlp_ratio)

        self.point_decoder = point_like_decoder()
        self.point_head = PixelShuffleHead(config.point_decoder_out, 3, config.patch_size)
        self.conf_decoder = point_like_decoder()
        self.conf_head = PixelShuffleHead(config.point_decoder_out, 1, config.patch_size)
        self.camera_decoder = HeadDecoder(hidden, config.camera_decoder_dim, config.camera_decoder_heads,
                                          config.camera_decoder_depth, config.camera_decoder_out,
                                          config.head_mlp_ratio)
        self.camera_head = CameraHead(config.camera_decoder_out)

    # ------------------------------------------------------------------ helpers
    def _autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        return autocast_dtype(self.config, device)

    def token_positions(self, frames: int, grid: tuple[int, int], device: torch.device) -> Tensor:
        """(frames, R+hw, 2) long: registers at (0, 0), patch (row, col) at (row+1, col+1)."""
        grid_h, grid_w = grid
        rows = torch.arange(1, grid_h + 1, device=device)
        cols = torch.arange(1, grid_w + 1, device=device)
        patch = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
        special = torch.zeros(self.decoder.num_registers, 2, dtype=patch.dtype, device=device)
        return torch.cat((special, patch), dim=0)[None].expand(frames, -1, -1)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, return_debug: bool = False) -> SceneOutput:
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, N, 3, H, W), got {tuple(images.shape)}")
        batch, frames, _, height, width = images.shape
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch}")
        grid = (height // patch, width // patch)
        amp_dtype = self._autocast_dtype(images.device)
        amp = (torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        debug: dict[str, Tensor] = {}

        x = (images - self.pixel_mean[None]) / self.pixel_std[None]
        x = x.reshape(batch * frames, 3, height, width)
        if self.config.round_encoder_input_bf16:
            x = x.to(torch.bfloat16).to(images.dtype)
        x = x.to(self.encoder.patch_embed.weight.dtype)  # a model cast to bf16 takes float32 images too

        with amp:
            tokens = self.encoder(x)
            positions = self.token_positions(batch * frames, grid, images.device)
            # cos/sin follow the token dtype (bf16 under autocast, as the official RoPE does)
            rope_dtype = amp_dtype or tokens.dtype
            ropes: dict[int, Rope2D] = {}

            def rope_for(dim: int, heads: int) -> Rope2D:
                head_dim = dim // heads
                if head_dim not in ropes:
                    ropes[head_dim] = Rope2D.build(positions, head_dim, self.config.rope_base, rope_dtype)
                return ropes[head_dim]

            cfg = self.config
            hidden = self.decoder(tokens, frames, rope_for(cfg.decoder_dim, cfg.decoder_heads))
            head_rope = rope_for(cfg.point_decoder_dim, cfg.point_decoder_heads)
            cam_rope = rope_for(cfg.camera_decoder_dim, cfg.camera_decoder_heads)
            point_tokens = self.point_decoder(hidden, head_rope)
            conf_tokens = self.conf_decoder(hidden, head_rope)
            camera_tokens = self.camera_decoder(hidden, cam_rope)

        if return_debug:
            debug.update(encoder_patch_tokens=tokens, point_decoder_out=point_tokens,
                         conf_decoder_out=conf_tokens, camera_decoder_out=camera_tokens)

        start = self.decoder.num_registers
        # the heads run in float32 even when the trunk ran under autocast
        amp_off = torch.autocast(device_type="cuda", enabled=False) if amp_dtype is not None else contextlib.nullcontext()
        with amp_off:
            raw = self.point_head(_as_weights(point_tokens[:, start:], self.point_head.proj), grid)
            local_points = local_points_from_raw(raw.reshape(batch, frames, height, width, 3))  # float32 in every mode
            conf = self.conf_head(_as_weights(conf_tokens[:, start:], self.conf_head.proj), grid)
            conf = conf.float().reshape(batch, frames, height, width, 1)
            camera_poses = self.camera_head(_as_weights(camera_tokens[:, start:], self.camera_head.fc1))
            camera_poses = camera_poses.reshape(batch, frames, 4, 4)
            points = transform_points(camera_poses, local_points)

        return SceneOutput(points=points, local_points=local_points, conf=conf, camera_poses=camera_poses,
                           hidden=hidden, positions=positions, num_registers=start, patch_grid=grid, debug=debug)
