"""Z-buffer visibility (unish_model.losses.raster): meshes with a known visible side, and per-pixel agreement
with trimesh ray casts.

Pixel tolerance: the rasteriser and the ray cast sample the same pixel centres, so they must agree on every
pixel whose centre is farther than 1e-6 px from a projected triangle edge (float64 rounding can flip a centre
that sits on an edge; none of the checks below met one).  Depths agree to 1e-9 m (measured: ~4e-15).
Where the two pick different triangles at a pixel, both triangles must be hit at the same depth: the synthetic
SMPL mesh is a tube walked down and back along each bone, so most of its surface is doubled.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from trimesh.ray.ray_triangle import ray_triangle_id

from unish_model.body import BodyModel, write_synthetic_body_model
from unish_model.geometry import axis_angle_to_matrix
from unish_model.losses.raster import project_points, rasterize, visible_faces, visible_vertices

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two shared cores: no OpenMP spinning

F64 = torch.float64
EDGE_TOL_PX = 1e-6
DEPTH_TOL = 1e-9


def _camera(focal: float, height: int, width: int) -> torch.Tensor:
    return torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=F64)


def _rotation(*axis_angle: float) -> torch.Tensor:
    return axis_angle_to_matrix(torch.tensor(axis_angle, dtype=F64))


@pytest.fixture(scope="module")
def smpl(tmp_path_factory: pytest.TempPathFactory) -> BodyModel:
    path = write_synthetic_body_model(tmp_path_factory.mktemp("body") / "smpl.npz")  # SMPL's 6890 / 13776
    return BodyModel.from_file(path, dtype=F64)


# ------------------------------------------------------------------------------------------------ ray cast


class _BoxFilter:
    """The broad phase trimesh's ray caster asks an r-tree for (rtree is not installed here): the triangles
    whose bounding box meets a query box.  Exhaustive, so it never misses a candidate."""

    def __init__(self, triangles: np.ndarray) -> None:
        lo, hi = triangles.min(1), triangles.max(1)
        self.lo = [np.ascontiguousarray(lo[:, i]) for i in range(3)]
        self.hi = [np.ascontiguousarray(hi[:, i]) for i in range(3)]
        self.bounds = np.concatenate([lo.min(0), hi.max(0)])

    def intersection(self, box: np.ndarray) -> np.ndarray:
        ok = (self.hi[0] >= box[0]) & (self.lo[0] <= box[3])
        ok &= (self.hi[1] >= box[1]) & (self.lo[1] <= box[4])
        ok &= (self.hi[2] >= box[2]) & (self.lo[2] <= box[5])
        return np.nonzero(ok)[0]


def _ray_cast(vertices: np.ndarray, faces: np.ndarray, k: np.ndarray, height: int, width: int
              ) -> tuple[np.ndarray, np.ndarray, list[set[tuple[int, float]]]]:
    """trimesh's ray-triangle test through every pixel centre: (first face (H*W,), its depth (H*W,), all hits)."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    dirs = np.stack([(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1], np.ones_like(cols)], -1).reshape(-1, 3)
    tris = mesh.triangles
    tri, ray, loc = ray_triangle_id(tris, np.zeros_like(dirs), dirs, triangles_normal=mesh.face_normals,
                                    tree=_BoxFilter(tris), multiple_hits=True)
    first = np.full(len(dirs), -1)
    depth = np.full(len(dirs), np.inf)
    hits: list[set[tuple[int, float]]] = [set() for _ in range(len(dirs))]
    for t, r, z in zip(tri, ray, loc[:, 2]):
        hits[r].add((int(t), float(z)))
        if z < depth[r]:
            depth[r], first[r] = z, t
    return first, depth, hits


def _edge_distance(pixel: int, width: int, uv: np.ndarray, faces: np.ndarray) -> float:
    """Distance (px) from a pixel centre to the nearest projected triangle edge."""
    p = np.array([pixel % width + 0.5, pixel // width + 0.5])
    a = uv[faces].reshape(-1, 2)
    b = uv[faces[:, [1, 2, 0]]].reshape(-1, 2)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-30), 0, 1)
    return float(np.linalg.norm(a + t[:, None] * ab - p, axis=-1).min())


def _compare_with_ray_cast(vertices: torch.Tensor, faces: torch.Tensor, k: torch.Tensor, height: int, width: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    raster = rasterize(vertices, faces, k, (height, width))
    mine = raster.face_index.reshape(-1).numpy()
    mine_depth = raster.depth.reshape(-1).numpy()
    v, f = vertices.numpy(), faces.numpy()
    first, depth, hits = _ray_cast(v, f, k.numpy(), height, width)
    uv = project_points(vertices, k).numpy()
    hit_differs = np.nonzero((mine >= 0) != (first >= 0))[0]
    for pixel in hit_differs:  # only a pixel centre on a silhouette edge may differ
        assert _edge_distance(pixel, width, uv, f) < EDGE_TOL_PX, pixel
    both = (mine >= 0) & (first >= 0)
    np.testing.assert_allclose(mine_depth[both], depth[both], rtol=0, atol=DEPTH_TOL)
    for pixel in np.nonzero(both & (mine != first))[0]:
        # a tie: the ray also hits our triangle, at the first hit's depth
        ours = [z for t, z in hits[pixel] if t == mine[pixel]]
        assert ours and abs(ours[0] - depth[pixel]) < DEPTH_TOL, pixel
    assert both.sum() > 300  # enough of the mesh is in view for the comparison to mean something
    return mine, first


# ------------------------------------------------------------------------------------------------ tests


def test_cube_frontal_and_oblique() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    verts = torch.from_numpy(np.asarray(box.vertices)).to(F64)
    faces = torch.from_numpy(np.asarray(box.faces)).long()
    k = _camera(200, 120, 160)
    centre = torch.tensor([0.0, 0.0, 3.0], dtype=F64)
    # frontal: the four corners of the face at z = 2.5 (the side faces are edge-on and cover no pixel)
    vis = visible_vertices(verts + centre, faces, k, (120, 160))
    assert set(torch.nonzero(vis)[:, 0].tolist()) == set(torch.nonzero(verts[:, 2] < 0)[:, 0].tolist())
    # oblique: three faces visible, every corner but the farthest one
    rotated = verts @ (_rotation(0.4, 0.0, 0.0) @ _rotation(0.0, 0.6, 0.0)).T + centre
    vis = visible_vertices(rotated, faces, k, (120, 160))
    farthest = int(rotated[:, 2].argmax())
    assert set(torch.nonzero(~vis)[:, 0].tolist()) == {farthest}
    # from behind (rotated by pi about y) the roles of front and back corners swap
    behind = verts @ _rotation(0.0, math.pi, 0.0).T + centre
    vis = visible_vertices(behind, faces, k, (120, 160))
    assert set(torch.nonzero(vis)[:, 0].tolist()) == set(torch.nonzero(verts[:, 2] > 0)[:, 0].tolist())


def _grid_plane(half: float, steps: int, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    xs = torch.linspace(-half, half, steps + 1, dtype=F64)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    verts = torch.stack([xx, yy, torch.full_like(xx, z)], -1).reshape(-1, 3)
    idx = torch.arange((steps + 1) ** 2).reshape(steps + 1, steps + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return verts, faces


def test_two_overlapping_planes() -> None:
    """A small square at z = 2 in front of a larger grid at z = 4.  The square's silhouette covers the back
    grid's |x|, |y| < 1; back vertices whose triangles all lie inside it are hidden, those whose triangles
    reach outside it by a full cell (10 px) are visible; the one-cell band at the silhouette is left to the
    ray-cast comparison."""
    front, front_faces = _grid_plane(0.5, 1, 2.0)
    back, back_faces = _grid_plane(2.0, 20, 4.0)  # cells of 0.2 m = 10 px at f = 200, z = 4
    verts = torch.cat([front, back])
    faces = torch.cat([front_faces, back_faces + front.shape[0]])
    k = _camera(200, 240, 240)
    vis = visible_vertices(verts, faces, k, (240, 240))
    assert bool(vis[: front.shape[0]].all())
    reach = back[:, :2].abs().amax(-1)  # the back vertex's triangles reach reach + 0.2
    back_vis = vis[front.shape[0]:]
    assert not bool(back_vis[reach < 0.8 - 1e-9].any())
    assert bool(back_vis[reach > 1.0 - 1e-9].all())
    # the same scene with the two planes' triangles listed the other way round: the same result
    vis2 = visible_vertices(torch.cat([back, front]), torch.cat([back_faces, front_faces + back.shape[0]]), k,
                            (240, 240))
    assert torch.equal(vis2, torch.cat([back_vis, vis[: front.shape[0]]]))
    mine, first = _compare_with_ray_cast(verts, faces, _camera(50, 60, 60), 60, 60)
    assert np.array_equal(mine, first)  # no ties in this scene: the same triangle at every pixel


def test_synthetic_smpl_front_and_back(smpl: BodyModel) -> None:
    """Seen from the front (the body's +z towards the camera) the visible vertices are the front-facing ones,
    from the back the back-facing ones.  Measured: 94% of the visible vertices face the camera, 95% / 4% have a
    body-frame normal with z > 0, 116 of ~2500 are seen from both sides (the silhouette), and no torso vertex
    facing away (cos < -0.5) is visible.  A rasteriser that kept the farthest fragment fails every one."""
    rest = smpl(torch.zeros(3, dtype=F64), torch.zeros(69, dtype=F64)).vertices
    normals = torch.from_numpy(np.array(trimesh.Trimesh(rest.numpy(), smpl.faces.numpy(), process=False)
                                        .vertex_normals))
    torso = smpl.weights[:, [0, 3, 6, 9]].sum(-1) > 0.99
    height, width = 294, 518
    k = _camera(400, height, width)
    seen = {}
    # OpenCV camera: y down, so pi about x stands the body up and turns its front (+z) to the camera;
    # pi about z stands it up facing away
    for name, rot in (("front", _rotation(math.pi, 0.0, 0.0)), ("back", _rotation(0.0, 0.0, math.pi))):
        verts = rest @ rot.T + torch.tensor([0.0, 0.0, 3.0], dtype=F64)
        vis = visible_vertices(verts, smpl.faces, k, (height, width))
        facing = ((normals @ rot.T) * -verts / verts.norm(dim=-1, keepdim=True)).sum(-1)
        assert int(vis.sum()) > 1500
        assert float((facing[vis] > 0).double().mean()) > 0.9
        assert not bool((vis & torso & (facing < -0.5)).any())
        body_front = float((normals[vis, 2] > 0).double().mean())
        assert body_front > 0.9 if name == "front" else body_front < 0.1
        seen[name] = vis
    both = int((seen["front"] & seen["back"]).sum())
    assert both < 0.08 * min(int(seen["front"].sum()), int(seen["back"].sum()))


def test_synthetic_smpl_matches_trimesh_ray_cast(smpl: BodyModel) -> None:
    g = torch.Generator().manual_seed(0)
    body_pose = 0.25 * torch.randn(69, generator=g, dtype=F64)
    out = smpl(torch.tensor([math.pi - 0.3, 0.5, 0.1], dtype=F64), body_pose,
               transl=torch.tensor([0.05, 0.1, 2.2], dtype=F64))
    height, width = 96, 64
    _compare_with_ray_cast(out.vertices, smpl.faces, _camera(70, height, width), height, width)


def test_chunking_batching_and_near_plane(smpl: BodyModel) -> None:
    g = torch.Generator().manual_seed(1)
    poses = 0.3 * torch.randn(2, 69, generator=g, dtype=F64)
    root = torch.tensor([[math.pi, 0.2, 0.0], [math.pi, -1.0, 0.3]], dtype=F64)
    verts = smpl(root, poses, transl=torch.tensor([[0, 0, 3.0], [0.2, 0, 4.0]], dtype=F64)).vertices
    k = _camera(150, 96, 128).expand(2, 3, 3)
    ref = rasterize(verts, smpl.faces, k, (96, 128))
    small = rasterize(verts, smpl.faces, k, (96, 128), chunk_elements=500)
    assert torch.equal(ref.face_index, small.face_index) and torch.equal(ref.depth, small.depth)
    for i in range(2):
        one = rasterize(verts[i], smpl.faces, k[i], (96, 128))
        assert torch.equal(one.face_index, ref.face_index[i])
    # (B, T) leading dims; a vertex is visible iff one of its triangles wins a pixel
    vis = visible_vertices(verts.reshape(1, 2, -1, 3), smpl.faces, k.reshape(1, 2, 3, 3), (96, 128))
    assert vis.shape == (1, 2, smpl.num_vertices)
    faces_seen = visible_faces(ref.face_index, smpl.faces.shape[0])
    assert torch.equal(vis[0], _vertices_of(faces_seen, smpl.faces, smpl.num_vertices))
    assert faces_seen.sum() > 100
    # a body straddling the camera plane: triangles with a vertex at z <= near are skipped, never wrapped around
    behind = verts[0] - torch.tensor([0, 0, 3.0], dtype=F64)
    r = rasterize(behind, smpl.faces, k[0], (96, 128))
    crossing = (behind[smpl.faces][..., 2] <= 1e-3).any(-1)
    drawn = r.face_index[r.face_index >= 0].unique()
    assert not bool(crossing[drawn].any())
    assert bool((r.depth[r.face_index >= 0] > 1e-3).all())


def _vertices_of(faces_seen: torch.Tensor, faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    out = torch.zeros(faces_seen.shape[0], num_vertices, dtype=torch.bool)
    for i in range(faces_seen.shape[0]):
        out[i, faces[faces_seen[i]].reshape(-1)] = True
    return out
