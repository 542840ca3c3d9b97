"""World motion metrics with known answers (GVHMR / WHAM definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from unish_model.metrics.align import umeyama
from unish_model.metrics.motion import (
    aggregate_motion,
    foot_sliding,
    global_motion_metrics,
    jitter,
    joints_from_vertices,
    rte,
    w_mpjpe,
    wa_mpjpe,
)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def _walk(frames: int = 250, joints: int = 24, seed: int = 0) -> np.ndarray:
    """A body (random joint offsets) walking forward with some wobble, metres."""
    rng = np.random.default_rng(seed)
    body = rng.normal(scale=0.3, size=(joints, 3))
    time = np.arange(frames) / 30.0
    root = np.stack([1.2 * time, 0.05 * np.sin(3 * time), 0.3 * np.sin(0.7 * time)], axis=-1)
    wiggle = 0.02 * np.sin(time[:, None, None] * 5 + np.arange(joints)[None, :, None])
    return root[:, None] + body[None] + wiggle


def test_umeyama_recovers_a_similarity_and_a_rigid_transform() -> None:
    src = np.random.default_rng(1).normal(size=(50, 3))
    rot = _rotation(np.array([1.0, 2.0, 0.5]), 0.9)
    dst = 1.7 * src @ rot.T + np.array([0.3, -2.0, 5.0])
    sim = umeyama(src, dst)
    assert sim.scale == pytest.approx(1.7)
    np.testing.assert_allclose(sim.rotation, rot, atol=1e-10)
    np.testing.assert_allclose(sim.apply(src), dst, atol=1e-10)
    rigid = umeyama(src, src @ rot.T + 1.0, with_scale=False)
    assert rigid.scale == 1.0 and np.linalg.det(rigid.rotation) == pytest.approx(1.0)
    # A mirror image is not reachable by a rotation: det stays +1.
    mirrored = umeyama(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(mirrored.rotation) == pytest.approx(1.0)


def test_perfect_prediction_is_zero_everywhere() -> None:
    gt = _walk()
    m = global_motion_metrics(gt.copy(), gt)
    for key in ("wa_mpjpe", "w_mpjpe", "rte"):
        assert np.abs(m[key]).max() < 1e-6, key
    assert len(m["wa_mpjpe"]) == len(m["w_mpjpe"]) == len(m["rte"]) == 250
    assert len(m["jitter"]) == 247


def test_similarity_of_gt_gives_zero_wa_and_w_but_rte_sees_scale() -> None:
    gt = _walk()
    pred = 0.6 * gt @ _rotation(np.array([0.0, 1.0, 0.0]), 1.1).T + np.array([3.0, 0.0, -1.0])
    assert wa_mpjpe(pred, gt).max() < 1e-6
    assert w_mpjpe(pred, gt).max() < 1e-6
    assert rte(pred[:, 0], gt[:, 0]).mean() > 1.0  # rigid alignment cannot undo the scale
    rigid = gt @ _rotation(np.array([0.0, 1.0, 0.0]), 1.1).T + 2.0
    assert rte(rigid[:, 0], gt[:, 0]).max() < 1e-9


def test_chunks_of_100_get_their_own_similarity() -> None:
    gt = _walk(frames=250)
    pred = gt.copy()
    # A different similarity per chunk [0,100), [100,200), [200,250): the short last chunk counts.
    for k, start in enumerate(range(0, 250, 100)):
        rot = _rotation(np.array([0.2, 1.0, 0.1]), 0.4 * (k + 1))
        pred[start : start + 100] = (1 + 0.2 * k) * gt[start : start + 100] @ rot.T + k
    assert wa_mpjpe(pred, gt).max() < 1e-6
    assert w_mpjpe(pred, gt).max() < 1e-6
    # Fitting one similarity over the whole sequence would not be exact.
    assert wa_mpjpe(pred, gt, chunk=250).mean() > 100.0


def test_drift_inside_a_chunk_shows_in_w_mpjpe_by_hand() -> None:
    gt = _walk(frames=150)
    velocity = np.array([0.003, 0.0, 0.004])  # 5 mm per frame
    local = np.concatenate([np.arange(100), np.arange(50)])  # frame index inside its chunk
    drift = np.maximum(local - 1, 0)[:, None, None] * velocity
    pred = gt + drift  # the first two frames of each chunk are exact, then it drifts
    expected = np.maximum(local - 1, 0) * 5.0  # mm
    np.testing.assert_allclose(w_mpjpe(pred, gt), expected, atol=1e-6)
    wa = wa_mpjpe(pred, gt)
    assert 0 < wa.mean() < expected.mean()


def test_rte_of_a_constant_drift_by_hand() -> None:
    frames = 11
    k = np.arange(frames, dtype=np.float64)
    gt_root = np.stack([1.5 * k, np.zeros(frames), np.full(frames, 2.0)], axis=-1)  # 1.5 m/frame
    pred_root = gt_root + np.stack([0.03 * k, np.zeros(frames), np.zeros(frames)], axis=-1)
    # Rigid alignment centres the two lines; the error left is 0.03 |k - 5|; the GT path is 15 m.
    expected = 0.03 * np.abs(k - 5) / 15.0 * 100
    np.testing.assert_allclose(rte(pred_root, gt_root), expected, atol=1e-9)
    assert rte(pred_root, gt_root).mean() == pytest.approx(0.03 * 30 / 11 / 15 * 100)


def test_jitter_of_a_cubic_and_of_constant_velocity() -> None:
    t = np.arange(40) / 30.0
    cubic = np.zeros((40, 2, 3))
    cubic[:, :, 1] = 0.5 * t[:, None] ** 3  # third derivative 3 m/s^3 everywhere
    np.testing.assert_allclose(jitter(cubic, fps=30), 0.3, rtol=1e-6)  # unit: 10 m/s^3
    linear = np.zeros((40, 2, 3))
    linear[:, :, 0] = 2.0 * t[:, None]
    assert np.abs(jitter(linear, fps=30)).max() < 1e-9


def test_foot_sliding_counts_gt_contact_frames_only() -> None:
    frames, feet = 6, [3216, 3387, 6617, 6787]
    gt = np.zeros((frames, 6890, 3))
    pred = np.zeros((frames, 6890, 3))
    # GT: the first foot vertex lifts off between frames 2 and 3 (5 cm), the others stay planted.
    gt[3:, feet[0], 1] = 0.05
    # Prediction: every foot vertex slides 4 mm per frame.
    pred[:, feet, 0] = 0.004 * np.arange(frames)[:, None]
    fs = foot_sliding(pred, gt)
    assert fs.shape == (5 * 4 - 1,)  # 5 frame pairs x 4 vertices, minus the lift-off
    np.testing.assert_allclose(fs, 4.0)


def test_dataset_is_the_mean_over_all_frames() -> None:
    short = {"wa_mpjpe": np.array([10.0, 20.0])}
    long = {"wa_mpjpe": np.full(8, 100.0)}
    assert aggregate_motion([short, long])["wa_mpjpe"] == pytest.approx((30 + 800) / 10)


def test_mask_drops_frames_before_anything_else() -> None:
    gt = _walk(frames=120)
    pred = gt.copy()
    pred[50] += 10.0  # a wild frame...
    mask = np.ones(120, dtype=bool)
    mask[50] = False  # ...that the mask removes
    m = global_motion_metrics(pred, gt, mask=mask)
    assert len(m["wa_mpjpe"]) == 119
    assert m["wa_mpjpe"].max() < 1e-6 and m["w_mpjpe"].max() < 1e-6


def test_foot_sliding_needs_both_vertex_sets() -> None:
    gt = _walk(frames=10)
    with pytest.raises(ValueError, match="vertices"):
        global_motion_metrics(gt, gt, pred_vertices=np.zeros((10, 6890, 3)))


def test_joints_from_vertices_applies_the_regressor() -> None:
    verts = np.random.default_rng(2).normal(size=(4, 6, 3))
    reg = np.zeros((2, 6))
    reg[0, 3] = 1.0
    reg[1, [1, 2]] = 0.5
    joints = joints_from_vertices(verts, reg)
    np.testing.assert_allclose(joints[:, 0], verts[:, 3])
    np.testing.assert_allclose(joints[:, 1], (verts[:, 1] + verts[:, 2]) / 2)
    with pytest.raises(ValueError, match="regressor"):
        joints_from_vertices(verts, np.zeros((2, 5)))
