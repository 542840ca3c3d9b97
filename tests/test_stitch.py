"""Window stitching: overlapping windows of a synthetic scene with known similarities between their frames.

Error bounds stated and checked here (scene about 5 m deep, 3 shared frames of 24x32 pixels):
* exact point maps: the similarity and every stitched point come back to 1e-9;
* 1 cm Gaussian noise on every point plus 10% of the shared pixels corrupted by 0.5-2 m: rotation within 0.05
  degrees, scale within 0.1%, translation within 1 cm, stitched camera centres within 1 cm of the truth
  (measured: 0.02 degrees, 0.03%, 2.3 mm, 2.5 mm);
* one metric scale: the median of the windows' m_k / s_k, exact when the windows' metric scales agree.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from unish_model.metrics.align import umeyama as plain_umeyama
from unish_model.stitch import (
    Similarity, Stitcher, WindowGeometry, body_to_world, compose, inverse, robust_umeyama, similarity_from_matrix,
    similarity_matrix, stitch_windows, transform_poses, umeyama,
)

H, W = 24, 32


def _scene(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth metric camera poses (F,4,4) and world point maps (F,H,W,3) of a camera walking past a
    bumpy wall 3-7 m away."""
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    for i in range(frames):
        c2w[i, :3, :3] = Rotation.from_euler("yx", [0.04 * i, 0.01 * np.sin(i)]).as_matrix()
        c2w[i, :3, 3] = [0.15 * i, 0.02 * np.cos(i), 0.05 * i]
    u, v = np.meshgrid((np.arange(W) - W / 2) / W, (np.arange(H) - H / 2) / W)
    rays = np.stack([u, v, np.ones_like(u)], -1)
    points = np.zeros((frames, H, W, 3))
    bumps = rng.uniform(-0.5, 0.5, size=(H, W))
    for i in range(frames):
        depth = 5.0 + 2.0 * u + bumps
        local = rays * depth[..., None]
        points[i] = local @ c2w[i, :3, :3].T + c2w[i, :3, 3]
    return c2w, points


def _window(truth_c2w: np.ndarray, truth_points: np.ndarray, frames: np.ndarray, to_window: Similarity,
            conf: np.ndarray | None = None) -> WindowGeometry:
    """The truth seen by a window whose frame is `to_window`(metric world): its unit is 1/scale metres."""
    return WindowGeometry(
        frames=frames, c2w=transform_poses(to_window, truth_c2w[frames]), points=to_window.apply(truth_points[frames]),
        conf=np.ones((len(frames), H, W)) if conf is None else conf, metric_scale=1.0 / to_window.scale)


def _sim(scale: float, euler: tuple[float, float, float], t: tuple[float, float, float]) -> Similarity:
    return Similarity(scale, Rotation.from_euler("xyz", euler).as_matrix(), np.asarray(t, dtype=np.float64))


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(Rotation.from_matrix(a @ b.T).magnitude()))


def test_umeyama_recovers_similarity_and_matches_plain() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    truth = _sim(2.5, (0.3, -1.1, 2.0), (1.0, -2.0, 0.5))
    y = truth.apply(x)
    got = umeyama(x, y)
    assert got.scale == pytest.approx(2.5, abs=1e-12)
    np.testing.assert_allclose(got.rotation, truth.rotation, atol=1e-12)
    np.testing.assert_allclose(got.translation, truth.translation, atol=1e-12)
    noisy = y + rng.normal(0, 0.1, size=y.shape)
    a, b = umeyama(x, noisy), plain_umeyama(x, noisy)  # uniform weights = the benchmarks' unweighted fit
    assert a.scale == pytest.approx(b.scale, abs=1e-12)
    np.testing.assert_allclose(a.rotation, b.rotation, atol=1e-12)
    # weights: zero-weight pairs have no say
    w = np.ones(200)
    w[:50] = 0
    junk = y.copy()
    junk[:50] += 100
    assert umeyama(x, junk, w).scale == pytest.approx(2.5, abs=1e-12)
    # a mirrored target still yields a proper rotation
    assert np.linalg.det(umeyama(x, x * [1, 1, -1]).rotation) == pytest.approx(1.0)


def test_similarity_algebra() -> None:
    a, b = _sim(2.0, (0.1, 0.2, 0.3), (1, 2, 3)), _sim(0.5, (-0.4, 0.0, 1.0), (0, -1, 4))
    x = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(compose(a, b).apply(x), a.apply(b.apply(x)), atol=1e-12)
    np.testing.assert_allclose(inverse(a).apply(a.apply(x)), x, atol=1e-12)
    np.testing.assert_allclose(similarity_matrix(compose(a, b)), similarity_matrix(a) @ similarity_matrix(b),
                               atol=1e-12)
    back = similarity_from_matrix(similarity_matrix(a))
    assert back.scale == pytest.approx(2.0) and np.allclose(back.rotation, a.rotation)
    # a moved camera still sees the moved points at the same pixel: R^T (p - c) scales by s
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("y", 0.3).as_matrix()
    c2w[:3, 3] = [1, 0, 2]
    p = np.array([0.5, 0.2, 6.0])
    local = c2w[:3, :3].T @ (p - c2w[:3, 3])
    moved = transform_poses(a, c2w)
    np.testing.assert_allclose(moved[:3, :3].T @ (a.apply(p) - moved[:3, 3]), a.scale * local, atol=1e-12)


def test_two_windows_exact() -> None:
    c2w, points = _scene(17)
    to_a = _sim(0.5, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))  # window A's unit: 2 m
    to_b = _sim(1.7, (0.4, -0.9, 0.2), (3.0, -1.0, 0.5))  # window B: another frame and unit
    wa = _window(c2w, points, np.arange(0, 10), to_a)
    wb = _window(c2w, points, np.arange(7, 17), to_b)
    (ra, rb), metres = stitch_windows([wa, wb])
    expected = compose(to_a, inverse(to_b))  # B's frame -> A's frame
    assert rb.overlap == 3 and ra.overlap == 0
    assert rb.to_global.scale == pytest.approx(expected.scale, rel=1e-10)
    np.testing.assert_allclose(rb.to_global.rotation, expected.rotation, atol=1e-10)
    np.testing.assert_allclose(rb.to_global.translation, expected.translation, atol=1e-9)
    assert metres == pytest.approx(2.0, rel=1e-10)  # one global unit = 2 m (window A's unit)
    # every frame of B, stitched and made metric, lands on the truth in A's frame scaled to metres
    stitched = metres * rb.to_global.apply(wb.points)
    np.testing.assert_allclose(stitched, metres * to_a.apply(points[7:17]), atol=1e-8)


def test_two_windows_noise_and_outliers_within_bound() -> None:
    rng = np.random.default_rng(7)
    c2w, points = _scene(17, seed=3)
    to_a = Similarity(1.0, np.eye(3), np.zeros(3))
    to_b = _sim(0.6, (0.2, 0.7, -0.3), (-2.0, 0.5, 1.0))
    wa = _window(c2w, points, np.arange(0, 10), to_a)
    wb = _window(c2w, points, np.arange(7, 17), to_b)
    # 1 cm noise everywhere (in metres, so 0.6 cm in B's unit); 10% of B's pixels wildly wrong
    wa.points = wa.points + rng.normal(0, 0.01, size=wa.points.shape)
    wb.points = wb.points + rng.normal(0, 0.01 * to_b.scale, size=wb.points.shape)
    bad = rng.random(wb.points.shape[:3]) < 0.1
    wb.points[bad] += to_b.scale * rng.uniform(0.5, 2.0, size=(bad.sum(), 1)) * rng.normal(size=(bad.sum(), 3))
    (_, rb), metres = stitch_windows([wa, wb])
    expected = inverse(to_b)
    assert _angle_deg(rb.to_global.rotation, expected.rotation) < 0.05
    assert abs(rb.to_global.scale / expected.scale - 1) < 1e-3
    assert np.linalg.norm(rb.to_global.translation - expected.translation) < 0.01
    assert 0.8 < rb.inlier_share < 0.95  # the corrupted tenth is trimmed
    centres = transform_poses(rb.to_global, wb.c2w)[:, :3, 3] * metres
    assert np.linalg.norm(centres - c2w[7:17, :3, 3], axis=1).max() < 0.01
    # without trimming the outliers the fit is visibly worse: the robust step matters
    src, dst = wb.points[:3].reshape(-1, 3), wa.points[7:10].reshape(-1, 3)
    plain = umeyama(src, dst)
    robust, _ = robust_umeyama(src, dst)
    assert abs(plain.scale / expected.scale - 1) > 5 * abs(robust.scale / expected.scale - 1)


def test_three_windows_compose_and_one_metric_scale() -> None:
    c2w, points = _scene(25, seed=5)
    sims = [_sim(0.5, (0, 0, 0), (0, 0, 0)), _sim(2.0, (0.1, 0.5, 0.0), (1, 2, 3)),
            _sim(1.1, (-0.3, 1.2, 0.4), (-4, 0, 1))]
    ranges = [np.arange(0, 10), np.arange(8, 18), np.arange(15, 25)]
    windows = [_window(c2w, points, r, s) for r, s in zip(ranges, sims)]
    windows[2].metric_scale *= 1.1  # the last window's AlignNet scale is off by 10%
    results, metres = stitch_windows(windows)
    for r, s in zip(results[1:], sims[1:]):
        expected = compose(sims[0], inverse(s))
        np.testing.assert_allclose(similarity_matrix(r.to_global), similarity_matrix(expected), atol=1e-9)
    # estimates 2, 2, 2.2 m per unit: the median ignores the outlying window
    assert [r.metres_per_unit for r in results] == pytest.approx([2.0, 2.0, 2.2])
    assert metres == pytest.approx(2.0)


def test_streaming_keeps_only_the_previous_tail() -> None:
    c2w, points = _scene(25, seed=5)
    sims = [_sim(1.0, (0, 0, 0), (0, 0, 0)), _sim(2.0, (0.1, 0.5, 0.0), (1, 2, 3)), _sim(0.7, (0.3, 0, 0), (0, 1, 0))]
    stitcher = Stitcher(keep_last=3)
    for r, s in zip((np.arange(0, 10), np.arange(7, 17), np.arange(14, 24)), sims):
        result = stitcher.add(_window(c2w, points, r, s))
        assert stitcher._prev is not None and list(stitcher._prev.frames) == list(r[-3:])
        np.testing.assert_allclose(similarity_matrix(result.to_global), similarity_matrix(inverse(s)), atol=1e-9)
    assert stitcher.metric_scale() == pytest.approx(1.0)


def test_windows_without_overlap_chain_on_cameras() -> None:
    c2w, points = _scene(20, seed=2)
    to_b = _sim(1.5, (0.1, 0.2, 0.3), (1, 1, 1))
    wa = _window(c2w, points, np.arange(0, 10), Similarity(1.0, np.eye(3), np.zeros(3)))
    wb = _window(c2w, points, np.arange(10, 20), to_b)
    (_, rb), metres = stitch_windows([wa, wb])
    assert rb.overlap == 0 and metres == pytest.approx(1.0)
    # the chain puts B's first camera on A's last one (an approximation: the camera moved one frame)
    first = transform_poses(rb.to_global, wb.c2w[0])
    np.testing.assert_allclose(first, c2w[9], atol=1e-9)
    assert rb.to_global.scale == pytest.approx(1 / 1.5)


def test_body_to_world_matches_moved_vertices(tmp_path) -> None:
    from unish_model.body import BodyModel, write_synthetic_body_model
    from unish_model.geometry import axis_angle_to_matrix

    model = BodyModel.from_file(write_synthetic_body_model(tmp_path / "b.npz", ring_size=6, rings=60),
                                dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    orient_cam = axis_angle_to_matrix(torch.randn(3, generator=g, dtype=torch.float64))
    body = torch.randn(69, generator=g, dtype=torch.float64) * 0.2
    betas = torch.randn(10, generator=g, dtype=torch.float64)
    transl_cam = torch.tensor([0.2, -0.1, 4.0], dtype=torch.float64)
    cam = model(orient_cam, body, betas, transl_cam)
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("xyz", [0.3, -0.7, 1.1]).as_matrix()
    c2w[:3, 3] = [1.0, 2.0, -0.5]
    orient_w, transl_w = body_to_world(c2w, orient_cam.numpy(), transl_cam.numpy(), cam.rest_joints[0].numpy())
    world = model(torch.from_numpy(orient_w), body, betas, torch.from_numpy(transl_w))
    np.testing.assert_allclose(world.vertices.numpy(), cam.vertices.numpy() @ c2w[:3, :3].T + c2w[:3, 3], atol=1e-10)
