"""Reusable transformer pieces: MLP, LayerScale, SDPA self-attention (optional qk-norm and RoPE), pre-norm block."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Mlp", "LayerScale", "SelfAttention", "TransformerBlock", "RopeFn"]

# Applied to q and k of shape (B, heads, T, head_dim); None = no positional rotation.
RopeFn = Callable[[Tensor], Tensor]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class SelfAttention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention`.

    `qk_norm` adds a LayerNorm over the head dimension of q and k (before RoPE); pi3 builds these with
    nn.LayerNorm's default eps 1e-5 even though its block norms use 1e-6.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 qk_norm_eps: float = 1e-5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: RopeFn | None = None) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            # LayerNorm runs in float32 under autocast; come back to v's dtype as the official code does
            q = self.q_norm(q).to(v.dtype)
            k = self.k_norm(k).to(v.dtype)
        if rope is not None:
            q = rope(q)
            k = rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out(out.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))). LayerScale when init given."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale: float | None = None,
                 qk_norm: bool = False, norm_eps: float = 1e-6, qk_norm_eps: float = 1e-5,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, qk_norm_eps=qk_norm_eps)
        self.attn_scale = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.mlp_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.mlp_scale = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

    def forward(self, x: Tensor, rope: RopeFn | None = None) -> Tensor:
        x = x + self.attn_scale(self.attn(self.attn_norm(x), rope))
        return x + self.mlp_scale(self.mlp(self.mlp_norm(x)))
