"""RoPE helpers: rotations preserve norms and make attention scores depend on relative positions only."""
from __future__ import annotations

import torch

from unish_model.rope import Rope2D, apply_rope_1d, rope_inv_freq


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (q * k).sum(-1)


def test_rope2d_scores_depend_on_relative_position_only() -> None:
    g = torch.Generator().manual_seed(0)
    head_dim = 16
    q = torch.randn(1, 1, 1, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, head_dim, generator=g, dtype=torch.float64)

    def rotated_score(pq: tuple[int, int], pk: tuple[int, int]) -> float:
        positions = torch.tensor([[pq, pk]])
        rope = Rope2D.build(positions, head_dim, base=100.0, dtype=torch.float64)
        both = rope(torch.cat((q, k), dim=2))
        return float(_scores(both[:, :, 0], both[:, :, 1]))

    assert abs(rotated_score((3, 5), (1, 2)) - rotated_score((13, 9), (11, 6))) < 2e-6  # angles in float32, as pi3
    assert abs(rotated_score((3, 5), (1, 2)) - rotated_score((3, 5), (2, 1))) > 1e-4  # y and x are distinct
    assert abs(rotated_score((0, 0), (0, 0)) - float(_scores(q, k).squeeze())) < 1e-12  # position 0 = identity


def test_rope2d_preserves_norm_and_regroups_like_tokens() -> None:
    g = torch.Generator().manual_seed(1)
    frames, tokens, head_dim = 4, 7, 8
    positions = torch.randint(0, 9, (frames, tokens, 2), generator=g)
    rope = Rope2D.build(positions, head_dim, base=100.0)
    x = torch.randn(frames, 2, tokens, head_dim, generator=g)
    y = rope(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # (frames, T) -> (batch, frames/batch * T): same rotation per token
    grouped = rope.regroup(2, 2 * tokens)
    x_grouped = x.transpose(1, 2).reshape(2, 2 * tokens, 2, head_dim).transpose(1, 2)
    y_grouped = grouped(x_grouped).transpose(1, 2).reshape(frames, tokens, 2, head_dim).transpose(1, 2)
    torch.testing.assert_close(y_grouped, y)


def test_rope_1d_relative_and_frequencies() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, generator=g, dtype=torch.float64).expand(2, 4)
    k = torch.randn(4, generator=g, dtype=torch.float64).expand(2, 4)
    a = apply_rope_1d(q, torch.tensor([5, 17]), base=10000.0)
    b = apply_rope_1d(k, torch.tensor([2, 14]), base=10000.0)
    scores = _scores(a, b)
    assert abs(float(scores[0] - scores[1])) < 2e-6
    torch.testing.assert_close(rope_inv_freq(4, 100.0), torch.tensor([1.0, 0.1]))
