"""unish_model.runner: the window runner both `unish infer` and the evaluation use, on a fake predictor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from unish_model.body import BodyModel, write_synthetic_body_model
from unish_model.runner import Window, WindowPrediction, WindowRunner, smpl_to_world


class _Wall:
    """Every window sees the same static wall from an unmoving camera, in a unit of its own (window k: k + 1)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, window: Window) -> WindowPrediction:
        self.calls += 1
        t, h, w = window.images.shape[:3]
        v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        wall = np.stack([u, v, 3.0 + 0.3 * np.sin(3 * u) * v], axis=-1) * self.calls
        return WindowPrediction(np.broadcast_to(wall, (t, h, w, 3)).copy(), np.ones((t, h, w)),
                                np.tile(np.eye(4), (t, 1, 1)), metric_scale=float(self.calls))


def _window(start: int, length: int = 6) -> Window:
    return Window("seq", start + np.arange(length), np.zeros((length, 8, 10, 3), np.uint8), None, 30.0)


def test_runner_marks_new_frames_and_stitches_each_window_onto_the_first() -> None:
    runner = WindowRunner(_Wall())
    steps = [runner.run(_window(s)) for s in (0, 4, 8, 20)]  # 20: a gap (a window skipped at a cut)
    assert [s.index for s in steps] == [0, 1, 2, 3] and runner.starts == [0, 4, 8, 20]
    assert [int(s.new.sum()) for s in steps] == [6, 4, 4, 6]
    assert steps[1].new.tolist() == [False, False, True, True, True, True]  # frames 4, 5 came from window 0
    assert [s.stitched.overlap for s in steps] == [0, 2, 2, 0]  # the gap chains on the cameras
    for k, step in enumerate(steps[:3]):  # window k's unit is k + 1 times window 0's: the fit undoes it
        assert step.stitched.to_global.scale == pytest.approx(1.0 / (k + 1), rel=1e-9)
    # predictions are metric: window k says a world unit is k + 1 metres; the chained window keeps its
    # predecessor's 3; the sequence takes the median
    assert [r.metres_per_unit for r in runner.results] == pytest.approx([1.0, 2.0, 3.0, 3.0], rel=1e-9)
    assert runner.metric_scale() == pytest.approx(2.5, rel=1e-9)
    assert runner.own_scales == [1.0, 2.0, 3.0, 4.0]


def test_body_translation_takes_the_shift_out_of_z() -> None:
    trans = np.array([[0.1, 0.2, 3.0], [0.0, -0.1, 2.5]], np.float32)
    pred = WindowPrediction(np.zeros((2, 1, 1, 3)), np.ones((2, 1, 1)), np.tile(np.eye(4), (2, 1, 1)),
                            trans_cam=trans, shift=np.array([0.5, 0.25], np.float32))
    np.testing.assert_array_equal(pred.body_translation(), np.array([[0.1, 0.2, 2.5], [0.0, -0.1, 2.25]], np.float32))
    assert pred.trans_cam[0, 2] == np.float32(3.0)  # the official array is left as it is
    no_shift = WindowPrediction(pred.world_points, pred.conf, pred.c2w, trans_cam=trans)
    assert no_shift.body_translation() is trans


def test_smpl_to_world_moves_the_pelvis_with_the_camera(tmp_path) -> None:
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[:, :3, :3] = Rotation.random(3, random_state=0).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(3, 3))
    root_cam = np.tile(np.eye(3), (3, 1, 1))
    trans_cam = rng.normal(size=(3, 3))
    # without a body model: the official R t + t_c2w
    root, transl = smpl_to_world(c2w, root_cam, trans_cam, np.zeros((3, 10)))
    np.testing.assert_allclose(root, c2w[:, :3, :3], atol=1e-12)
    np.testing.assert_allclose(transl, np.einsum("fij,fj->fi", c2w[:, :3, :3], trans_cam) + c2w[:, :3, 3], atol=1e-12)
    # with one: the world pelvis is the camera-frame pelvis moved by c2w
    body = BodyModel.from_file(write_synthetic_body_model(tmp_path / "b.npz", ring_size=8, rings=60),
                               dtype=torch.float64)
    betas = rng.normal(size=(3, 10))
    root, transl = smpl_to_world(c2w, root_cam, trans_cam, betas, body)
    j0 = body.rest_joints(torch.from_numpy(betas))[:, 0].numpy()
    expected = np.einsum("fij,fj->fi", c2w[:, :3, :3], trans_cam + j0) + c2w[:, :3, 3]
    np.testing.assert_allclose(transl + j0, expected, atol=1e-12 * max(1.0, np.abs(expected).max()))
