"""One-way Chamfer (unish_model.losses.chamfer): brute force, order invariance, masks, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unish_model.losses.chamfer import nearest_target, one_way_chamfer, pack_masked

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two shared cores: no OpenMP spinning

F64 = torch.float64


def _brute(source: np.ndarray, target: np.ndarray, smask: np.ndarray, tmask: np.ndarray) -> float:
    """The definition, one source at a time: sum over masked sources of the smallest squared distance."""
    total = 0.0
    for i in range(source.shape[0]):
        if not smask[i]:
            continue
        best = np.inf
        for j in range(target.shape[0]):
            if tmask[j]:
                best = min(best, float(((source[i] - target[j]) ** 2).sum()))
        if np.isfinite(best):
            total += best
    return total


def _clouds(g: torch.Generator, lead: tuple[int, ...], n_src: int, n_tgt: int, dtype: torch.dtype = F64
            ) -> tuple[torch.Tensor, ...]:
    offset = torch.tensor([0.0, 0.0, 3.0], dtype=dtype)  # metric, in front of a camera: not centred at 0
    src = 0.4 * torch.randn(*lead, n_src, 3, generator=g, dtype=dtype) + offset
    tgt = 0.4 * torch.randn(*lead, n_tgt, 3, generator=g, dtype=dtype) + offset
    smask = torch.rand(*lead, n_src, generator=g) > 0.3
    tmask = torch.rand(*lead, n_tgt, generator=g) > 0.4
    return src, tgt, smask, tmask


def test_equals_brute_force_loop_batched_and_chunked() -> None:
    g = torch.Generator().manual_seed(0)
    src, tgt, smask, tmask = _clouds(g, (2, 3), 40, 55)
    tmask[1, 2] = False  # an item without targets: 0
    smask[0, 1] = False  # an item without sources: 0
    for dtype, chunk, rel in ((F64, 7, 1e-12), (F64, 2 ** 24, 1e-12), (torch.float32, 64, 1e-5)):
        # float32: each recomputed squared distance carries ~1e-7 relative rounding (measured 1.6e-7 on the sums)
        got = one_way_chamfer(src.to(dtype), tgt.to(dtype), smask, tmask, chunk_elements=chunk)
        assert got.shape == (2, 3) and got.dtype == dtype
        for b in range(2):
            for t in range(3):
                want = _brute(src[b, t].numpy(), tgt[b, t].numpy(), smask[b, t].numpy(), tmask[b, t].numpy())
                assert abs(float(got[b, t]) - want) <= rel * (1 + want), (b, t, float(got[b, t]), want)
    assert float(one_way_chamfer(src, tgt, smask, tmask)[1, 2]) == 0.0
    assert float(one_way_chamfer(src, tgt, smask, tmask)[0, 1]) == 0.0


def test_invariant_to_point_order_and_a_sum_over_sources() -> None:
    g = torch.Generator().manual_seed(1)
    src, tgt, smask, tmask = _clouds(g, (3,), 30, 50)
    ref = one_way_chamfer(src, tgt, smask, tmask)
    perm_t, perm_s = torch.randperm(50, generator=g), torch.randperm(30, generator=g)
    torch.testing.assert_close(one_way_chamfer(src, tgt[:, perm_t], smask, tmask[:, perm_t]), ref)
    torch.testing.assert_close(one_way_chamfer(src[:, perm_s], tgt, smask[:, perm_s], tmask), ref)
    # a sum, not a mean: the same sources twice cost twice as much
    doubled = one_way_chamfer(torch.cat([src, src], 1), tgt, torch.cat([smask, smask], 1), tmask)
    torch.testing.assert_close(doubled, 2 * ref)
    # zero when every source is one of the targets; masked-out targets are ignored even when they are closer
    assert float(one_way_chamfer(src, src, smask, smask).abs().max()) == 0.0
    far = torch.cat([src + 5.0, src], 1)
    mask = torch.cat([torch.ones_like(smask), torch.zeros_like(smask)], 1)
    assert bool((one_way_chamfer(src, far, smask, mask) > 1.0).all())


def test_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(2)
    src, tgt, smask, tmask = _clouds(g, (2,), 8, 12)
    src.requires_grad_(True)
    tgt.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, t: one_way_chamfer(s, t, smask, tmask), (src, tgt))
    loss = one_way_chamfer(src, tgt, smask, tmask).sum()
    loss.backward()
    idx = nearest_target(src.detach(), tgt.detach(), tmask)
    nearest = tgt.detach().gather(1, idx[..., None].expand(-1, -1, 3))
    want = 2 * (src.detach() - nearest) * smask[..., None]
    torch.testing.assert_close(src.grad, want)  # d/ds |s - p(s)|^2 = 2 (s - p(s))


def test_pack_masked_keeps_order_and_count() -> None:
    pts = torch.arange(12, dtype=F64).reshape(2, 2, 3).repeat(1, 3, 1)  # (2, 6, 3)
    mask = torch.tensor([[True, False, True, False, False, True], [False] * 6])
    packed, ok = pack_masked(pts, mask)
    assert packed.shape == (2, 3, 3) and ok.tolist() == [[True] * 3, [False] * 3]
    assert torch.equal(packed[0], pts[0, [0, 2, 5]])
