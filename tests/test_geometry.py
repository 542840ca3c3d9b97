"""Geometry helpers: SVD rotation projection, rigid transforms, focal/shift recovery and intrinsics."""
from __future__ import annotations

import math

import pytest
import torch

from unish_model.geometry import (
    focal_to_intrinsics,
    homogenize,
    normalized_view_plane_uv,
    pose_from_rotation_translation,
    recover_focal_shift,
    relative_to_first,
    se3_inverse,
    svd_rotation,
    transform_points,
)


def _random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.det(q)[:, None, None]  # det +1


def test_svd_rotation_returns_proper_rotations_and_keeps_rotations() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(64, 9, generator=g, dtype=torch.float64)
    r = svd_rotation(m)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.det(r), torch.ones(64, dtype=torch.float64))
    rot = _random_rotations(8, g)
    torch.testing.assert_close(svd_rotation(rot), rot)
    # rows are normalised first: positive row scales do not change the result
    torch.testing.assert_close(svd_rotation(rot * torch.tensor([2.0, 0.5, 7.0], dtype=torch.float64)[:, None]), rot)
    # a reflection is corrected to a rotation, not returned as is
    reflection = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    assert torch.det(svd_rotation(reflection[None]))[0] == pytest.approx(1.0)


def test_svd_rotation_is_the_closest_rotation() -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.nn.functional.normalize(torch.randn(16, 3, 3, generator=g, dtype=torch.float64), dim=-1)
    r = svd_rotation(m)
    best = (r * m).sum((-1, -2))  # trace(R^T M): maximal for the Frobenius-closest rotation
    for _ in range(20):
        other = _random_rotations(16, g)
        assert torch.all(best >= (other * m).sum((-1, -2)) - 1e-12)


def test_rigid_transforms_roundtrip() -> None:
    g = torch.Generator().manual_seed(2)
    rot = _random_rotations(6, g).reshape(2, 3, 3, 3)
    t = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    pose = pose_from_rotation_translation(rot, t)
    assert pose.shape == (2, 3, 4, 4)
    torch.testing.assert_close(pose @ se3_inverse(pose), torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4))
    points = torch.randn(2, 3, 5, 7, 3, generator=g, dtype=torch.float64)
    expected = torch.einsum("bnij,bnhwj->bnhwi", pose, homogenize(points))[..., :3]
    torch.testing.assert_close(transform_points(pose, points), expected)
    torch.testing.assert_close(transform_points(se3_inverse(pose), transform_points(pose, points)), points)
    rel = relative_to_first(pose)
    torch.testing.assert_close(rel[:, 0], torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    # relative poses keep the cameras' relative motion
    torch.testing.assert_close(se3_inverse(rel[:, 1]) @ rel[:, 2], se3_inverse(pose[:, 1]) @ pose[:, 2])


def _pinhole_point_map(height: int, width: int, fx: float, depth: torch.Tensor) -> torch.Tensor:
    """Unproject pixel centres with principal point at the image centre: (H, W, 3) camera-frame points."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    x = (xs - width / 2) / fx * depth
    y = (ys - height / 2) / fx * depth
    return torch.stack((x, y, depth), dim=-1)


def test_uv_grid_matches_pinhole_projection() -> None:
    height, width, fx = 6, 10, 9.0
    uv = normalized_view_plane_uv(height, width, dtype=torch.float64)
    points = _pinhole_point_map(height, width, fx, torch.full((height, width), 3.0, dtype=torch.float64))
    focal_rel = fx / (math.hypot(width, height) / 2)
    torch.testing.assert_close(focal_rel * points[..., :2] / points[..., 2:], uv)


@pytest.mark.parametrize("true_shift", [0.0, 0.7, -0.4])
def test_recover_focal_shift_from_a_shifted_point_map(true_shift: float) -> None:
    height, width, fx = 48, 80, 70.0
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height, dtype=torch.float64),
                            torch.linspace(0, 1, width, dtype=torch.float64), indexing="ij")
    depth = 2.0 + 1.5 * xs + 0.8 * torch.sin(3 * ys)  # varied depth makes the shift observable
    points = _pinhole_point_map(height, width, fx, depth)
    # a point map known up to a z shift: the model predicts z - shift
    points[..., 2] -= true_shift
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[:, :5] = False
    points[~mask] = torch.tensor([50.0, -50.0, 0.1], dtype=torch.float64)  # junk where masked out
    focal, shift = recover_focal_shift(points[None].float(), mask[None], downsample=(32, 32))
    half_diag = math.hypot(width, height) / 2
    assert focal.shape == (1,) and shift.shape == (1,)
    assert float(focal[0]) * half_diag == pytest.approx(fx, rel=1e-3)
    assert float(shift[0]) == pytest.approx(true_shift, abs=1e-3)

    k = focal_to_intrinsics(focal, height, width)[0]
    torch.testing.assert_close(k, torch.tensor([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1]]),
                               rtol=1e-3, atol=1e-2)
    k_norm = focal_to_intrinsics(focal, height, width, normalized=True)[0]
    torch.testing.assert_close(k_norm[0, 0] * width, k[0, 0])
    torch.testing.assert_close(k_norm[1, 1] * height, k[1, 1])
    assert float(k_norm[0, 2]) == 0.5 and float(k_norm[1, 2]) == 0.5


def test_recover_focal_shift_with_known_focal_and_empty_mask() -> None:
    height, width, fx = 32, 32, 40.0
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height, dtype=torch.float64),
                            torch.linspace(0, 1, width, dtype=torch.float64), indexing="ij")
    points = _pinhole_point_map(height, width, fx, 3.0 + xs * ys)
    points[..., 2] -= 0.5
    focal_rel = torch.tensor([fx / (math.hypot(width, height) / 2)])
    focal, shift = recover_focal_shift(points[None].float(), downsample=None, fixed_focal=focal_rel)
    assert float(shift[0]) == pytest.approx(0.5, abs=1e-3)
    torch.testing.assert_close(focal, focal_rel)
    # fewer than 2 valid pixels: focal 1, shift 0 (as MoGe)
    focal, shift = recover_focal_shift(points[None].float(), torch.zeros(1, height, width, dtype=torch.bool))
    assert float(focal[0]) == 1.0 and float(shift[0]) == 0.0
