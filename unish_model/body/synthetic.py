"""A made-up body model in SMPL's `.npz` layout (`model.py`), for tests and demos: SMPL itself cannot be
redistributed.

Its mesh is one closed genus-0 tube that walks the SMPL skeleton (down each limb and back), so by default it has
SMPL's vertex and face counts (6890 = 287 rings of 24 + 2 poles; faces = 2 V - 4 = 13776), SMPL's joints, parents
and array shapes, skinning weights that follow each bone, and small random shape and pose blend shapes.  It is not
SMPL: use it for plumbing, never for numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from unish_model.body.model import NUM_JOINTS, SMPL_PARENTS

__all__ = ["synthetic_body_arrays", "write_synthetic_body_model"]

# approximate SMPL neutral rest joints (metres; y up, +x is the body's left, facing +z)
_REST_JOINTS = np.array([
    [0.000, -0.223, 0.028], [0.068, -0.316, 0.015], [-0.068, -0.316, 0.015], [0.000, -0.110, 0.000],
    [0.105, -0.690, 0.020], [-0.105, -0.690, 0.020], [0.005, 0.027, 0.029], [0.088, -1.087, -0.018],
    [-0.088, -1.087, -0.018], [0.003, 0.081, 0.031], [0.118, -1.143, 0.105], [-0.118, -1.143, 0.105],
    [0.000, 0.290, -0.005], [0.076, 0.198, 0.001], [-0.076, 0.198, 0.001], [0.005, 0.352, 0.050],
    [0.198, 0.240, -0.012], [-0.198, 0.240, -0.012], [0.455, 0.225, -0.040], [-0.455, 0.225, -0.040],
    [0.708, 0.235, -0.045], [-0.708, 0.235, -0.045], [0.792, 0.225, -0.055], [-0.792, 0.225, -0.055],
])
# tube radius around the bone that starts at each joint (the joint the bone's vertices follow)
_RADIUS = np.array([0.10, 0.075, 0.075, 0.11, 0.05, 0.05, 0.12, 0.04, 0.04, 0.12, 0.035, 0.035,
                    0.05, 0.06, 0.06, 0.09, 0.045, 0.045, 0.04, 0.04, 0.03, 0.03, 0.025, 0.025])
# leaves get an end segment (toes, top of the head, fingers) skinned to them
_LEAF_TIPS = {10: (0.0, -0.02, 0.08), 11: (0.0, -0.02, 0.08), 15: (0.0, 0.18, 0.0),
              22: (0.09, 0.0, 0.0), 23: (-0.09, 0.0, 0.0)}


def _euler_tour(parents: tuple[int, ...]) -> list[tuple[int, np.ndarray, np.ndarray, int]]:
    """Walks (owner joint, start, end, ...) visiting every bone down and back; the owner is the joint whose
    transform the walk's vertices follow (the bone's parent end), and the last item its blend partner."""
    children: dict[int, list[int]] = {j: [] for j in range(NUM_JOINTS)}
    for j in range(1, NUM_JOINTS):
        children[parents[j]].append(j)
    walks: list[tuple[int, np.ndarray, np.ndarray, int]] = []

    def visit(j: int) -> None:
        here = _REST_JOINTS[j]
        if j in _LEAF_TIPS:
            tip = here + np.asarray(_LEAF_TIPS[j])
            walks.append((j, here, tip, j))
            walks.append((j, tip, here, j))
        for c in children[j]:
            walks.append((j, here, _REST_JOINTS[c], c))
            visit(c)
            walks.append((j, _REST_JOINTS[c], here, c))

    visit(0)
    return walks


def _ring_frame(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = direction / max(np.linalg.norm(direction), 1e-9)
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(d, u)


def synthetic_body_arrays(seed: int = 0, ring_size: int = 24, rings: int = 287,
                          num_betas: int = 10) -> dict[str, np.ndarray]:
    """Arrays of a made-up SMPL-layout model: V = rings * ring_size + 2, F = 2 * rings * ring_size."""
    walks = _euler_tour(SMPL_PARENTS)
    if rings < len(walks) or ring_size < 3:
        raise ValueError(f"need rings >= {len(walks)} (one per skeleton walk) and ring_size >= 3")
    rng = np.random.default_rng(seed)
    lengths = np.array([np.linalg.norm(e - s) for _, s, e, _ in walks])
    # every walk gets one ring; the rest go by length
    extra = rings - len(walks)
    share = lengths / lengths.sum() * extra
    counts = 1 + np.floor(share).astype(int)
    for i in np.argsort(-(share - np.floor(share)))[: rings - counts.sum()]:
        counts[i] += 1

    centres, frames_u, frames_w, radii, owners, partners, fracs = [], [], [], [], [], [], []
    for (owner, start, end, partner), count in zip(walks, counts):
        u, w = _ring_frame(end - start)
        is_tip_walk = owner == partner and owner in _LEAF_TIPS
        length = max(float(np.linalg.norm(end - start)), 1e-9)
        for t in np.arange(count) / count:  # t = 1 is the next walk's t = 0
            centre = start + t * (end - start)
            # position along the bone measured from the owner joint (walks back run t the other way)
            frac = float(np.linalg.norm(centre - _REST_JOINTS[owner])) / length
            centres.append(centre)
            frames_u.append(u)
            frames_w.append(w)
            radii.append(_RADIUS[owner] * (1 - 0.6 * frac) if is_tip_walk else _RADIUS[owner])  # tapered tips
            owners.append(owner)
            partners.append(partner)
            fracs.append(frac)
    centres_a = np.asarray(centres)
    angles = 2 * np.pi * np.arange(ring_size) / ring_size
    offsets = np.cos(angles)[None, :, None] * np.asarray(frames_u)[:, None] + \
        np.sin(angles)[None, :, None] * np.asarray(frames_w)[:, None]
    radii_a = np.asarray(radii)
    ring_vertices = centres_a[:, None] + radii_a[:, None, None] * offsets  # (rings, k, 3)
    pole_offset = np.array([0.0, 0.0, 0.01])
    v_template = np.concatenate([
        (_REST_JOINTS[0] - pole_offset)[None], ring_vertices.reshape(-1, 3), (_REST_JOINTS[0] + pole_offset)[None]])
    nv = v_template.shape[0]

    faces = _tube_faces(rings, ring_size)

    # skinning: each ring follows its owner; near the ends of a bone it blends with the neighbour joint
    weights = np.zeros((nv, NUM_JOINTS))
    ring_weights = np.zeros((rings, NUM_JOINTS))
    for i, (owner, partner, frac) in enumerate(zip(owners, partners, fracs)):
        blend_child = 0.5 * np.clip((frac - 0.8) / 0.2, 0, 1) if partner != owner else 0.0
        parent = SMPL_PARENTS[owner]
        blend_parent = 0.5 * np.clip((0.2 - frac) / 0.2, 0, 1) if parent >= 0 else 0.0
        ring_weights[i, owner] += 1 - blend_child - blend_parent
        if blend_child:
            ring_weights[i, partner] += blend_child
        if blend_parent:
            ring_weights[i, parent] += blend_parent
    weights[1:-1] = np.repeat(ring_weights, ring_size, axis=0)
    weights[0, 0] = weights[-1, 0] = 1.0

    # J_regressor: the mean of the rings centred on each joint (exact for a symmetric ring)
    j_regressor = np.zeros((NUM_JOINTS, nv))
    for j in range(NUM_JOINTS):
        on_joint = [i for i, c in enumerate(centres_a) if np.allclose(c, _REST_JOINTS[j], atol=1e-9)]
        if not on_joint:
            raise AssertionError(f"no ring on joint {j}")
        for i in on_joint:
            j_regressor[j, 1 + i * ring_size: 1 + (i + 1) * ring_size] = 1.0
        j_regressor[j] /= j_regressor[j].sum()

    # shape space: height, girth, then smooth random per-joint fields
    shapedirs = np.zeros((nv, 3, num_betas))
    centre_of_each = np.concatenate([centres_a[:1], np.repeat(centres_a, ring_size, axis=0), centres_a[-1:]])
    radial = v_template - centre_of_each
    if num_betas > 0:
        shapedirs[..., 0] = 0.06 * (v_template - _REST_JOINTS[0])
    if num_betas > 1:
        shapedirs[..., 1] = 0.3 * radial
    if num_betas > 2:
        per_joint = rng.normal(0, 0.01, size=(NUM_JOINTS, 3, num_betas - 2))
        shapedirs[..., 2:] = np.einsum("vj,jcb->vcb", weights, per_joint)
    # pose correctives: small, smooth, driven by the rotations of the vertex's own joints
    posedirs = np.zeros((nv, 3, 9 * (NUM_JOINTS - 1)))
    per_joint_pose = rng.normal(0, 0.004, size=(NUM_JOINTS, 3, 9))
    for j in range(1, NUM_JOINTS):
        posedirs[..., 9 * (j - 1): 9 * j] = weights[:, j, None, None] * per_joint_pose[j][None]

    kintree = np.stack([np.array(SMPL_PARENTS, dtype=np.int64), np.arange(NUM_JOINTS)])
    kintree[0, 0] = 2 ** 32 - 1  # as in SMPL's file
    return {
        "v_template": v_template.astype(np.float64), "f": faces.astype(np.uint32),
        "J_regressor": j_regressor, "weights": weights, "shapedirs": shapedirs, "posedirs": posedirs,
        "kintree_table": kintree,
    }


def _tube_faces(rings: int, k: int) -> np.ndarray:
    """Closed tube: first pole (vertex 0), rings of k vertices, last pole; outward-consistent winding."""
    faces = []
    last = rings * k + 1
    for i in range(k):
        faces.append((0, 1 + (i + 1) % k, 1 + i))
    for r in range(rings - 1):
        a, b = 1 + r * k, 1 + (r + 1) * k
        for i in range(k):
            i2 = (i + 1) % k
            faces.append((a + i, a + i2, b + i))
            faces.append((a + i2, b + i2, b + i))
    base = 1 + (rings - 1) * k
    for i in range(k):
        faces.append((last, base + i, base + (i + 1) % k))
    return np.asarray(faces, dtype=np.int64)


def write_synthetic_body_model(path: str | Path, seed: int = 0, ring_size: int = 24, rings: int = 287,
                               num_betas: int = 10) -> Path:
    """Write a plausible made-up body model in SMPL's `.npz` layout; defaults give SMPL's 6890 vertices and
    13776 faces.  Smaller: e.g. ring_size=8, rings=60 (482 vertices).  Not SMPL: for tests and demos only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_body_arrays(seed=seed, ring_size=ring_size, rings=rings, num_betas=num_betas)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path
