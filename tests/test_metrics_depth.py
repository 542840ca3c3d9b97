"""Video depth metrics: known answers, and pi3's scale&shift procedure replayed independently."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from unish_model.metrics.depth import (
    ALIGN_MODES,
    AdamConfig,
    aggregate_depth,
    evaluate_sequence,
    resize_to,
)


def _pi3_scale_shift_reference(pred: np.ndarray, gt: np.ndarray, max_depth: float = 70.0):
    """pi3's procedure written out plainly in float64 numpy over every valid pixel, every step."""
    mask = (gt > 0) & (gt < max_depth)
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    lower_median = lambda x: np.sort(x)[(x.size - 1) // 2]  # torch.median semantics
    x = np.array([lower_median(g) / lower_median(p), 0.0])
    m, v = np.zeros(2), np.zeros(2)
    lr, b1, b2, eps = 1e-4, 0.9, 0.999, 1e-8
    prev = None
    for k in range(1, 1001):
        r = x[0] * p + x[1] - g
        loss = np.abs(r).sum()
        grad = np.array([np.sign(r) @ p, np.sign(r).sum()])
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        x = x - lr / (1 - b1**k) * m / (np.sqrt(v) / np.sqrt(1 - b2**k) + eps)
        if prev is not None and abs(prev - loss) < 1e-6:
            break
        prev = loss
    aligned = x[0] * p + x[1]
    abs_rel = np.mean(np.abs(aligned - g) / g)
    pc = np.maximum(aligned, 1e-5)
    delta = np.mean(np.maximum(pc / g, g / pc) < 1.25)
    return x[0], x[1], k, abs_rel, delta


def _scene(rng: np.random.Generator, frames: int = 3, h: int = 12, w: int = 16):
    gt = rng.uniform(0.8, 6.0, size=(frames, h, w))
    gt[:, 0, :3] = 0.0  # no measurement
    gt[:, 1, :3] = 75.0  # beyond max depth (leaves an even count, where medians differ)
    pred = ((gt * (1 + 0.08 * rng.standard_normal(gt.shape)) - 0.3) / 2.4).astype(np.float32)
    return pred, gt


def test_perfect_prediction_gives_zero_error_and_delta_one() -> None:
    gt = np.random.default_rng(0).uniform(0.5, 9.0, size=(2, 6, 7))
    gt[0, 0, 0] = 0.0
    for align in ALIGN_MODES:
        res = evaluate_sequence(gt.copy(), gt, align=align)
        assert res.metrics["abs_rel"] == pytest.approx(0.0, abs=1e-12), align
        assert res.metrics["delta_1.25"] == 1.0, align
        assert res.metrics["rmse"] == pytest.approx(0.0, abs=1e-12), align
        assert res.valid_pixels == gt.size - 1
    ss = evaluate_sequence(gt.copy(), gt, align="scale&shift")
    # Zero residual everywhere: zero (sub)gradient, so Adam stays put and stops on the repeated loss.
    assert (ss.scale, ss.shift, ss.steps_run) == (1.0, 0.0, 2)


@pytest.mark.parametrize("align", ["scale", "median"])
def test_pure_scale_distortion_is_undone(align: str) -> None:
    gt = np.random.default_rng(1).uniform(0.5, 9.0, size=(3, 5, 6))
    res = evaluate_sequence(gt / 3.7, gt, align=align)
    assert res.scale == pytest.approx(3.7, rel=1e-9)
    assert res.metrics["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    assert res.metrics["delta_1.25"] == 1.0
    # Without alignment the same prediction is badly off.
    assert evaluate_sequence(gt / 3.7, gt, align="metric").metrics["abs_rel"] > 0.7


def test_median_is_torch_lower_median() -> None:
    gt = np.array([[[1.0, 2.0, 4.0, 10.0]]])
    pred = np.array([[[1.0, 3.0, 5.0, 7.0]]])
    res = evaluate_sequence(pred, gt, align="median")
    assert res.scale == pytest.approx(2.0 / 3.0)  # lower medians 2 and 3, not 3 / 4


@pytest.mark.parametrize(
    "boxes", [AdamConfig().boxes, (), (0.5,), (3.0, 1.0, 0.25), (1e9,)], ids=str
)
def test_scale_shift_replays_pi3_adam(boxes: tuple[float, ...]) -> None:
    pred, gt = _scene(np.random.default_rng(2))
    s, t, k, abs_rel, delta = _pi3_scale_shift_reference(pred, gt)
    res = evaluate_sequence(pred, gt, align="scale&shift", adam=AdamConfig(boxes=boxes))
    assert res.steps_run == k == 1000
    assert res.scale == pytest.approx(s, rel=1e-10, abs=1e-12)
    assert res.shift == pytest.approx(t, rel=1e-10, abs=1e-12)
    assert res.metrics["abs_rel"] == pytest.approx(abs_rel, rel=1e-9)
    assert res.metrics["delta_1.25"] == pytest.approx(delta, abs=1e-12)


def test_scale_shift_is_the_procedure_not_the_l1_optimum() -> None:
    rng = np.random.default_rng(3)
    pred = rng.uniform(0.5, 3.0, size=(2, 8, 8))
    gt = 2.0 * pred + 1.5  # exactly affine: the L1 optimum (2, 1.5) has zero error
    s, t, _, abs_rel, _ = _pi3_scale_shift_reference(pred, gt)
    res = evaluate_sequence(pred, gt, align="scale&shift")
    assert (res.scale, res.shift) == pytest.approx((s, t), rel=1e-10)
    # 1000 Adam steps of lr 1e-4 move t only about 0.1 from 0: nowhere near 1.5.
    assert abs(res.shift) < 0.2 and abs(res.scale - 2.0) > 0.5
    assert res.metrics["abs_rel"] == pytest.approx(abs_rel, rel=1e-9)
    assert res.metrics["abs_rel"] > 0.02


@pytest.mark.parametrize("align", ALIGN_MODES)
def test_invalid_pixels_never_count(align: str) -> None:
    pred, gt = _scene(np.random.default_rng(4))
    gt[:, 2, :4] = -1.0  # the peers' readers mark holes as -1
    gt[:, 3, 0] = np.nan
    gt[:, 3, 1] = 70.0  # not < max_depth
    invalid = ~((gt > 0) & (gt < 70.0))
    a, b = pred.copy(), pred.copy()
    a[invalid] = 1e6
    b[invalid] = -3.0
    ra, rb = evaluate_sequence(a, gt, align=align), evaluate_sequence(b, gt, align=align)
    assert ra.valid_pixels == rb.valid_pixels == int((~invalid).sum())
    assert ra.metrics == rb.metrics
    assert (ra.scale, ra.shift) == (rb.scale, rb.shift)
    # Same numbers as evaluating the valid pixels alone, as a flat one-frame "video".
    flat = evaluate_sequence(pred[~invalid][None, None], gt[~invalid][None, None], align=align)
    assert flat.metrics == pytest.approx(ra.metrics, rel=1e-9, abs=1e-12)


def test_max_depth_is_a_parameter() -> None:
    gt = np.array([[[1.0, 2.0, 50.0]]])
    pred = np.array([[[1.0, 2.0, 10.0]]])
    assert evaluate_sequence(pred, gt, "metric", max_depth=70.0).valid_pixels == 3
    res = evaluate_sequence(pred, gt, "metric", max_depth=40.0)
    assert res.valid_pixels == 2 and res.metrics["abs_rel"] == 0.0


def test_delta_clamps_prediction_but_abs_rel_does_not() -> None:
    gt = np.array([[[1.0, 1.0]]])
    pred = np.array([[[-1.0, 1.1]]])
    m = evaluate_sequence(pred, gt, align="metric").metrics
    assert m["abs_rel"] == pytest.approx((2.0 + 0.1) / 2)
    assert m["delta_1.25"] == 0.5


def test_prediction_is_resized_bicubic_like_opencv() -> None:
    rng = np.random.default_rng(5)
    small = rng.uniform(1.0, 5.0, size=(2, 9, 13)).astype(np.float32)
    ours = resize_to(small, (24, 32)).numpy()
    ref = np.stack([cv2.resize(f, (32, 24), interpolation=cv2.INTER_CUBIC) for f in small])
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    gt = rng.uniform(1.0, 5.0, size=(2, 24, 32))
    r_small = evaluate_sequence(small, gt, align="median")
    r_ref = evaluate_sequence(ref, gt, align="median")
    assert r_small.metrics["abs_rel"] == pytest.approx(r_ref.metrics["abs_rel"], rel=1e-4)


def test_dataset_is_weighted_by_valid_pixels() -> None:
    gt1 = np.full((1, 2, 5), 2.0)  # 10 valid pixels, abs rel 0.5
    gt2 = np.full((1, 2, 5), 4.0)
    gt2[0, 0] = 0.0  # 5 valid pixels, abs rel 0.25
    r1 = evaluate_sequence(np.full_like(gt1, 3.0), gt1, align="metric")
    r2 = evaluate_sequence(np.full_like(gt2, 3.0), gt2, align="metric")
    agg = aggregate_depth([r1, r2])
    assert agg["abs_rel"] == pytest.approx((10 * 0.5 + 5 * 0.25) / 15)
    assert agg["valid_pixels"] == 15


def test_rejects_bad_inputs() -> None:
    gt = np.ones((2, 4, 4))
    with pytest.raises(ValueError, match="align"):
        evaluate_sequence(gt, gt, align="lstsq")
    with pytest.raises(ValueError, match="frames"):
        evaluate_sequence(np.ones((3, 4, 4)), gt)
    empty = evaluate_sequence(gt, np.zeros((2, 4, 4)))
    assert empty.valid_pixels == 0
    with pytest.raises(ValueError, match="valid"):
        aggregate_depth([empty])


def test_accepts_torch_tensors() -> None:
    pred, gt = _scene(np.random.default_rng(6))
    a = evaluate_sequence(torch.from_numpy(pred), torch.from_numpy(gt), align="median")
    b = evaluate_sequence(pred, gt, align="median")
    assert a.metrics == b.metrics
