"""The SMPL fit to vertices in SMPL's topology (unish_model/body/fit.py): its Jacobian, and what it recovers from a
body whose SMPL parameters are known, expressed as SMPL-X vertices mapped back to SMPL's topology."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unish_model.benchmarks.rich import map_vertices
from unish_model.body import BodyModel, synthetic_body_arrays
from unish_model.body.fit import DEFAULT_MAX_FIT_ERROR_M, FitParams, _Skinning, fit_smpl, smpl_pose_from_smplx
from unish_model.geometry import axis_angle_to_matrix

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def body(tmp_path_factory) -> BodyModel:
    path = tmp_path_factory.mktemp("fit") / "smpl.npz"
    np.savez(path, **synthetic_body_arrays(seed=4, ring_size=8, rings=64))
    return BodyModel.from_file(path, dtype=F64)


def _known_bodies(body: BodyModel, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n frames of one person in a camera frame (upright for OpenCV: root turned by pi about x), 3-4 m away."""
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(n, 72, generator=g, dtype=F64) * 0.3
    pose[:, :3] += torch.tensor([np.pi, 0.0, 0.0], dtype=F64)
    betas = torch.randn(10, generator=g, dtype=F64).expand(n, -1)
    transl = torch.randn(n, 3, generator=g, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 3.5], dtype=F64)
    return pose, betas, transl


def _as_mapped_smplx(vertices: torch.Tensor, seed: int) -> torch.Tensor:
    """SMPL vertices placed among extra vertices at shuffled indices (an "SMPL-X" mesh), then mapped back to SMPL's
    topology through a sparse (V_smpl, V_smplx) map, as BEDLAM's conversion does."""
    n, vs, _ = vertices.shape
    rng = np.random.default_rng(seed)
    vx = vs + 61
    perm = torch.from_numpy(rng.permutation(vx)[:vs])
    smplx = torch.from_numpy(rng.normal(0, 1, size=(n, vx, 3)))  # the extra vertices: anything
    smplx[:, perm] = vertices
    mapping = torch.zeros(vs, vx, dtype=F64)
    mapping[torch.arange(vs), perm] = 1.0
    return map_vertices(mapping.to_sparse(), smplx)


def test_jacobian_equals_forward_mode_differentiation(body: BodyModel) -> None:
    """The written-out Jacobian against torch's forward-mode AD, every direction, at a random state."""
    skin = _Skinning(body, torch.arange(0, body.num_vertices, 3), 10)
    g = torch.Generator().manual_seed(0)
    n = 3
    rot = axis_angle_to_matrix(torch.randn(n, 24, 3, generator=g, dtype=F64) * 0.6)
    betas = torch.randn(n, 10, generator=g, dtype=F64)
    transl = torch.randn(n, 3, generator=g, dtype=F64)
    vertices, jac = skin.jacobian(rot, betas, transl)
    reference = body(rot[:, 0], rot[:, 1:], betas, transl).vertices[:, ::3]
    torch.testing.assert_close(vertices, reference, atol=1e-12, rtol=0)

    def moved(delta: torch.Tensor, d_transl: torch.Tensor, d_betas: torch.Tensor) -> torch.Tensor:
        return skin(rot @ axis_angle_to_matrix(delta), betas + d_betas, transl + d_transl)

    zero = (torch.zeros(n, 24, 3, dtype=F64), torch.zeros(n, 3, dtype=F64), torch.zeros(n, 10, dtype=F64))

    def along(e: torch.Tensor) -> torch.Tensor:  # one direction of one frame, applied to every frame
        tangent = (e[:72].reshape(1, 24, 3).expand(n, -1, -1), e[72:75].expand(n, 3), e[75:].expand(n, 10))
        return torch.func.jvp(moved, zero, tangent)[1]

    auto = torch.func.vmap(along)(torch.eye(85, dtype=F64)).permute(1, 2, 3, 0)  # (n, S, 3, 85)
    assert jac.shape == auto.shape == (n, len(reference[0]), 3, 85)
    # float64 throughout: agreement to ~1e-15 of each derivative's size; 1e-10 leaves room, a wrong term is O(1)
    size = auto.abs().amax(dim=(0, 1, 2))
    assert bool((size > 0).all())
    worst = ((jac - auto).abs().amax(dim=(0, 1, 2)) / size)
    assert float(worst.max()) < 1e-10, f"direction {int(worst.argmax())} is off by {float(worst.max()):.2e}"


def test_fit_recovers_a_known_smpl_body_from_mapped_smplx_vertices(body: BodyModel) -> None:
    n = 6
    pose, betas, transl = _known_bodies(body, n, seed=1)
    target = _as_mapped_smplx(body(pose[:, :3], pose[:, 3:], betas, transl).vertices, seed=2)
    # the start a SMPL-X body gives: root and body joints about right (here 0.1 rad off), hands at identity
    g = torch.Generator().manual_seed(3)
    start = pose + torch.randn(n, 72, generator=g, dtype=F64) * 0.1
    full = torch.zeros(n, 165, dtype=F64)
    full[:, :66] = start[:, :66]
    init = smpl_pose_from_smplx(full)
    assert (init[:, 66:] == 0).all() and (init[:, :66] == start[:, :66]).all()
    fit = fit_smpl(body, target, init)
    # The body is exactly a SMPL body: the fit's error is float64 round-off (measured 1e-15 m) plus where it stops
    # (converged_m = 1e-8 m rms); 1e-6 m is 20,000 times below the bound and far above both.
    assert float(fit.error.max()) < 1e-6 < DEFAULT_MAX_FIT_ERROR_M
    torch.testing.assert_close(fit.betas, betas, atol=1e-5, rtol=0)
    torch.testing.assert_close(fit.transl, transl, atol=1e-6, rtol=0)
    rel = axis_angle_to_matrix(fit.pose.reshape(n, 24, 3)).transpose(-1, -2) @ axis_angle_to_matrix(
        pose.reshape(n, 24, 3))
    angle = torch.arccos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    assert float(angle.max()) < 1e-4  # arccos near 1 resolves ~2e-8 rad; 1e-4 rad = 0.006 degrees
    # what the fit reports is what its parameters give
    again = body(fit.pose[:, :3], fit.pose[:, 3:], fit.betas, fit.transl).vertices
    torch.testing.assert_close((again - target).norm(dim=-1).mean(-1), fit.error, atol=1e-12, rtol=0)


def test_fit_error_of_a_body_smpl_cannot_express(body: BodyModel) -> None:
    """A known body plus a per-vertex displacement no SMPL parameter produces: the reported error is the distance
    that remains, about the displacement's size, and consistent with the returned parameters."""
    n = 4
    pose, betas, transl = _known_bodies(body, n, seed=5)
    exact = body(pose[:, :3], pose[:, 3:], betas, transl).vertices
    g = torch.Generator().manual_seed(6)
    sigma = 0.01
    noise = torch.randn(1, body.num_vertices, 3, generator=g, dtype=F64) * sigma  # the same on every frame
    fit = fit_smpl(body, exact + noise, pose)
    again = body(fit.pose[:, :3], fit.pose[:, 3:], fit.betas, fit.transl).vertices
    torch.testing.assert_close((again - exact - noise).norm(dim=-1).mean(-1), fit.error, atol=1e-12, rtol=0)
    # E|noise| = sigma * sqrt(8 / pi) = 1.6 cm per vertex; SMPL's 85 parameters per frame absorb a little of it
    expected = sigma * np.sqrt(8 / np.pi)
    assert 0.8 * expected < float(fit.error.min()) <= float(fit.error.max()) < expected
    # and never more than the fit started from: the exact body's own distance to the target
    assert float(fit.error.max()) <= float(noise.norm(dim=-1).mean()) + 1e-12


def test_per_frame_betas_and_bad_shapes(body: BodyModel) -> None:
    pose, betas, transl = _known_bodies(body, 2, seed=7)
    betas = betas.clone()
    betas[1] += 0.5  # two shapes: only per-frame betas can fit both exactly
    target = body(pose[:, :3], pose[:, 3:], betas, transl).vertices
    shared = fit_smpl(body, target, pose)
    per_frame = fit_smpl(body, target, pose, FitParams(shared_betas=False))
    assert float(per_frame.error.max()) < 1e-6 < float(shared.error.max())
    torch.testing.assert_close(per_frame.betas, betas, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="target must be"):
        fit_smpl(body, target[:, :10], pose)
