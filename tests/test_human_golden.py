"""Our human branch vs the official UniSH human branch golden (tiny, random weights) + its pure helpers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from golden_helpers import TOL, load_golden, rel_err
from unish_model.convert.camerahmr import load_converted, unish_human_state
from unish_model.golden_calls import human_branch as runner
from unish_model.human import (
    HumanBranch, HumanBranchConfig, backbone_columns, bbox_condition, camerahmr_keypoints_2d, crop_patches,
    crop_transform, rot6d_to_rotmat, square_boxes, weak_perspective_to_translation,
)


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict, dict]:
    return load_golden("human_branch")


def test_runner_matches_every_official_output(golden):
    config, weights, io = golden
    result = runner.run(config, weights, io)
    expected = {k[4:] for k in io if k.startswith("out_")}
    assert set(result.outputs) == expected and not result.exempt
    for name in sorted(expected):
        ours, ref = result.outputs[name], io[f"out_{name}"]
        assert ours.shape == ref.shape, name
        assert rel_err(ours, ref) <= TOL, (name, rel_err(ours, ref))


def test_backbone_features_match_debug_output(golden):
    config, weights, io = golden
    model = HumanBranch(runner.human_config_from_golden(config))
    load_converted(model, unish_human_state(weights), "golden").eval()
    patches = torch.from_numpy(io["in_human_patches"]).flatten(0, 1)
    with torch.no_grad():
        features = model.backbone(backbone_columns(patches)).numpy()
    assert rel_err(features, io["dbg_backbone_features"]) <= TOL


@pytest.mark.parametrize("key", [
    "backbone.blocks.1.attn.qkv.weight",
    "human_head.transformer.transformer.layers.1.1.fn.to_kv.weight",
    "human_head.init_body_pose",
])
def test_perturbed_weight_is_detected(golden, key):
    config, weights, io = golden
    bad = dict(weights)
    bad[key] = weights[key] + 0.01 * torch.randn(weights[key].shape, generator=torch.Generator().manual_seed(0))
    result = runner.run(config, bad, io)
    worst = max(rel_err(result.outputs[k], io[f"out_{k}"]) for k in result.outputs)
    assert worst > 1e-4


def test_unknown_golden_key_is_rejected(golden):
    config, weights, io = golden
    bad = dict(weights)
    bad["human_head.deccam_typo.weight"] = torch.zeros(3, 1024)
    with pytest.raises(Exception, match="deccam_typo"):
        runner.run(config, bad, io)


def test_optional_camerahmr_heads_and_shapes():
    cfg = HumanBranchConfig.tiny(with_camera_head=True, with_keypoint_head=True)
    model = HumanBranch(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 3, 256, 192), torch.rand(2, 3, 3))
    assert out.rotmats.shape == (2, 3, 24, 3, 3) and out.betas.shape == (2, 3, 10)
    assert out.token.shape == (2, 3, 1024) and out.camera.shape == (2, 3, 3)
    assert out.keypoints_raw.shape == (2, 3, 44, 2)
    assert HumanBranch(HumanBranchConfig.tiny()).head.camera_out is None
    with pytest.raises(ValueError, match="backbone_columns"):
        model(torch.rand(1, 3, 256, 256), torch.rand(1, 3))


def test_paper_config_sizes():
    cfg = HumanBranchConfig.paper()
    assert cfg.grid == (16, 12) and cfg.query_dim == 160 and cfg.vit_width == 1280 and cfg.vit_depth == 32
    assert not cfg.with_camera_head and HumanBranchConfig.camerahmr().with_keypoint_head


def test_rot6d_layout_and_orthonormality():
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert torch.allclose(rot6d_to_rotmat(identity), torch.eye(3))
    # the first three numbers are the first column (official reshape(2, 3).permute)
    r = rot6d_to_rotmat(torch.tensor([0.0, 2.0, 0.0, -1.0, 0.0, 0.0]))
    assert torch.allclose(r[:, 0], torch.tensor([0.0, 1.0, 0.0]))
    mats = rot6d_to_rotmat(torch.randn(50, 6))
    assert torch.allclose(mats @ mats.transpose(-1, -2), torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(mats), torch.ones(50), atol=1e-5)


def test_crop_matches_official_cv2_warp():
    # the official crop: cv2.getAffineTransform of (centre, centre+down, centre+right) and warpAffine
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([np.sin(xx / 9), np.cos(yy / 7), (xx + yy) / (h + w)], axis=-1).astype(np.float32)
    cx, cy, size = 70.3, 52.6, 90.0
    src = np.float32([[cx, cy], [cx, cy + size / 2], [cx + size / 2, cy]])
    dst = np.float32([[128, 128], [128, 256], [256, 128]])
    official_m = cv2.getAffineTransform(src, dst)
    ours_m = crop_transform(torch.tensor([cx, cy]), torch.tensor(size)).numpy()
    assert np.allclose(ours_m, official_m, atol=1e-4)
    official = cv2.warpAffine(image, official_m, (256, 256), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ours = crop_patches(torch.from_numpy(image).permute(2, 0, 1)[None], torch.tensor([[cx, cy]]),
                        torch.tensor([size]))[0].permute(1, 2, 0).numpy()
    inside = slice(20, 236)  # away from the image border (the box is larger than the image)
    assert np.abs(ours[inside, inside] - official[inside, inside]).max() < 5e-3
    assert backbone_columns(torch.zeros(1, 3, 256, 256)).shape[-1] == 192


def test_box_and_bbox_condition():
    centre, size = square_boxes(torch.tensor([[10.0, 20.0, 50.0, 120.0]]), scale=1.2)
    assert torch.allclose(centre, torch.tensor([[30.0, 70.0]])) and torch.allclose(size, torch.tensor([120.0]))
    info = bbox_condition(centre, size, (200, 300), torch.tensor([500.0]))
    assert torch.allclose(info, torch.tensor([[(30 - 150) / 500, (70 - 100) / 500, 120 / 500]]))


def test_camera_translation_and_keypoints_follow_camerahmr():
    centre, size, hw, focal = torch.tensor([[300.0, 200.0]]), torch.tensor([150.0]), (480, 640), torch.tensor([800.0])
    cam = torch.tensor([[0.8, 0.0, 0.0]])
    t = weak_perspective_to_translation(cam, centre, size, hw, focal)
    assert torch.allclose(t[0, 2], torch.tensor(2 * 800 / (150 * 0.8)))
    # a joint at the body origin lands on the box centre; an offset X moves s*X*size/2 pixels (crop space)
    joints = torch.tensor([[[0.0, 0.0, 0.0], [0.5, -0.25, 0.0]]])
    kp = camerahmr_keypoints_2d(joints, cam, centre, size, hw, focal)
    assert torch.allclose(kp[0, 0], centre[0], atol=1e-3)
    assert torch.allclose(kp[0, 1], centre[0] + torch.tensor([0.5, -0.25]) * 0.8 * 150 / 2, atol=1e-3)
