"""`unish eval bonn|emdb|rich` end to end on tiny fixtures in each dataset's layout.

The fixtures are written here (the Bonn / EMDB / RICH writers of test_benchmark_readers, plus real images, a video
and person boxes); the model is a tiny random UniSH (`--tiny-random`), the body a synthetic SMPL file, and RICH's
SMPL-X a synthetic model built from that SMPL so the two agree exactly.  Checked:
* the ground-truth predictor (`--oracle`) gives zero error (delta 1) through the whole path;
* a known distortion (drift of the root, a different scale per window) gives exactly the numbers the metric
  functions give for it (the drift) or is undone by the stitching (the per-window scale);
* with the tiny model, results.json / results.md hold the numbers the metric functions give on the saved
  predictions against ground truth recomputed here;
* a root without the dataset's layout, or missing weights / SMPL-X files, fail with a message naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_benchmark_readers import _emdb_annotation, _rich_label, _write_bonn, _write_emdb
from test_body import smplx_from_smpl
from typer.testing import CliRunner

from flows.eval_cmd import eval_app
from unish_model.benchmarks import read_emdb_pickle
from unish_model.benchmarks.bonn import bonn_depth_of, bonn_sequences
from unish_model.benchmarks.emdb import emdb_gt_smpl, emdb_motion_sequence, emdb_sequences
from unish_model.body import BodyModel, synthetic_body_arrays
from unish_model.eval.bonn import evaluate_bonn
from unish_model.eval.motion import SmplParams, evaluate_motion
from unish_model.eval.predictors import GroundTruthPredictor
from unish_model.eval.windows import WindowConfig, model_input_size, plan_windows
from unish_model.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from unish_model.metrics import aggregate_depth, aggregate_motion, evaluate_sequence, foot_sliding, \
    global_motion_metrics
from unish_model.metrics.motion import SMPL_FOOT_VERTICES
from unish_model.runner import Window, WindowPrediction

runner = CliRunner()
EMDB_FRAMES = 55  # two windows of 30 (0-29, 25-54)
RICH_FRAMES = 40  # two windows (0-29, 10-39)


def _invoke(*args: str):
    result = runner.invoke(eval_app, list(args))
    assert result.exit_code == 0, result.output
    return result


def _results(out: Path) -> dict:
    assert (out / "results.md").is_file()
    return json.loads((out / "results.json").read_text())


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("body") / "smpl_synthetic.npz"
    np.savez(path, **synthetic_body_arrays())
    return path


@pytest.fixture(scope="module")
def body(smpl_file: Path) -> BodyModel:
    return BodyModel.from_file(smpl_file)


@pytest.fixture(scope="module")
def bonn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bonn")
    for name in ("balloon2", "crowd2"):
        _write_bonn(root, name)
    return root


def _bonn_gt(root: Path, name: str) -> np.ndarray:
    """GT depth as the fixture writes it (independent of the reader): (5000 + i) / 5000 m, one hole."""
    depth = np.stack([np.full((4, 5), (5000 + i) / 5000.0) for i in range(30, 140)])
    depth[:, 0, 0] = 0.0
    return depth


def _jpeg_frames(folder: Path, n: int, hw: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), rng.integers(0, 255, (*hw, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def emdb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("emdb")
    for subject, seq, flag in (("P0", "09_outdoor_walk", True), ("P1", "14_outdoor_climb", False)):
        ann = _emdb_annotation(f"{subject}_{seq}", EMDB_FRAMES, emdb2=flag)
        t = np.minimum(np.arange(EMDB_FRAMES), 30)  # moves, then stands still (foot contact) from frame 30
        smpl = ann["smpl"]
        smpl["trans"] = np.stack([0.05 * t, 0.1 * np.sin(t / 5), 2.0 + 0.02 * t], 1)
        smpl["poses_root"] = smpl["poses_root"][:1] + 0.02 * t[:, None]
        smpl["poses_body"] = 0.3 * smpl["poses_body"][:1] * np.cos(t / 10)[:, None]
        t = np.arange(EMDB_FRAMES)
        ann["bboxes"]["bboxes"] = np.stack([4 + 0 * t, 3 + (t % 4), 20 + 0 * t, 30 + 0 * t], 1).astype(float)
        ann["bboxes"]["bboxes"][7] = [5, 5, 5, 5]  # an empty box: interpolated
        _write_emdb(root, subject, seq, ann)
        _jpeg_frames(root / subject / seq / "images", EMDB_FRAMES, (32, 24), seed=len(seq))
    return root


RICH_VIDS = ("test/Gym_010_dips2/cam_05", "test/ParkingLot2_009_overfence1/cam_04")


@pytest.fixture(scope="module")
def rich_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rich")
    support = root / "hmr4d_support"
    support.mkdir()
    torch.manual_seed(0)
    labels, preproc = {}, {}
    for vid, gender in zip(RICH_VIDS, ("male", "female")):
        label = _rich_label(RICH_FRAMES, gender)
        t = torch.arange(RICH_FRAMES, dtype=torch.float32).clamp(max=20)  # still from frame 20
        params = label["gt_smplx_params"]
        params["transl"] = torch.stack([0.04 * t, 0 * t, 3 + 0.01 * t], 1)
        params["global_orient"] = params["global_orient"][:1] + 0.02 * t[:, None]
        params["body_pose"] = 0.3 * params["body_pose"][:1] * torch.cos(t / 10)[:, None]
        params["betas"] = params["betas"][:1].repeat(RICH_FRAMES, 1)  # one shape, stored per frame
        labels[vid] = label
        # square boxes in full-resolution pixels (the video is a quarter of 128 x 96)
        preproc[vid] = {"bbx_xys": torch.tensor([[64.0, 48.0, 80.0]]).repeat(RICH_FRAMES, 1),
                        "img_wh": torch.tensor([128, 96])}
        video = support / "video" / vid / "video.mp4"
        video.parent.mkdir(parents=True)
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (32, 24))
        rng = np.random.default_rng(1)
        for _ in range(2 * RICH_FRAMES):  # frame_id = 0, 2, 4, ...
            writer.write(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        writer.release()
    torch.save(labels, support / "rich_test_labels.pt")
    torch.save(preproc, support / "rich_test_preproc.pt")
    models = root / "body_models"
    models.mkdir()
    smplx = smplx_from_smpl(synthetic_body_arrays())
    for gender in ("MALE", "FEMALE"):
        np.savez(models / f"SMPLX_{gender}.npz", **smplx)
    v = smplx["v_template"].shape[0]
    torch.save(torch.sparse_coo_tensor(torch.arange(v).repeat(2, 1), torch.ones(v), (v, v), check_invariants=True),
               models / "smplx2smpl_sparse.pt")
    return root


# ----------------------------------------------------------------------------------------------- pure parts


def test_windows_and_input_size() -> None:
    starts = [int(w[0]) for w in plan_windows(110, 30, 25)]
    assert starts == [0, 25, 50, 75, 80]
    assert all(len(w) == 30 for w in plan_windows(110, 30, 25))
    assert [len(w) for w in plan_windows(20, 30, 25)] == [20]
    assert [int(w[0]) for w in plan_windows(90, 30, 30)] == [0, 30, 60]
    assert model_input_size(480, 640, 518) == (378, 518)  # Bonn: 388.5 floored to a multiple of 14
    assert model_input_size(1920, 1440, 518) == (518, 378)  # EMDB portrait


# ----------------------------------------------------------------------------------------------- Bonn


def test_bonn_oracle_gives_zero_error(bonn_root: Path, tmp_path: Path) -> None:
    res = _invoke("bonn", "--root", str(bonn_root), "--oracle", "--out", str(tmp_path), "--max-sequences", "2")
    out = _results(tmp_path)
    assert [s["name"] for s in out["sequences"]] == ["balloon2", "crowd2"]
    for s in out["sequences"]:
        # the protocol's Adam (lr 1e-4) wanders by about one step around the exact fit
        assert s["metrics"]["abs_rel"] < 2e-4 and s["metrics"]["delta_1.25"] == 1.0
        assert s["info"]["windows"] == 5 and s["info"]["valid_pixels"] == 110 * 19
    assert out["overall"]["delta_1.25"] == 1.0 and out["overall"]["abs_rel"] < 2e-4
    assert "overall" in res.output and "balloon2" in res.output
    md = (tmp_path / "results.md").read_text()
    assert "| balloon2 | 110 |" in md and "**overall**" in md


class _WindowScaled:
    """Wraps a predictor: window k's whole reconstruction is scaled by 1 + 0.3 k (as if AlignNet's metric scale
    were off by that much in each window)."""

    def __init__(self, inner: GroundTruthPredictor) -> None:
        self.inner, self.k = inner, 0

    def __call__(self, window: Window) -> WindowPrediction:
        out, f = self.inner(window), 1.0 + 0.3 * self.k
        self.k += 1
        c2w = out.c2w.copy()
        c2w[:, :3, 3] *= f
        return WindowPrediction(out.world_points * f, out.conf, c2w, out.depth * f)


def test_bonn_stitching_undoes_per_window_scales(bonn_root: Path) -> None:
    seqs = bonn_sequences(bonn_root, ["balloon2"])
    result = evaluate_bonn(seqs, _WindowScaled(GroundTruthPredictor(depth_of=bonn_depth_of(seqs))))
    assert result.sequences[0].metrics["abs_rel"] < 2e-4
    # one metric scale for the sequence: the median of the windows' claims (window k: 1 + 0.3 k global units)
    assert result.sequences[0].info["metric_scale"] == pytest.approx(1.6)
    assert result.sequences[0].info["align_scale"] == pytest.approx(1 / 1.6, abs=1e-4)
    # control: the same windows concatenated without stitching are far off after one alignment
    gt = _bonn_gt(bonn_root, "balloon2")
    scale = np.zeros(110)
    for k, w in enumerate(plan_windows(110, 30, 25)):  # each frame from the first window holding it
        scale[w[scale[w] == 0]] = 1.0 + 0.3 * k
    assert evaluate_sequence(gt * scale[:, None, None], gt).metrics["abs_rel"] > 0.05


def test_bonn_tiny_model_numbers_are_the_metric_functions(bonn_root: Path, tmp_path: Path) -> None:
    _invoke("bonn", "--root", str(bonn_root), "--tiny-random", "--out", str(tmp_path), "--max-sequences", "1",
            "--long-side", "28", "--solver", "scipy", "--window", "60", "--stride", "50", "--save-predictions")
    out = _results(tmp_path)
    assert len(out["sequences"]) == 1 and out["sequences"][0]["info"]["window_starts"] == [0, 50]
    pred = np.load(tmp_path / "predictions" / "balloon2.npz")["pred_depth"]
    assert pred.shape == (110, 14, 28) and np.isfinite(pred).all()
    direct = evaluate_sequence(pred, _bonn_gt(bonn_root, "balloon2"))
    for key, value in direct.metrics.items():
        assert out["sequences"][0]["metrics"][key] == pytest.approx(value, rel=1e-12, abs=1e-15)
    overall = aggregate_depth([direct])
    assert out["overall"]["abs_rel"] == pytest.approx(overall["abs_rel"], rel=1e-12)
    assert out["protocol"]["predictor"] == "tiny-random" and out["protocol"]["align"] == "scale&shift"
    assert direct.metrics["abs_rel"] > 1e-3  # a random model is not the ground truth


def test_bonn_bad_root_and_missing_weights(bonn_root: Path, tmp_path: Path, monkeypatch) -> None:
    res = runner.invoke(eval_app, ["bonn", "--root", str(tmp_path), "--oracle", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "rgbd_bonn_balloon2/" in res.output
    missing = tmp_path / "nope.safetensors"
    res = runner.invoke(eval_app, ["bonn", "--root", str(bonn_root), "--weights", str(missing), "--out",
                                   str(tmp_path / "o"), "--max-sequences", "1"])
    # missing weights: the run cannot start (exit 1, flows/exitcodes.py), every missing file named at once
    assert res.exit_code == 1 and "nope.safetensors" in res.output and "unish weights pull" in res.output
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path / "empty"))
    res = runner.invoke(eval_app, ["bonn", "--root", str(bonn_root), "--out", str(tmp_path / "o"),
                                   "--sequence", "crowd2"])
    assert res.exit_code == 1 and "unish_release.safetensors" in res.output
    assert not (tmp_path / "o" / "results.json").exists()


# ----------------------------------------------------------------------------------------------- EMDB


def _gt_joints(body: BodyModel, params: SmplParams) -> tuple[np.ndarray, np.ndarray]:
    """GT joints and foot vertices written out here: J_regressor on the posed vertices."""
    go, bp, betas, transl = (torch.from_numpy(a).float() for a in (params.global_orient, params.body_pose,
                                                                    params.betas, params.transl))
    out = body(axis_angle_to_matrix(go), bp.reshape(-1, 23, 3), betas, transl)  # (3, 3) would read as a matrix
    verts = out.vertices.double()
    return body.regress_joints(verts).numpy(), verts[:, list(SMPL_FOOT_VERTICES)].numpy()


def _direct_motion(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], mask) -> dict:
    m = np.ones(len(pred[0]), bool) if mask is None else mask
    per_frame = global_motion_metrics(pred[0], gt[0], mask=m)
    per_frame["fs"] = foot_sliding(pred[1][m], gt[1][m], foot_vertices=range(4))
    return per_frame


def _mean(values: np.ndarray) -> float:
    assert len(values), "the fixture must have frames for every metric (foot contact too)"
    return float(np.mean(values))


def test_emdb_oracle_gives_zero_error(emdb_root: Path, smpl_file: Path, tmp_path: Path) -> None:
    res = _invoke("emdb", "--root", str(emdb_root), "--oracle", "--body-model", str(smpl_file), "--out",
                  str(tmp_path))
    out = _results(tmp_path)
    assert [s["name"] for s in out["sequences"]] == ["P0_09_outdoor_walk"]  # the EMDB-2 one only
    seq = out["sequences"][0]
    assert seq["frames"] == EMDB_FRAMES - len(range(0, EMDB_FRAMES, 5))  # good_frames_mask
    for key in ("wa_mpjpe", "w_mpjpe", "rte"):
        assert seq["metrics"][key] < 1e-3, key
    assert seq["info"]["gt_body"].startswith("neutral") and seq["info"]["valid_boxes"] == EMDB_FRAMES - 12
    assert "P0_09_outdoor_walk" in res.output


def test_emdb_known_drift_gives_the_metric_functions_numbers(emdb_root: Path, body: BodyModel) -> None:
    (seq,) = emdb_sequences(emdb_root)
    gt = emdb_gt_smpl(seq)
    drift = np.zeros_like(gt.transl)
    drift[:, 0] = 0.01 * np.arange(len(drift)) ** 1.5  # accelerating sideways drift
    drifted = SmplParams(gt.global_orient, gt.body_pose, gt.betas, gt.transl + drift)
    predictor = GroundTruthPredictor(smpl_of=lambda name: drifted)
    result = evaluate_motion("emdb", [emdb_motion_sequence(seq, body, body)], predictor, body, WindowConfig())
    expected = _direct_motion(_gt_joints(body, drifted), _gt_joints(body, gt), seq.good_frames_mask)
    got = result.sequences[0].metrics
    for key, values in expected.items():
        assert got[key] == pytest.approx(_mean(values), rel=1e-4, abs=1e-3), key
    assert got["w_mpjpe"] > 100 and got["rte"] > 1  # the drift shows


class _MovingCamera:
    """Wraps the ground-truth predictor: a camera that walks and turns films the (static) scene and the person;
    each window is expressed in its first camera's frame, as UniSH's are, and the SMPL parameters in each
    frame's camera (the pelvis-aware inverse of what the evaluation does)."""

    def __init__(self, inner: GroundTruthPredictor, body: BodyModel, n: int) -> None:
        self.inner, self.body = inner, body
        t = np.arange(n)
        yaw, pitch = 0.02 * t, 0.1 * np.sin(t / 7)
        self.c2w = np.tile(np.eye(4), (n, 1, 1))
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        ry = np.stack([np.stack([cy, 0 * t, sy], 1), np.stack([0 * t, 1 + 0 * t, 0 * t], 1),
                       np.stack([-sy, 0 * t, cy], 1)], 1)
        rx = np.stack([np.stack([1 + 0 * t, 0 * t, 0 * t], 1), np.stack([0 * t, cp, -sp], 1),
                       np.stack([0 * t, sp, cp], 1)], 1)
        self.c2w[:, :3, :3] = ry @ rx
        self.c2w[:, :3, 3] = np.stack([0.03 * t, 0.2 * np.sin(t / 9), -1.0 + 0.01 * t], 1)

    def __call__(self, window: Window) -> WindowPrediction:
        world = self.inner(window)  # identity cameras: everything in world coordinates
        cams = self.c2w[window.frame_index]
        to_window = np.linalg.inv(cams[0])
        points = world.world_points @ to_window[:3, :3].T + to_window[:3, 3]
        w2c = np.linalg.inv(cams)
        pose = world.pose_cam.copy()
        root = w2c[:, :3, :3] @ axis_angle_to_matrix(torch.from_numpy(pose[:, :3])).numpy()
        pose[:, :3] = matrix_to_axis_angle(torch.from_numpy(root)).numpy()
        j0 = self.body.rest_joints(torch.from_numpy(world.betas).float())[:, 0].double().numpy()
        pelvis_cam = np.einsum("fij,fj->fi", w2c[:, :3, :3], world.trans_cam + j0) + w2c[:, :3, 3]
        return WindowPrediction(points, world.conf, to_window @ cams, pose_cam=pose, betas=world.betas,
                                trans_cam=pelvis_cam - j0)


def test_emdb_moving_camera_is_undone(emdb_root: Path, body: BodyModel) -> None:
    (seq,) = emdb_sequences(emdb_root)
    gt = emdb_gt_smpl(seq)
    predictor = _MovingCamera(GroundTruthPredictor(smpl_of=lambda name: gt), body, seq.n_frames)
    result = evaluate_motion("emdb", [emdb_motion_sequence(seq, body, body)], predictor, body)
    metrics = result.sequences[0].metrics
    for key in ("wa_mpjpe", "w_mpjpe", "rte"):
        assert metrics[key] < 1e-2, (key, metrics[key])
    assert result.sequences[0].info["mean_inlier_share"] == pytest.approx(1.0)


def test_emdb_tiny_model_numbers_are_the_metric_functions(emdb_root: Path, smpl_file: Path, body: BodyModel,
                                                         tmp_path: Path) -> None:
    _invoke("emdb", "--root", str(emdb_root), "--tiny-random", "--body-model", str(smpl_file), "--out",
            str(tmp_path), "--long-side", "28", "--solver", "scipy", "--save-predictions")
    out = _results(tmp_path)
    saved = np.load(tmp_path / "predictions" / "P0_09_outdoor_walk.npz")
    pred_params = SmplParams(saved["global_orient"], saved["body_pose"], saved["betas"], saved["transl"])
    pred = _gt_joints(body, pred_params)
    np.testing.assert_allclose(saved["pred_joints"], pred[0], atol=1e-9)  # saved joints = J_regressor(SMPL(params))
    ann = read_emdb_pickle(emdb_root / "P0" / "09_outdoor_walk" / "P0_09_outdoor_walk_data.pkl")
    gt = _gt_joints(body, SmplParams.make(ann.poses_root, ann.poses_body, ann.betas, ann.trans))
    expected = _direct_motion(pred, gt, ann.good_frames_mask)
    seq = out["sequences"][0]
    assert seq["info"]["windows"] == 2
    for key, values in expected.items():
        assert seq["metrics"][key] == pytest.approx(_mean(values), rel=1e-6), key
    overall = aggregate_motion([expected])
    for key in expected:
        assert out["overall"][key] == pytest.approx(overall[key], rel=1e-6)
    assert seq["metrics"]["wa_mpjpe"] > 1.0
    assert "| P0_09_outdoor_walk | 44 |" in (tmp_path / "results.md").read_text()


def test_emdb_bad_root(tmp_path: Path) -> None:
    res = runner.invoke(eval_app, ["emdb", "--root", str(tmp_path), "--oracle", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "_data.pkl" in res.output


# ----------------------------------------------------------------------------------------------- RICH


def test_rich_oracle_gives_zero_error(rich_root: Path, smpl_file: Path, tmp_path: Path) -> None:
    _invoke("rich", "--root", str(rich_root), "--oracle", "--body-model", str(smpl_file), "--out", str(tmp_path))
    out = _results(tmp_path)
    assert [s["name"] for s in out["sequences"]] == list(RICH_VIDS)
    for seq in out["sequences"]:
        assert seq["frames"] == RICH_FRAMES and seq["info"]["boxes"] == "rich_test_preproc.pt bbx_xys"
        for key in ("wa_mpjpe", "w_mpjpe", "rte"):
            assert seq["metrics"][key] < 1e-2, key
    assert (tmp_path / "results.md").read_text().count("test/") == 2


def test_rich_tiny_model_numbers_are_the_metric_functions(rich_root: Path, smpl_file: Path, body: BodyModel,
                                                         tmp_path: Path) -> None:
    _invoke("rich", "--root", str(rich_root), "--tiny-random", "--body-model", str(smpl_file), "--out",
            str(tmp_path), "--long-side", "28", "--solver", "scipy", "--max-sequences", "1", "--save-predictions")
    out = _results(tmp_path)
    saved = np.load(tmp_path / "predictions" / f"{RICH_VIDS[0].replace('/', '@')}.npz")
    pred = _gt_joints(body, SmplParams(saved["global_orient"], saved["body_pose"], saved["betas"], saved["transl"]))
    label = torch.load(rich_root / "hmr4d_support" / "rich_test_labels.pt", weights_only=True)[RICH_VIDS[0]]
    p = {k: v.numpy().astype(np.float64) for k, v in label["gt_smplx_params"].items()}
    # the synthetic SMPL-X equals the SMPL at rest hands, and the map is the identity
    gt = _gt_joints(body, SmplParams.make(p["global_orient"], p["body_pose"], p["betas"], p["transl"]))
    np.testing.assert_allclose(saved["gt_joints"], gt[0], atol=1e-5)
    expected = _direct_motion(pred, (saved["gt_joints"], saved["gt_feet"]), None)
    seq = out["sequences"][0]
    assert seq["info"]["windows"] == 2
    for key, values in expected.items():
        assert seq["metrics"][key] == pytest.approx(_mean(values), rel=1e-6), key
    assert seq["metrics"]["wa_mpjpe"] > 1.0


def test_rich_missing_files_are_named(rich_root: Path, smpl_file: Path, tmp_path: Path) -> None:
    res = runner.invoke(eval_app, ["rich", "--root", str(tmp_path), "--oracle", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "rich_test_labels.pt" in res.output
    res = runner.invoke(eval_app, ["rich", "--root", str(rich_root), "--oracle", "--body-model", str(smpl_file),
                                   "--smplx-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "SMPLX_FEMALE.npz" in res.output and "smpl-x.is.tue.mpg.de" in res.output
