"""AlignNet: metric scale of the scene and per-frame SMPL root translation from scene and human tokens.

Queries are [a learned scale token, the adapted human token of every frame]; keys/values are every frame's
adapted scene tokens (the scene decoder's register tokens and patch tokens, each through its own adapter).
Two post-norm decoder layers (self-attention, cross-attention, ReLU FFN) each wrapped in an extra residual.
Time enters only through a 1D RoPE: frame i sits at round(i * 6 / fps); the scale token's query is not rotated.
Positions beyond the trained 120 use a linearly interpolated 120-row cos/sin table (the official behaviour:
with max position P > 119 the table is resampled to P + 1 rows, so positions are squeezed, not extrapolated).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AlignNetConfig:
    scene_dim: int = 2048  # scene decoder hidden (2 x 1024)
    human_dim: int = 1024
    hidden_dim: int = 512
    num_heads: int = 8
    ff_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.1
    num_register_tokens: int = 5
    rope_base: float = 100.0
    rope_max_positions: int = 120
    base_fps: float = 6.0

    def __post_init__(self) -> None:
        if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 2:
            raise ValueError(f"hidden_dim {self.hidden_dim} must split into {self.num_heads} even-sized heads")

    @classmethod
    def paper(cls) -> AlignNetConfig:
        return cls()

    @classmethod
    def tiny(cls, **overrides: object) -> AlignNetConfig:
        """The golden's tiny sizes (scene 96, hidden 32, 2 heads, ffn 48)."""
        return replace(cls(scene_dim=96, hidden_dim=32, num_heads=2, ff_dim=48), **overrides)  # type: ignore[arg-type]


@dataclass
class AlignOutput:
    scale: Tensor  # (B, 1) metric scale of the normalised scene
    trans_cam: Tensor  # (B, N, 3) SMPL root translation per frame, camera frame (before the metric scale)


def frame_positions(num_frames: int, fps: float, base_fps: float = 6.0, device: torch.device | None = None) -> Tensor:
    """RoPE time index of each frame: round(i * base_fps / fps), computed in float32 like the official code."""
    return (torch.arange(num_frames, dtype=torch.float32, device=device) * (base_fps / fps)).round().long()


def rope_table(head_dim: int, num_positions: int, base: float, max_positions: int,
               dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin tables (num_positions, head_dim) for rotate-half RoPE over the full head dim."""
    if num_positions > max_positions:
        cos, sin = rope_table(head_dim, max_positions, base, max_positions, dtype, device)
        resample = lambda t: F.interpolate(t.T[None], size=num_positions, mode="linear", align_corners=True)[0].T
        return resample(cos), resample(sin)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(num_positions, device=device, dtype=torch.float32), inv_freq).to(dtype)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, positions: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, heads, L, D), positions (L,) -> x rotated by its time position."""
    c, s = cos[positions], sin[positions]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * c + rotated * s


class _Adapter(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)


class _FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.relu(self.fc1(x)))))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, query: Tensor, context: Tensor, q_pos: Tensor, k_pos: Tensor,
                cos: Tensor, sin: Tensor) -> Tensor:
        """query[:, 0] is the scale token (not rotated); query[:, 1:] sit at q_pos; context tokens at k_pos."""
        q, k, v = self._split(self.q(query)), self._split(self.k(context)), self._split(self.v(context))
        q = torch.cat([q[:, :, :1], apply_rope(q[:, :, 1:], q_pos, cos, sin)], dim=2)
        k = apply_rope(k, k_pos, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           scale=q.shape[-1] ** -0.5)
        b, _, n, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class _AlignLayer(nn.Module):
    """Post-norm decoder layer: self-attention over the queries, cross-attention to the scene tokens, FFN."""

    def __init__(self, cfg: AlignNetConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.self_attn = _Attention(d, cfg.num_heads, cfg.dropout)
        self.cross_attn = _Attention(d, cfg.num_heads, cfg.dropout)
        self.ffn = _FFN(d, cfg.ff_dim, cfg.dropout)
        self.self_norm = nn.LayerNorm(d)
        self.cross_norm = nn.LayerNorm(d)
        self.ffn_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, scene: Tensor, frame_pos: Tensor, scene_pos: Tensor,
                cos: Tensor, sin: Tensor) -> Tensor:
        # in self-attention the scale token is a key at position 0 (the identity rotation)
        query_pos = torch.cat([frame_pos.new_zeros(1), frame_pos])
        x = self.self_norm(x + self.drop(self.self_attn(x, x, frame_pos, query_pos, cos, sin)))
        x = self.cross_norm(x + self.drop(self.cross_attn(x, scene, frame_pos, scene_pos, cos, sin)))
        return self.ffn_norm(x + self.ffn(x))


class AlignNet(nn.Module):
    def __init__(self, cfg: AlignNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.scale_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.human_adapter = _Adapter(cfg.human_dim, d, cfg.dropout)
        self.patch_adapter = _Adapter(cfg.scene_dim, d, cfg.dropout)
        self.register_adapter = _Adapter(cfg.scene_dim, d, cfg.dropout)
        self.layers = nn.ModuleList(_AlignLayer(cfg) for _ in range(cfg.num_layers))
        self.scale_head = nn.Linear(d, 1)
        self.translation_head = nn.Linear(d, 3)

    def forward(self, scene_tokens: Tensor, human_tokens: Tensor, fps: float = 6.0) -> AlignOutput:
        """scene_tokens (B, N, T, scene_dim): per frame the register tokens first, then the patch tokens;
        human_tokens (B, N, human_dim) or (B, N, 1, human_dim); fps: the clip's frame rate."""
        b, n, t, _ = scene_tokens.shape
        if human_tokens.dim() == 4:
            human_tokens = human_tokens.squeeze(2)
        if human_tokens.shape[:2] != (b, n):
            raise ValueError(f"human_tokens {tuple(human_tokens.shape)} do not match "
                             f"scene_tokens {tuple(scene_tokens.shape)}")
        r = self.cfg.num_register_tokens
        scene = torch.cat([self.register_adapter(scene_tokens[:, :, :r]),
                           self.patch_adapter(scene_tokens[:, :, r:])], dim=2).reshape(b, n * t, -1)
        x = torch.cat([self.scale_token.expand(b, -1, -1), self.human_adapter(human_tokens)], dim=1)

        frame_pos = frame_positions(n, fps, self.cfg.base_fps, device=x.device)
        scene_pos = frame_pos.repeat_interleave(t)
        head_dim = self.cfg.hidden_dim // self.cfg.num_heads
        cos, sin = rope_table(head_dim, int(frame_pos.max()) + 1, self.cfg.rope_base, self.cfg.rope_max_positions,
                              dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x = layer(x, scene, frame_pos, scene_pos, cos, sin) + x

        scale = F.softplus(self.scale_head(x[:, 0]))
        raw = self.translation_head(x[:, 1:])
        z = raw[..., 2:3].exp()
        return AlignOutput(scale=scale, trans_cam=torch.cat([raw[..., :2] * z, z], dim=-1))
