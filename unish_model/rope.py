"""Rotary position embeddings (non-interleaved, `rotate_half` style).

2D RoPE as in pi3's decoder: the head dimension is split in two halves, the first rotated by the token's
y position and the second by its x position; each half is a 1D RoPE whose cos/sin tables are
`cat(freqs, freqs)` with `freqs = pos * base ** (-arange(0, d, 2) / d)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["rope_inv_freq", "rope_cos_sin", "rotate_half", "apply_rope", "Rope2D", "apply_rope_1d"]


def rope_inv_freq(dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """Inverse frequencies (dim/2,) float32, computed with the same float32 ops as pi3's RoPE2D."""
    if dim % 2:
        raise ValueError(f"RoPE dimension must be even, got {dim}")
    exponents = torch.arange(0, dim, 2, device=device).float() / dim
    return 1.0 / (base ** exponents)


def rope_cos_sin(positions: Tensor, dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables (..., dim) for integer-valued `positions` (...).

    The angles are cast to `dtype` BEFORE cos/sin, as pi3 does: under bf16 autocast this rounding is part
    of the official behaviour (in float32 it is a no-op).
    """
    inv_freq = rope_inv_freq(dim, base, positions.device)
    freqs = (positions.to(torch.float32)[..., None] * inv_freq).to(dtype)
    freqs = torch.cat((freqs, freqs), dim=-1)
    return freqs.cos(), freqs.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + rotate_half(x) * sin


@dataclass
class Rope2D:
    """2D RoPE prepared for one set of token positions; call it on q or k of shape (B, heads, T, head_dim).

    `positions`: (B, T, 2) integer (y, x). The tables are built once per forward and reused by every block;
    `regroup(b, t)` views them for attention over a different (batch, sequence) split of the same tokens
    (pi3's global blocks attend over all frames: (B*N, T) -> (B, N*T)).
    """

    cos_y: Tensor  # (B, 1, T, head_dim/2)
    sin_y: Tensor
    cos_x: Tensor
    sin_x: Tensor

    @classmethod
    def build(cls, positions: Tensor, head_dim: int, base: float, dtype: torch.dtype = torch.float32) -> "Rope2D":
        if positions.ndim != 3 or positions.shape[-1] != 2:
            raise ValueError(f"positions must be (B, T, 2), got {tuple(positions.shape)}")
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
        half = head_dim // 2
        cos_y, sin_y = rope_cos_sin(positions[..., 0], half, base, dtype)
        cos_x, sin_x = rope_cos_sin(positions[..., 1], half, base, dtype)
        return cls(cos_y[:, None], sin_y[:, None], cos_x[:, None], sin_x[:, None])

    def regroup(self, batch: int, tokens: int) -> "Rope2D":
        def view(t: Tensor) -> Tensor:
            return t.reshape(batch, 1, tokens, t.shape[-1])

        return Rope2D(view(self.cos_y), view(self.sin_y), view(self.cos_x), view(self.sin_x))

    def to(self, dtype: torch.dtype) -> "Rope2D":
        return Rope2D(self.cos_y.to(dtype), self.sin_y.to(dtype), self.cos_x.to(dtype), self.sin_x.to(dtype))

    def __call__(self, x: Tensor) -> Tensor:
        y_part, x_part = x.chunk(2, dim=-1)
        y_part = apply_rope(y_part, self.cos_y, self.sin_y)
        x_part = apply_rope(x_part, self.cos_x, self.sin_x)
        return torch.cat((y_part, x_part), dim=-1)


def apply_rope_1d(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """1D RoPE over a sequence axis (e.g. time): x (..., T, D), positions (T,) or broadcastable to x[..., 0]."""
    cos, sin = rope_cos_sin(positions, x.shape[-1], base, x.dtype)
    return apply_rope(x, cos, sin)
