"""Pure post-processing of UniSH: metric scaling, focal/shift recovery, intrinsics, depth/point maps, rotations."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unish_model.geometry import relative_to_first, se3_inverse, transform_points
from unish_model.postprocess import (
    UniSHOutput, axis_angle_to_matrix, bbox_condition_from_pixels, confidence_mask, depth_to_point_map, finalize,
    get_solver, intrinsics_from_focal, keep_in_front, matrix_to_axis_angle, metric_scale, normalization_factor,
    root_to_world, scipy_focal_shift, torch_focal_shift, translation_to_world,
)

REPO = Path(__file__).resolve().parents[1]


def _pinhole_points(height: int, width: int, focal_px: float, depth: torch.Tensor) -> torch.Tensor:
    """Camera-frame points of a centred pinhole camera: x = (u + 0.5 - W/2) / f * z."""
    u = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    v = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    x = u[None, :] / focal_px * depth
    y = v[:, None] / focal_px * depth
    return torch.stack((x, y, depth), dim=-1)


def _scene_depth(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(2.0, 4.0, width, dtype=torch.float64)[None].expand(height, width)
    return ramp + 0.5 * torch.rand(height, width, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("solver", ["torch", "scipy"])
def test_focal_and_shift_recovered_on_a_synthetic_pinhole_map(solver):
    """Tolerance: focal (in pixels) within 0.1 % and shift within 1e-3 scene units; the map is exact, so the
    torch solver is far better than that (checked below) and scipy's LM (ftol 1e-3) stays within it."""
    height, width, focal_px = 48, 80, 70.0
    shifts = torch.tensor([0.0, 0.7, -0.4])  # the network's z is off by -shift
    maps = torch.stack([_pinhole_points(height, width, focal_px, _scene_depth(height, width, i)) for i in range(3)])
    maps[..., 2] -= shifts[:, None, None].double()
    mask = torch.ones(3, height, width, dtype=torch.bool)
    mask[1, :10] = False  # masked pixels are ignored
    maps[1, :10] = 1e3
    focal, shift = get_solver(solver)(maps.float()[None], mask[None])
    assert focal.shape == shift.shape == (1, 3)
    k, _ = intrinsics_from_focal(focal, height, width)
    assert torch.allclose(k[..., 0, 0], torch.full((1, 3), focal_px), rtol=1e-3)
    assert torch.allclose(k[..., 1, 1], k[..., 0, 0]) and torch.allclose(k[..., :2, 2], torch.tensor([40.0, 24.0]))
    assert torch.allclose(shift[0], shifts, atol=1e-3)
    if solver == "torch":
        assert torch.allclose(k[..., 0, 0], torch.full((1, 3), focal_px), rtol=1e-5)
        assert torch.allclose(shift[0], shifts, atol=1e-5)


def test_scipy_solver_handles_frames_without_enough_valid_pixels():
    points = torch.rand(2, 16, 16, 3) + 1
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[1] = True
    focal, shift = scipy_focal_shift(points, mask)
    assert focal[0] == 1 and shift[0] == 0 and focal[1] != 1


def test_point_map_unprojects_back_to_the_pinhole_points():
    height, width, focal_px = 12, 20, 17.0
    depth = _scene_depth(height, width, 3).float()
    focal = torch.tensor(focal_px / (math.hypot(height, width) / 2))
    k_px, k_norm = intrinsics_from_focal(focal, height, width)
    assert torch.allclose(k_px[0, 0], torch.tensor(focal_px)) and torch.allclose(k_norm[0, 0], torch.tensor(17 / 20))
    points = depth_to_point_map(depth[None], k_norm[None])[0]
    assert torch.allclose(points, _pinhole_points(height, width, focal_px, depth.double()).float(), atol=1e-5)


def test_metric_scale_uses_only_masked_points():
    local = torch.zeros(2, 2, 3, 4, 3)
    local[..., 2] = 2.0  # every point at distance 2 ...
    local[1, :, 0, 0] = torch.tensor([0.0, 3.0, 4.0])  # ... batch 1 has distance-5 points too
    mask = torch.ones(2, 2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False  # excluded pixels must not count
    local[0, 1] = 100.0
    norm = normalization_factor(local, mask)
    assert torch.allclose(norm, torch.tensor([2.0, (22 * 2 + 2 * 5) / 24]))
    assert torch.allclose(metric_scale(torch.tensor([[3.0], [1.0]]), local, mask), torch.tensor([1.5, 1 / norm[1]]))


def test_confidence_mask_and_in_front_test():
    conf = torch.tensor([[0.05, 0.1, 0.2]])
    assert confidence_mask(conf).tolist() == [[False, False, True]]
    depth = torch.tensor([[[0.1, 0.5], [1.0, 2.0]]])
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    assert keep_in_front(mask, depth, torch.tensor([-0.5])).tolist() == [[[False, False], [True, True]]]


def test_bbox_condition_divides_by_the_mean_focal():
    k = torch.diag(torch.tensor([200.0, 300.0, 1.0]))[None]
    assert torch.allclose(bbox_condition_from_pixels(torch.tensor([[25.0, -50.0, 100.0]]), k),
                          torch.tensor([[0.1, -0.2, 0.4]]))


def _random_rotations(count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(count, 3, 3, generator=g, dtype=torch.float64))
    return q * torch.det(q)[:, None, None]


def test_axis_angle_round_trips_including_small_and_half_turn_angles():
    axes = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=-1)
    angles = torch.tensor([0.0, 1e-7, 1e-3, 1.0, 3.0, math.pi - 1e-6], dtype=torch.float64)
    aa = axes * angles[:, None]
    back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
    assert torch.allclose(back, aa, atol=1e-6)
    rot = _random_rotations(64, 0)
    assert torch.allclose(axis_angle_to_matrix(matrix_to_axis_angle(rot)), rot, atol=1e-10)
    # a known case: 90 degrees about z maps x to y
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    assert torch.allclose(r @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_smpl_to_world_composes_the_root_only():
    pose = _random_rotations(2 * 3 * 24, 1).reshape(2, 3, 24, 3, 3)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 3, 1, 1)
    c2w[..., :3, :3] = _random_rotations(6, 2).reshape(2, 3, 3, 3)
    c2w[..., :3, 3] = torch.randn(2, 3, 3, dtype=torch.float64)
    world = root_to_world(pose, c2w)
    assert torch.allclose(world[:, :, 0], c2w[..., :3, :3] @ pose[:, :, 0])
    assert torch.equal(world[:, :, 1:], pose[:, :, 1:])
    trans = torch.randn(2, 3, 3, dtype=torch.float64)
    expected = (c2w[..., :3, :3] @ trans[..., None])[..., 0] + c2w[..., :3, 3]
    assert torch.allclose(translation_to_world(trans, c2w), expected)


def _forward_output(seed: int = 0) -> UniSHOutput:
    """A hand-made forward output: 2 windows, 3 frames, 8x10 pixels, pinhole-like points."""
    g = torch.Generator().manual_seed(seed)
    b, n, h, w = 2, 3, 8, 10
    depth = 1 + torch.rand(b, n, h, w, generator=g)
    local = _pinhole_points(h, w, 9.0, torch.ones(h, w, dtype=torch.float64)).float() * depth[..., None]
    c2ws = torch.eye(4).repeat(b, n, 1, 1)
    c2ws[..., :3, :3] = _random_rotations(b * n, seed).float().reshape(b, n, 3, 3)
    c2ws[..., :3, 3] = torch.randn(b, n, 3, generator=g)
    cano = relative_to_first(c2ws)
    pose = _random_rotations(b * n * 24, seed + 1).float().reshape(b, n, 24, 3, 3)
    trans = torch.randn(b, n, 3, generator=g)
    conf = torch.rand(b, n, h, w, generator=g)
    return UniSHOutput(
        world_points=transform_points(cano, local), local_points=local, point_conf=conf, masks=conf > 0.1,
        c2ws=c2ws, c2ws_cano=cano, w2cs_cano=se3_inverse(cano), pose_cam=pose, pose_world=root_to_world(pose, cano),
        betas=torch.randn(b, 10, generator=g), trans_cam=trans, trans_world=translation_to_world(trans, cano),
        scale=torch.tensor([[2.0], [0.5]]), conf_logits=torch.logit(conf), scene_hidden=torch.zeros(b * n, 1, 4),
        human_token=torch.zeros(b, n, 4), betas_per_frame=torch.zeros(b, n, 10))


def test_finalize_applies_the_metric_scale_everywhere():
    out = _forward_output()
    given_focal = torch.full((2, 3), 1.3)
    given_shift = torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, -5.0]])  # -5: every pixel of that frame is behind
    seen = {}

    def solver(points, mask):
        seen["points"], seen["mask"] = points, mask
        return given_focal, given_shift

    res = finalize(out, solver)
    s = out.scale[:, 0] / normalization_factor(out.local_points, out.masks)
    assert torch.allclose(res.scale[:, 0], s)
    assert torch.allclose(res.local_points, out.local_points * s[:, None, None, None, None])
    assert torch.allclose(res.world_points, out.world_points * s[:, None, None, None, None])
    assert torch.allclose(seen["points"], res.local_points)  # the second solve sees the metric points
    for name in ("c2ws", "c2ws_cano"):
        raw, metric = getattr(out, name), getattr(res, name)
        assert torch.equal(metric[..., :3, :3], raw[..., :3, :3]) and torch.equal(metric[..., 3, :], raw[..., 3, :])
        assert torch.allclose(metric[..., :3, 3], raw[..., :3, 3] * s[:, None, None])
    assert torch.allclose(res.w2cs_cano, se3_inverse(res.c2ws_cano))
    # SMPL: translations scaled, the camera one also shifted in z; the world one stays consistent with the points
    assert torch.allclose(res.trans_world, out.trans_world * s[:, None, None])
    expected_cam = out.trans_cam * s[:, None, None]
    expected_cam[..., 2] += given_shift
    assert torch.allclose(res.trans_cam, expected_cam)
    assert torch.allclose(translation_to_world(res.trans_cam - torch.nn.functional.pad(given_shift[..., None], (2, 0)),
                                               res.c2ws_cano), res.trans_world, atol=1e-5)
    # depth and point maps from the shifted z; intrinsics from the focal; masks drop points behind the camera
    assert torch.allclose(res.depth_map, res.local_points[..., 2] + given_shift[..., None, None])
    assert torch.allclose(res.point_map[..., 2], res.depth_map)
    assert torch.allclose(res.intrinsics, intrinsics_from_focal(given_focal, 8, 10)[0])
    assert not res.masks[1, 2].any() and torch.equal(res.masks[0], out.masks[0])
    # rotations as axis-angle, betas repeated per frame
    assert res.pose_cam.shape == res.pose_world.shape == (2, 3, 72)
    assert torch.allclose(axis_angle_to_matrix(res.pose_world.reshape(2, 3, 24, 3)), out.pose_world, atol=1e-5)
    assert torch.equal(res.betas, out.betas[:, None].expand(2, 3, 10))


def test_solver_choice():
    assert get_solver("torch") is torch_focal_shift
    assert get_solver("scipy") is scipy_focal_shift
    custom = lambda points, mask: (points[..., 0, 0, 0], points[..., 0, 0, 0])  # noqa: E731
    assert get_solver(custom) is custom
    with pytest.raises(ValueError, match="unknown focal/shift solver"):
        get_solver("newton")


def test_scipy_solver_without_scipy_names_the_alternative(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # makes `import scipy.optimize` fail
    with pytest.raises(ImportError, match="solver='torch'"):
        get_solver("scipy")


def test_pipeline_imports_and_infers_with_torch_alone():
    """unish_model must run where only torch (+numpy, safetensors) is installed: scipy is blocked here."""
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("scipy", "prefect"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import torch
        from unish_model.pipeline import UniSH, UniSHConfig, person_inputs
        torch.manual_seed(0)
        model = UniSH(UniSHConfig.tiny()).eval()
        frames = torch.rand(2, 3, 28, 42)
        patches, bbox = person_inputs(frames, torch.tensor([[5.0, 2, 20, 26], [8, 3, 22, 27]]))
        out = model.infer(frames[None], patches[None], bbox[None])
        assert out.pose_world.shape == (1, 2, 72) and torch.isfinite(out.world_points).all()
        assert not any(m.split(".")[0] == "scipy" for m in sys.modules)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
