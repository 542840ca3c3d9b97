"""The three stage objectives (unish_model.losses): zero at the optimum, positive away from it, invariances,
a reference loop for the local human loss, the frozen point head, gradients, and bf16 autocast."""
from __future__ import annotations

import copy
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from unish_model.body import BodyModel, write_synthetic_body_model
from unish_model.geometry import axis_angle_to_matrix
from unish_model.losses import (FrozenPointHead, Stage1Config, Stage1Inputs, Stage2Inputs, Stage3Inputs,
                                original_points, stage1_loss, stage2_loss, stage3_loss)
from unish_model.losses.raster import project_points, visible_vertices
from unish_model.losses.stage1 import local_human_loss, patch_members, sample_anchors
from unish_model.postprocess import depth_to_point_map, normalization_factor
from unish_model.scene import SceneBranch, SceneBranchConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two shared cores: no OpenMP spinning

H, W, FOCAL = 42, 56, 50.0  # 0.04 m per pixel at 2 m: a tau = 0.2 m patch is ~80 pixels


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> BodyModel:
    path = write_synthetic_body_model(tmp_path_factory.mktemp("body") / "smpl_small.npz", seed=1, ring_size=8,
                                      rings=60)
    return BodyModel.from_file(path)


def _intrinsics(b: int, t: int, focal: float = FOCAL, height: int = H, width: int = W,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    k = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=dtype)
    return k.expand(b, t, 3, 3).clone()


# ------------------------------------------------------------------------------------------------ stage 1


def _stage1_labels(b: int = 1, t: int = 2, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A person (half an ellipsoid, 1.7-2.0 m) in front of a slanted wall at ~4 m; MoGe-like labels."""
    cols, rows = torch.meshgrid(torch.arange(W, dtype=dtype) + 0.5, torch.arange(H, dtype=dtype) + 0.5,
                                indexing="xy")
    depth, person = [], []
    for frame in range(b * t):
        r2 = ((cols - W / 2 - frame) / 12) ** 2 + ((rows - H / 2) / 18) ** 2
        inside = r2 < 1
        depth.append(torch.where(inside, 2.0 - 0.3 * (1 - r2).clamp_min(0).sqrt(), 4.0 + 0.01 * rows))
        person.append(inside)
    depth_t = torch.stack(depth).reshape(b, t, H, W)
    valid = torch.ones_like(depth_t, dtype=torch.bool)
    valid[..., :2, :] = False  # a sky band
    return {"depth": depth_t, "depth_valid": valid, "person_mask": torch.stack(person).reshape(b, t, H, W),
            "intrinsics": _intrinsics(b, t, dtype=dtype)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_local_loss_zero_at_optimum_positive_away_and_affine_invariant() -> None:
    lab = _stage1_labels()
    conf = torch.full_like(lab["depth"], 0.8)
    args = (conf, lab["depth"], lab["depth_valid"], lab["intrinsics"], lab["person_mask"])
    optimum = (lab["depth"] - 0.5) / 3.0  # any positive scale and shift of the pseudo-depth
    loss, kept = local_human_loss(optimum, *args, generator=_gen())
    # float32: s D^ + t - D at ~2 m rounds to a few 1e-7 m per pixel (measured mean 5e-9)
    assert float(loss.max()) < 1e-6 and int(kept.min()) >= 12
    g = torch.Generator().manual_seed(1)
    noisy = optimum + 0.02 * torch.randn(optimum.shape, generator=g)
    loss, _ = local_human_loss(noisy, *args, generator=_gen())
    assert float(loss.min()) > 0.005  # 2 cm of model-unit noise is ~6 cm of depth after the scale of ~3
    # invariant to a global scale and shift of the prediction (same anchors: same seed)
    for a, b in ((7.0, 3.0), (0.01, -0.2)):
        moved, _ = local_human_loss(a * noisy + b, *args, generator=_gen())
        # the re-fitted (s, t) absorb (a, b); float32 rounding of a * D^ + b is the only difference
        torch.testing.assert_close(moved, loss, rtol=2e-4, atol=1e-6)
    # a prediction whose depth order is reversed fits with a negative scale: every patch is dropped
    flipped, kept = local_human_loss(-optimum, *args, generator=_gen())
    assert float(flipped.abs().max()) == 0.0 and int(kept.max()) == 0


def _reference_local_loss(pred: np.ndarray, conf: np.ndarray, depth: np.ndarray, valid: np.ndarray,
                          k: np.ndarray, anchors: np.ndarray, cfg: Stage1Config) -> np.ndarray:
    """L_h written out per frame and per anchor, with a brute-force (s, t): all pairs of patch points."""
    frames = pred.shape[0]
    out = np.zeros(frames)
    for f in range(frames):
        rows, cols = np.mgrid[0:H, 0:W]
        z = depth[f]
        pts = np.stack([(cols + 0.5 - k[f, 0, 2]) / k[f, 0, 0] * z, (rows + 0.5 - k[f, 1, 2]) / k[f, 1, 1] * z, z],
                       -1).reshape(-1, 3)
        ok = valid[f].reshape(-1)
        for a in anchors[f]:
            member = ok & (np.linalg.norm(pts - pts[a], axis=-1) <= cfg.tau)
            if member.sum() < cfg.min_patch_points:
                continue
            x, y, c = pred[f].reshape(-1)[member], z.reshape(-1)[member], conf[f].reshape(-1)[member]
            i, j = np.triu_indices(len(x), 1)
            s = (y[j] - y[i]) / (x[j] - x[i])
            t = y[i] - s * x[i]
            cost = np.minimum(cfg.align_trunc, np.abs(s[:, None] * x + t[:, None] - y) / cfg.tau).sum(-1)
            best = int(cost.argmin())
            if s[best] <= 0:
                continue
            out[f] += (c * np.abs(s[best] * x + t[best] - y)).mean()
        out[f] /= anchors.shape[1]
    return out


def test_local_loss_matches_a_reference_loop() -> None:
    """Given anchors, with every patch point in the alignment (align_points >= patch size), L_h equals the
    definition computed pixel by pixel with an exhaustive (s, t) search, in float64."""
    lab = _stage1_labels(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    pred = (lab["depth"] - 0.4) / 2.0 + 0.03 * torch.randn(lab["depth"].shape, generator=g, dtype=torch.float64)
    conf = torch.rand(lab["depth"].shape, generator=g, dtype=torch.float64)
    valid = lab["depth_valid"] & (torch.rand(lab["depth"].shape, generator=g) > 0.1)  # holes in the labels
    cand = (lab["person_mask"] & valid).reshape(2, -1)
    anchors, _ = sample_anchors(cand, 5, g)
    anchors[1, 0] = int(torch.nonzero(valid[0, 1].reshape(-1) & ~cand[1])[0, 0])  # an anchor in the sky-wall
    cfg = Stage1Config(align_points=4096)
    loss, kept = local_human_loss(pred, conf, lab["depth"], valid, lab["intrinsics"], lab["person_mask"], cfg,
                                  anchors=anchors)
    want = _reference_local_loss(pred[0].numpy(), conf[0].numpy(), lab["depth"][0].numpy(), valid[0].numpy(),
                                 lab["intrinsics"][0].numpy(), anchors.numpy(), cfg)
    np.testing.assert_allclose(loss[0].numpy(), want, rtol=1e-9, atol=1e-12)
    assert float(loss.min()) > 0


def test_patches_under_32_points_are_dropped() -> None:
    """Valid MoGe pixels only in an 8 x 4 block at 1.5 m (0.24 x 0.12 m, every point within 0.14 m of the anchor
    near its centre): a patch of exactly 32 points counts, one of 31 is dropped."""
    lab = _stage1_labels(t=1)
    depth = 1.5 + 0.005 * torch.arange(W, dtype=torch.float32).expand(1, 1, H, W)  # a slanted surface
    pred = 0.5 * depth + 0.01 * torch.rand(depth.shape, generator=_gen(3))
    anchor = torch.tensor([[22 * W + 28]])
    for n, expect in ((32, 1), (31, 0)):
        valid = torch.zeros(1, 1, H, W, dtype=torch.bool)
        rows, cols = torch.arange(n) // 8 + 20, torch.arange(n) % 8 + 24
        valid[0, 0, rows, cols] = True
        loss, kept = local_human_loss(pred, torch.ones_like(depth), depth, valid, lab["intrinsics"], valid,
                                      Stage1Config(num_anchors=1), anchors=anchor)
        assert int(kept) == expect, n
        assert (float(loss) > 0) == bool(expect)


def test_patch_members_window_holds_the_whole_ball() -> None:
    """The windowed search finds exactly the points a search over the whole image finds, for anchors far away,
    near the camera and closer than tau (whole-image search), with every member listed once."""
    g = torch.Generator().manual_seed(11)
    depth = 0.15 + 3 * torch.rand(2, H, W, generator=g).cumsum(-1) / W  # 0.15 m to ~3 m
    depth[:, :, :2] = 0.12  # closer than tau: the ball reaches behind the camera plane, search everything
    k = _intrinsics(2, 1)[:, 0]
    k_norm = k.clone()
    k_norm[:, 0] /= W
    k_norm[:, 1] /= H
    points = depth_to_point_map(depth, k_norm)
    valid = torch.rand(2, H, W, generator=g) > 0.2
    anchors = torch.randint(0, H * W, (2, 12), generator=g)
    anchors[:, 0] = torch.tensor([5 * W, 7 * W + 1])  # leftmost columns: depth < tau
    index, ok, count = patch_members(points, valid, anchors, k, 0.2, H * W, g, chunk_elements=5000)
    flat, flat_valid = points.reshape(2, -1, 3), valid.reshape(2, -1)
    for f in range(2):
        for j in range(12):
            dist = (flat[f] - flat[f, anchors[f, j]]).norm(dim=-1)
            want = set(torch.nonzero(flat_valid[f] & (dist <= 0.2))[:, 0].tolist())
            got = index[f, j][ok[f, j]].tolist()
            assert len(got) == len(set(got)) == int(count[f, j]) and set(got) == want, (f, j)
    # a cap below the patch size keeps a subset of the members, still counting them all
    index, ok, count2 = patch_members(points, valid, anchors, k, 0.2, 16, g)
    assert torch.equal(count2, count) and bool((ok.sum(-1) == count.clamp_max(16)).all())


def _stage1_inputs(b: int = 1, t: int = 2, seed: int = 4) -> Stage1Inputs:
    lab = _stage1_labels(b, t)
    g = torch.Generator().manual_seed(seed)
    cols, rows = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    z = (lab["depth"] - 0.5) / 3.0 + 0.01 * torch.randn(lab["depth"].shape, generator=g)
    points = torch.stack([(cols - W / 2) / FOCAL * z, (rows - H / 2) / FOCAL * z, z], -1)
    orig = points + 0.05 * torch.randn(points.shape, generator=g)
    conf = torch.sigmoid(torch.randn(lab["depth"].shape, generator=g))
    return Stage1Inputs(points=points, points_orig=orig, confidence=conf, **lab)


def test_stage1_total_terms_and_gradients() -> None:
    inp = _stage1_inputs()
    points = inp.points.clone().requires_grad_(True)
    conf = inp.confidence.clone().requires_grad_(True)
    cfg = Stage1Config()
    total, terms = stage1_loss(replace(inp, points=points, confidence=conf), cfg, _gen())
    torch.testing.assert_close(total, cfg.lambda_h * terms["local"] + cfg.lambda_preg * terms["point_reg"])
    torch.testing.assert_close(terms["point_reg"], (inp.points - inp.points_orig).abs().mean())
    assert set(terms) == {"local", "point_reg", "patches", "total"} and float(terms["local"].detach()) > 0
    total.backward()
    assert bool(torch.isfinite(points.grad).all()) and float(points.grad[..., 2].abs().sum()) > 0
    assert conf.grad is None or float(conf.grad.abs().sum()) == 0.0  # the frozen confidence is not trained
    # the optimum: depth an affine map of MoGe's and the points equal to the original head's
    best = inp.points.clone()
    best[..., 2] = (inp.depth - 0.5) / 3.0
    total, terms = stage1_loss(replace(inp, points=best, points_orig=best), cfg, _gen())
    assert float(total) < 1e-6


def test_frozen_point_head_reproduces_the_original_points() -> None:
    """The copy maps the frozen features to exactly the points the untouched scene branch gave, keeps doing so
    after the live point decoder changes, and holds only the point decoder and head, none of them trainable."""
    torch.manual_seed(0)
    scene = SceneBranch(SceneBranchConfig.tiny()).eval()
    images = torch.rand(1, 2, 3, 28, 42)
    with torch.no_grad():
        out = scene(images)
    head = FrozenPointHead(scene)
    assert torch.equal(original_points(head, out), out.local_points)
    assert not any(p.requires_grad for p in head.parameters())
    copied = sum(p.numel() for p in head.parameters())
    assert copied == sum(p.numel() for m in (scene.point_decoder, scene.point_head) for p in m.parameters())
    with torch.no_grad():  # a training step on the live decoder
        for p in scene.point_decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
        new = scene(images)
    assert not torch.allclose(new.local_points, out.local_points)
    torch.testing.assert_close(new.hidden, out.hidden)  # the features are frozen
    assert torch.equal(original_points(head, new), out.local_points)
    head.train()
    assert not head.training


# ------------------------------------------------------------------------------------------------ stage 2


def _stage2_inputs(body: BodyModel, b: int = 2, t: int = 3, c: float = 0.37) -> Stage2Inputs:
    g = torch.Generator().manual_seed(5)
    gt_points = torch.rand(b, t, H, W, 3, generator=g) * torch.tensor([2.0, 2.0, 1.0]) + torch.tensor([-1, -1, 2.5])
    gt_mask = torch.rand(b, t, H, W, generator=g) > 0.1
    aa = 0.3 * torch.randn(b, t, 24, 3, generator=g)
    aa[..., 0, :] = torch.tensor([math.pi, 0.0, 0.0]) + 0.1 * aa[..., 0, :]
    betas = torch.randn(b, t, 10, generator=g)
    gt_trans = torch.tensor([0.1, 0.2, 3.5]) + 0.2 * torch.randn(b, t, 3, generator=g)
    k = _intrinsics(b, t)
    out = body(axis_angle_to_matrix(aa[..., 0, :]), aa[..., 1:, :].reshape(b, t, 69), betas, gt_trans)
    local = c * gt_points  # the prediction: the ground truth in other units
    norm = normalization_factor(local, gt_mask)
    return Stage2Inputs(local_points=local, point_mask=gt_mask, scale=(norm / c)[:, None], trans_cam=c * gt_trans,
                        pose=axis_angle_to_matrix(aa), betas=betas, intrinsics=k, gt_points=gt_points,
                        gt_point_mask=gt_mask, gt_pose=aa.reshape(b, t, 72), gt_betas=betas, gt_trans=gt_trans,
                        gt_joints_2d=project_points(out.joints, k))


def test_stage2_zero_at_optimum_and_each_term_responds(body: BodyModel) -> None:
    inp = _stage2_inputs(body)
    total, terms = stage2_loss(inp, body)
    # float32 noise: 2D joints ~1e-7 of the 56 px frame, translation ~1e-7 m (measured total 5e-8)
    assert float(total) < 1e-5 and float(terms["valid_clips"]) == 2
    torch.testing.assert_close(terms["s_opt"], inp.scale.mean(), rtol=1e-5, atol=0)
    g = torch.Generator().manual_seed(6)
    changes = {
        "pose": ("pose", axis_angle_to_matrix(0.1 * torch.randn(2, 3, 24, 3, generator=g)) @ inp.pose,
                 {"vertices", "joints_3d", "joints_2d", "pose"}),
        "betas": ("betas", inp.betas + 0.5, {"vertices", "joints_3d", "joints_2d", "shape"}),
        "trans": ("trans_cam", inp.trans_cam + 0.02, {"transl", "joints_2d"}),
        "scale": ("scale", inp.scale * 1.1, {"scale"}),
    }
    for name, (field, value, moved) in changes.items():
        _, t2 = stage2_loss(replace(inp, **{field: value}), body)
        for term in ("vertices", "joints_3d", "joints_2d", "pose", "shape", "transl", "scale"):
            assert (float(t2[term]) > 1e-4) == (term in moved), (name, term, float(t2[term]))


def test_stage2_invariant_to_the_predicted_scene_scale_and_gradients(body: BodyModel) -> None:
    inp = _stage2_inputs(body)
    g = torch.Generator().manual_seed(7)
    inp = replace(inp, trans_cam=inp.trans_cam * 1.05, scale=inp.scale * 0.9,
                  pose=axis_angle_to_matrix(0.05 * torch.randn(2, 3, 24, 3, generator=g)) @ inp.pose)
    ref, ref_terms = stage2_loss(inp, body)
    # the model's points and translation in any other unit: the normalisation and s_opt cancel it
    other, _ = stage2_loss(replace(inp, local_points=inp.local_points * 4.0, trans_cam=inp.trans_cam * 4.0), body)
    torch.testing.assert_close(other, ref, rtol=1e-5, atol=0)
    params = {f: getattr(inp, f).clone().requires_grad_(True) for f in ("scale", "trans_cam", "pose", "betas")}
    total, _ = stage2_loss(replace(inp, **params), body)
    total.backward()
    for name, p in params.items():
        assert bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0, name


# ------------------------------------------------------------------------------------------------ stage 3


def _stage3_inputs(body: BodyModel, b: int = 1, t: int = 2, height: int = 70, width: int = 56) -> Stage3Inputs:
    """A posed body 3 m away; the 'scene' holds exactly its visible vertices; keypoints = projected joints."""
    g = torch.Generator().manual_seed(8)
    aa = 0.2 * torch.randn(b, t, 24, 3, generator=g)
    aa[..., 0, :] = torch.tensor([math.pi, 0.0, 0.0])
    pose = axis_angle_to_matrix(aa)
    betas = torch.randn(b, t, 10, generator=g)
    transl = torch.tensor([0.0, 0.15, 3.0]).expand(b, t, 3).clone()
    k = _intrinsics(b, t, 30.0, height, width)
    out = body(pose[..., 0, :, :], pose[..., 1:, :, :], betas, transl)
    vis = visible_vertices(out.vertices, body.faces, k, (height, width))
    n_v = out.vertices.shape[-2]
    points = torch.zeros(b, t, height * width, 3)
    mask = torch.zeros(b, t, height * width, dtype=torch.bool)
    points[:, :, 100:100 + n_v] = out.vertices
    mask[:, :, 100:100 + n_v] = vis
    return Stage3Inputs(pose=pose, betas=betas, transl=transl, scene_points=points.reshape(b, t, height, width, 3),
                        person_mask=mask.reshape(b, t, height, width), intrinsics=k,
                        keypoints_2d=project_points(out.joints, k), keypoints_conf=torch.rand(b, t, 24, generator=g))


def test_stage3_zero_at_optimum_positive_away(body: BodyModel) -> None:
    inp = _stage3_inputs(body)
    total, terms = stage3_loss(inp, body)
    # exactly 0 but for L_dreg's two float32 means of z ~ 3 m, summed in different orders (1 ulp = 2.4e-7)
    assert float(terms["align"]) == 0.0 and float(terms["joints_2d"]) == 0.0 and float(total) < 1e-6
    assert float(terms["visible"]) > 50  # of the small test body's 482 vertices
    shifted, t2 = stage3_loss(replace(inp, transl=inp.transl + torch.tensor([0.03, 0.0, 0.0])), body)
    assert float(t2["align"]) > 0 and float(t2["joints_2d"]) > 0
    # the body moved towards the camera: the person's points are behind it on average -> L_dreg > 0
    _, t3 = stage3_loss(replace(inp, transl=inp.transl - torch.tensor([0.0, 0.0, 0.1])), body)
    # ~0.1 m (the visible set itself changes a little with the move: measured 0.108)
    assert 0.05 < float(t3["dreg"]) < 0.15
    # moved away from the camera: no depth-order penalty, only the distance terms
    _, t4 = stage3_loss(replace(inp, transl=inp.transl + torch.tensor([0.0, 0.0, 0.1])), body)
    assert float(t4["dreg"]) == 0.0 and float(t4["align"]) > 0


def test_stage3_point_order_invariance_and_gradients(body: BodyModel) -> None:
    inp = _stage3_inputs(body)
    inp = replace(inp, transl=inp.transl + torch.tensor([0.02, -0.01, -0.05]))
    ref, _ = stage3_loss(inp, body)
    b, t, height, width = inp.person_mask.shape
    perm = torch.randperm(height * width, generator=_gen(9))
    permuted = replace(inp, scene_points=inp.scene_points.reshape(b, t, -1, 3)[:, :, perm].reshape(b, t, height,
                                                                                                    width, 3),
                       person_mask=inp.person_mask.reshape(b, t, -1)[:, :, perm].reshape(b, t, height, width))
    torch.testing.assert_close(stage3_loss(permuted, body)[0], ref, rtol=1e-6, atol=0)
    transl = inp.transl.clone().requires_grad_(True)
    points = inp.scene_points.clone().requires_grad_(True)
    total, _ = stage3_loss(replace(inp, transl=transl, scene_points=points), body)
    total.backward()
    assert bool(torch.isfinite(transl.grad).all()) and float(transl.grad.abs().sum()) > 0
    assert bool(torch.isfinite(points.grad).all()) and float(points.grad.abs().sum()) > 0
    assert float(points.grad[~inp.person_mask].abs().sum()) == 0.0  # only the person's points are pulled


# ------------------------------------------------------------------------------------------------ bf16


# Model outputs arrive in bf16 under autocast; labels and ground truth stay float32.  Two checks per stage:
# (a) the losses never compute in bf16: with bf16 inputs under autocast they equal the float32 loss of the same
#     (rounded) values (rtol 1e-5; measured: bitwise equal on the CPU);
# (b) against the unrounded float32 inputs they differ only by the effect of that rounding.  The tolerance is
#     measured, not guessed: the largest change of the float32 loss over 4 draws of random perturbations
#     distributed like bf16 rounding (uniform within +-half a bf16 ulp of each value), times 3.  Measured on
#     these inputs (CPU): actual / floor = 0.72 (stage 1), 0.64 (stage 2), 0.34 (stage 3); the changes
#     themselves are 0.14%, 2.1% and 4.6% of the loss (bf16 quantises a 3 m translation to 1.6 cm; our model
#     keeps its heads and AlignNet in float32, so real inputs are rounded less than this).
_MODEL_OUTPUTS = {1: ("points", "points_orig", "confidence"),
                  2: ("local_points", "scale", "trans_cam", "pose", "betas"),
                  3: ("pose", "betas", "transl", "scene_points")}


def _bf16_like_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x plus uniform noise within +-half a bf16 ulp of each value (bf16 keeps 8 significant bits)."""
    ulp = torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(1e-30))) - 7)
    return x + ulp * (torch.rand(x.shape, generator=g) - 0.5).to(x.device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: the CUDA autocast check runs where a GPU is lent"))])
def test_bf16_autocast_agrees_with_float32(body: BodyModel, device: str) -> None:
    stage2, stage3 = _stage2_inputs(body), _stage3_inputs(body)  # built on the CPU with the module's body
    dev_body = copy.deepcopy(body).to(device)
    cases = {
        1: (_stage1_inputs(), lambda x: stage1_loss(x, Stage1Config(), torch.Generator(device).manual_seed(0))),
        2: (replace(stage2, trans_cam=stage2.trans_cam * 1.05), lambda x: stage2_loss(x, dev_body)),
        3: (replace(stage3, transl=stage3.transl + torch.tensor([0.02, 0.0, -0.03])),
            lambda x: stage3_loss(x, dev_body)),
    }
    g = torch.Generator().manual_seed(10)
    for stage, (inputs, loss_fn) in cases.items():
        inputs = _to(inputs, device)
        names = _MODEL_OUTPUTS[stage]
        ref = float(loss_fn(inputs)[0])
        low = replace(inputs, **{name: getattr(inputs, name).to(torch.bfloat16) for name in names})
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            got, terms = loss_fn(low)
        assert got.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
        rounded = float(loss_fn(replace(low, **{name: getattr(low, name).float() for name in names}))[0])
        assert abs(float(got) - rounded) <= 1e-5 * abs(rounded), (stage, float(got), rounded)
        floor = max(abs(float(loss_fn(replace(inputs, **{n: _bf16_like_noise(getattr(inputs, n), g) for n in names}))[0])
                        - ref) for _ in range(4))
        assert 0 < abs(float(got) - ref) <= 3 * floor + 1e-6 * abs(ref), (stage, float(got), ref, floor)


def _to(inputs, device: str):  # noqa: ANN001, ANN202 - any of the Stage*Inputs
    return replace(inputs, **{f.name: getattr(inputs, f.name).to(device) for f in fields(inputs)
                              if getattr(inputs, f.name) is not None})
