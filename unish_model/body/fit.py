"""SMPL fitted to vertices in SMPL's topology, batched, in torch: how SMPL-X ground truth (BEDLAM) becomes the SMPL
the model predicts.

The target is one body per frame, as vertices in SMPL's topology: SMPL-X vertices mapped through the (6890, 10475)
SMPL-X -> SMPL vertex map (`unish_model.benchmarks.rich.load_smplx2smpl` reads it, `map_vertices` applies it).
`fit_smpl` finds, per frame, SMPL's 24 joint rotations and its translation, and one shape (betas) shared by the
frames of a call (they are one person; or one per frame), minimising the sum of squared vertex distances:

- Start: the caller's rotations (for SMPL-X, its root and 21 body joints, which are SMPL's joints 0-21, with SMPL's
  hand joints at identity: `smpl_pose_from_smplx`), betas zero, the translation that matches the meshes' centroids.
- Levenberg-Marquardt (a damped Gauss-Newton method), in float64.  Each rotation is updated on the right,
  R <- R exp(d), with d in axis-angle linearised at zero, so no angle is ever near a singularity.  The Jacobian
  (per frame: 24 x 3 rotation increments, 3 translation, 10 betas) is written out (`_Skinning.jacobian`; the tests
  check it against forward-mode automatic differentiation): turning joint k by d turns every vertex's share that
  follows k's subtree about k's position, and moves the pose blend shapes of k; betas move the template, the shape
  blend shapes and the joints.  The normal equations are solved frame by frame, the shared betas eliminated by
  their Schur complement.
- The optimisation sees every `stride`-th vertex (at most `max_vertices` of them: 1,723 of SMPL's 6,890); the
  reported error uses all of them.

The result carries per frame `error`, the mean Euclidean distance between fitted and target vertices (metres),
which a caller checks against a bound (`DEFAULT_MAX_FIT_ERROR_M`).  On bodies SMPL represents exactly (a SMPL body
expressed as mapped SMPL-X vertices) the fit ends at ~1e-9 m from rotations 0.1 rad off (tests/test_body_fit.py).
Real SMPL-X bodies are not exactly SMPL bodies (other joint positions, blend shapes, hands): published SMPL-X -> SMPL
conversions report mean vertex errors of a few millimetres.  The default bound, 2 cm, is several times that: a frame
above it is a failed fit (a wrong map or model file, a wildly wrong start), not a conversion residual.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from unish_model.body.model import NUM_JOINTS, BodyModel
from unish_model.geometry import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["DEFAULT_MAX_FIT_ERROR_M", "FIT_VERSION", "FitParams", "SmplFit", "fit_smpl", "smpl_pose_from_smplx"]

FIT_VERSION = "1"
DEFAULT_MAX_FIT_ERROR_M = 0.02
_PER_FRAME = NUM_JOINTS * 3 + 3  # rotation increments and translation of one frame


@dataclass(frozen=True)
class FitParams:
    iterations: int = 30  # Levenberg-Marquardt iterations at most
    max_vertices: int = 1800  # vertices the optimisation sees (every stride-th); the error uses all
    shared_betas: bool = True  # one shape for all frames of a call (one person)
    num_betas: int = 10
    tolerance: float = 1e-8  # stop when an iteration lowers the cost by less than this fraction,
    converged_m: float = 1e-8  # or when the root-mean-square vertex distance is below this (metres)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SmplFit:
    pose: Tensor  # (N, 72) axis-angle, root first, float64
    betas: Tensor  # (N, num_betas)
    transl: Tensor  # (N, 3) SMPL `transl` (added after the root rotation about the rest pelvis)
    error: Tensor  # (N,) mean per-vertex Euclidean distance to the target over all vertices, metres
    max_error: Tensor  # (N,) largest per-vertex distance, metres
    iterations: int


def smpl_pose_from_smplx(full_pose: Tensor) -> Tensor:
    """(N, 165) or (N, 55, 3) SMPL-X axis-angle -> (N, 72) SMPL: root and body joints 0-21 as they are, SMPL's
    hand joints 22 / 23 at identity.  A start for `fit_smpl`, not a conversion."""
    pose = torch.as_tensor(full_pose).reshape(-1, 55 * 3)
    return torch.cat([pose[:, :66], torch.zeros(pose.shape[0], 6, dtype=pose.dtype, device=pose.device)], dim=1)


class _Skinning:
    """SMPL on a subset of its vertices, functional (no in-place writes, so forward-mode derivatives go through):
    joints from precomputed regressors of the template and the shape directions."""

    def __init__(self, model: BodyModel, index: Tensor, num_betas: int):
        f64 = torch.float64
        shapedirs = model.shapedirs[..., :num_betas].to(f64)
        self.template = model.v_template.to(f64)[index]
        self.shapedirs = shapedirs[index]  # (S, 3, B)
        # BodyModel keeps posedirs as (207, V*3): take the subset's columns
        cols = (index[:, None] * 3 + torch.arange(3)).reshape(-1)
        self.posedirs = model.posedirs.to(f64)[:, cols]  # (207, S*3)
        self.weights = model.weights.to(f64)[index]  # (S, 24)
        regressor = model.J_regressor.to(f64)
        self.joint_template = regressor @ model.v_template.to(f64)  # (24, 3)
        self.joint_shapedirs = torch.einsum("jv,vcb->jcb", regressor, shapedirs)  # (24, 3, B)
        self.parents = model.parents.tolist()
        subtree = torch.eye(NUM_JOINTS, dtype=f64)  # subtree[k, d] = 1 when d is k or below it
        for d in range(NUM_JOINTS - 1, 0, -1):  # parents come before their children
            subtree[:, self.parents[d]] += subtree[:, d]
        self.subtree = subtree.clamp_max(1).T.contiguous()

    def _pose(self, rot: Tensor, betas: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(posed rest vertices (n, S, 3), shaped joints (n, 24, 3), world rotations (n, 24, 3, 3), joint positions
        (n, 24, 3)), untranslated."""
        n = rot.shape[0]
        shaped = self.template + torch.einsum("nb,scb->nsc", betas, self.shapedirs)
        joints = self.joint_template + torch.einsum("nb,jcb->njc", betas, self.joint_shapedirs)
        eye = torch.eye(3, dtype=rot.dtype)
        posed = shaped + ((rot[:, 1:] - eye).reshape(n, -1) @ self.posedirs).reshape(n, -1, 3)
        rots, origins = [rot[:, 0]], [joints[:, 0]]
        for j in range(1, NUM_JOINTS):
            p = self.parents[j]
            rots.append(rots[p] @ rot[:, j])
            origins.append(origins[p] + (rots[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
        return posed, joints, torch.stack(rots, 1), torch.stack(origins, 1)

    def __call__(self, rot: Tensor, betas: Tensor, transl: Tensor) -> Tensor:
        """rot (n, 24, 3, 3), betas (n, B), transl (n, 3) -> vertices (n, S, 3)."""
        posed, joints, world_rot, origins = self._pose(rot, betas)
        # a rest point x moves with joint j to world_rot_j (x - J_j) + origin_j
        offset = origins - (world_rot @ joints[..., None])[..., 0]  # (n, 24, 3)
        blend_rot = torch.einsum("sj,njab->nsab", self.weights, world_rot)
        blend_off = torch.einsum("sj,nja->nsa", self.weights, offset)
        return (blend_rot @ posed[..., None])[..., 0] + blend_off + transl[:, None]

    def jacobian(self, rot: Tensor, betas: Tensor, transl: Tensor) -> tuple[Tensor, Tensor]:
        """(vertices (n, S, 3), their derivatives (n, S, 3, 72 + 3 + B)) with respect to the rotation increments
        d (rot_k <- rot_k exp(d_k), joint-major), the translation and the betas, at d = 0."""
        n, s = rot.shape[0], self.template.shape[0]
        nb = self.shapedirs.shape[-1]
        posed, joints, world_rot, origins = self._pose(rot, betas)
        # where each joint alone would take each vertex: y[n, s, j] = A_j (x_s - J_j) + o_j
        y = torch.einsum("njab,nsjb->nsja", world_rot, posed[:, :, None] - joints[:, None]) + origins[:, None]
        vertices = torch.einsum("sj,nsja->nsa", self.weights, y) + transl[:, None]
        # turning joint k by d turns the share of each vertex that follows k's subtree about o_k, axis A_k d:
        # dv/dd = -[u]x A_k with u = sum over k's subtree of w (y - o_k)
        w_sub = self.weights @ self.subtree.T  # (S, 24): weight of each joint's subtree
        u = torch.einsum("kd,sd,nsda->nska", self.subtree, self.weights, y) - w_sub[None, :, :, None] * origins[:, None]
        axes = world_rot.transpose(-1, -2)  # axes[n, k, i] = A_k e_i
        d_rot = torch.cross(axes[:, None].expand(n, s, -1, -1, -1), u[:, :, :, None].expand(-1, -1, -1, 3, -1),
                            dim=-1)  # (n, S, 24, 3 (i), 3 (coordinate))
        # and moves the pose blend shapes of k: x += P_k vec(R_k [e_i]x - ...)
        gen = torch.zeros(3, 3, 3, dtype=rot.dtype)
        gen[0, 2, 1], gen[0, 1, 2], gen[1, 0, 2], gen[1, 2, 0], gen[2, 1, 0], gen[2, 0, 1] = 1, -1, 1, -1, 1, -1
        d_feature = torch.einsum("nkab,ibc->nkiac", rot[:, 1:], gen).reshape(n, NUM_JOINTS - 1, 3, 9)
        d_posed = torch.einsum("nkif,kfsc->nkisc", d_feature, self.posedirs.reshape(NUM_JOINTS - 1, 9, s, 3))
        blend_rot = torch.einsum("sj,njab->nsab", self.weights, world_rot)
        d_rot[:, :, 1:] += torch.einsum("nsab,nkisb->nskia", blend_rot, d_posed)
        # betas: the template and its blend shapes move, and so do the joints (and with them every origin)
        d_origin = [self.joint_shapedirs[0].expand(n, 3, nb)]
        for j in range(1, NUM_JOINTS):
            p = self.parents[j]
            d_origin.append(d_origin[p] + world_rot[:, p] @ (self.joint_shapedirs[j] - self.joint_shapedirs[p]))
        d_origin_t = torch.stack(d_origin, 1)  # (n, 24, 3, B)
        rotated_joint_dirs = world_rot @ self.joint_shapedirs  # (n, 24, 3, B)
        d_betas = torch.einsum("nsab,sbk->nsak", blend_rot, self.shapedirs) + \
            torch.einsum("sj,njak->nsak", self.weights, d_origin_t - rotated_joint_dirs)
        d_transl = torch.eye(3, dtype=rot.dtype).expand(n, s, 3, 3)
        jac = torch.cat([d_rot.permute(0, 1, 4, 2, 3).reshape(n, s, 3, NUM_JOINTS * 3), d_transl, d_betas], dim=-1)
        return vertices, jac


def fit_smpl(body: BodyModel, target: Tensor, init_pose: Tensor | None = None,
             params: FitParams = FitParams()) -> SmplFit:
    """Fit SMPL to `target` (N, V, 3) vertices in the body model's topology (metres); `init_pose` (N, 72)
    axis-angle (zero when None).  See the module docstring."""
    f64 = torch.float64
    target = torch.as_tensor(target, dtype=f64)
    v = body.num_vertices
    if target.ndim != 3 or target.shape[1:] != (v, 3):
        raise ValueError(f"target must be (N, {v}, 3), got {tuple(target.shape)}")
    if params.num_betas > body.num_betas:
        raise ValueError(f"{params.num_betas} betas asked for, the model has {body.num_betas}")
    n, nb = target.shape[0], params.num_betas
    stride = max(1, math.ceil(v / params.max_vertices))
    index = torch.arange(0, v, stride)
    skin = _Skinning(body, index, nb)
    full = _Skinning(body, torch.arange(v), nb) if stride > 1 else skin
    goal = target[:, index]
    init = torch.zeros(n, NUM_JOINTS * 3, dtype=f64) if init_pose is None else \
        torch.as_tensor(init_pose, dtype=f64).reshape(n, NUM_JOINTS * 3)
    rot = axis_angle_to_matrix(init.reshape(n, NUM_JOINTS, 3))
    betas = torch.zeros(nb, dtype=f64) if params.shared_betas else torch.zeros(n, nb, dtype=f64)
    transl = torch.zeros(n, 3, dtype=f64)

    def frame_betas(b: Tensor) -> Tensor:
        return b.expand(n, nb) if params.shared_betas else b

    transl = target.mean(1) - full(rot, frame_betas(betas), transl).mean(1)

    def jacobian() -> tuple[Tensor, Tensor]:
        """(residuals (n, M), Jacobian (n, M, 85)) at the current parameters."""
        vertices, jac = skin.jacobian(rot, frame_betas(betas), transl)
        return (vertices - goal).reshape(n, -1), jac.reshape(n, -1, jac.shape[-1])

    def cost(rot_: Tensor, transl_: Tensor, betas_: Tensor) -> float:
        return float(((skin(rot_, frame_betas(betas_), transl_) - goal) ** 2).sum())

    good_enough = params.converged_m ** 2 * goal.shape[0] * goal.shape[1]
    current, lam, it = cost(rot, transl, betas), 1e-3, 0
    while it < params.iterations and current > good_enough:
        it += 1
        r, jac = jacobian()
        h = jac.transpose(1, 2) @ jac  # (n, 85, 85)
        g = (jac.transpose(1, 2) @ r[..., None])[..., 0]  # (n, 85)
        for _ in range(12):  # raise the damping until the step lowers the cost
            trial = _apply(rot, transl, betas, _solve(h, g, lam, params.shared_betas), params.shared_betas)
            new = cost(*trial)
            if new < current:
                break
            lam *= 10
        else:
            break  # no step lowers the cost: converged as far as float64 goes
        rot, transl, betas = trial
        lam = max(lam / 10, 1e-12)
        done = current - new <= params.tolerance * current
        current = new
        if done:
            break
    with torch.no_grad():
        dist = (full(rot, frame_betas(betas), transl) - target).norm(dim=-1)
    pose = matrix_to_axis_angle(rot).reshape(n, NUM_JOINTS * 3)
    return SmplFit(pose=pose, betas=frame_betas(betas).clone(), transl=transl.clone(), error=dist.mean(-1),
                   max_error=dist.amax(-1), iterations=it)


def _solve(h: Tensor, g: Tensor, lam: float, shared: bool) -> Tensor:
    """The damped Gauss-Newton step (n, 85) for per-frame normal equations h (n, 85, 85), g (n, 85) (the step
    solves (H + lam diag H) step = -g); with shared betas their rows couple the frames (Schur complement)."""
    damp = torch.diagonal(h, dim1=1, dim2=2) * lam + 1e-12
    hd = h + torch.diag_embed(damp)
    if not shared:
        return -torch.linalg.solve(hd, g)
    k = _PER_FRAME
    a, b, c = hd[:, :k, :k], hd[:, :k, k:], h[:, k:, k:]
    ga, gb = g[:, :k], g[:, k:]
    # the betas' block sums over frames; so does its damping
    c_total = c.sum(0) + torch.diag(torch.diagonal(c.sum(0)) * lam + 1e-12)
    a_inv_b = torch.linalg.solve(a, b)  # (n, k, B)
    a_inv_g = torch.linalg.solve(a, ga[..., None])[..., 0]  # (n, k)
    schur = c_total - (b.transpose(1, 2) @ a_inv_b).sum(0)
    rhs = gb.sum(0) - (b.transpose(1, 2) @ a_inv_g[..., None])[..., 0].sum(0)
    d_betas = -torch.linalg.solve(schur, rhs)
    d_frames = -(a_inv_g + (a_inv_b @ d_betas[:, None])[..., 0])
    return torch.cat([d_frames, d_betas.expand(h.shape[0], -1)], dim=1)


def _apply(rot: Tensor, transl: Tensor, betas: Tensor, step: Tensor, shared: bool) -> tuple[Tensor, Tensor, Tensor]:
    n = rot.shape[0]
    delta = step[:, :NUM_JOINTS * 3].reshape(n, NUM_JOINTS, 3)
    d_betas = step[0, _PER_FRAME:] if shared else step[:, _PER_FRAME:]
    return rot @ axis_angle_to_matrix(delta), transl + step[:, NUM_JOINTS * 3:_PER_FRAME], betas + d_betas
