"""Exporters: npz (plain arrays, streamed), fused ply, glb scene and Rerun recording, read back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from unish_model.export import (
    OPENCV_TO_GLTF, FrameSpool, GlbFrame, NpzWriter, RrdWriter, VoxelFusion, frustum_segments, subsample_mask,
    vertex_normals, write_glb, write_npz, write_ply,
)


def test_npz_round_trip_streamed_and_refuses_objects(tmp_path: Path) -> None:
    big = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    with NpzWriter(tmp_path / "a.npz") as w:
        w.add("scalar", np.float64(2.5))
        w.add("names", np.array(["pelvis", "left_hip"]))
        w.add_chunks("big", big.shape, big.dtype, [big[:2] * 2, big[2:] * 2])
        with pytest.raises(TypeError, match="pickle"):
            w.add("bad", np.array([{"a": 1}], dtype=object))
        with pytest.raises(ValueError, match="holds"):
            w.add_chunks("short", (3, 2), np.float32, [np.zeros((2, 2))])
    with np.load(tmp_path / "a.npz", allow_pickle=False) as d:
        assert float(d["scalar"]) == 2.5
        assert list(d["names"]) == ["pelvis", "left_hip"]
        np.testing.assert_array_equal(d["big"], big * 2)
        assert "bad" not in d.files
    write_npz(tmp_path / "b.npz", {"x": np.eye(3)})
    assert np.load(tmp_path / "b.npz")["x"].trace() == 3
    assert not list(tmp_path.glob("*.partial"))


def test_frame_spool_appends_and_scales(tmp_path: Path) -> None:
    spool = FrameSpool(tmp_path / "spool")
    a = np.random.default_rng(0).normal(size=(3, 4, 5, 3)).astype(np.float32)
    spool.append("points", a[:2])
    spool.append("points", a[2:])
    np.testing.assert_array_equal(spool.read("points"), a)
    chunks = list(spool.chunks("points", frames_per_chunk=2, scale=2.0))
    assert [len(c) for c in chunks] == [2, 1]
    np.testing.assert_allclose(np.concatenate(chunks), a * 2)
    with pytest.raises(ValueError, match="points"):
        spool.append("points", np.zeros((1, 4, 5, 2), np.float32))
    spool.remove()
    assert not (tmp_path / "spool").exists()


def test_voxel_fusion_and_ply(tmp_path: Path) -> None:
    # two frames see the same 1 m cube of surface points, densely: fusion keeps one point per 10 cm voxel
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 0.999, size=(20000, 3))
    fusion = VoxelFusion(voxel_size=0.1, merge_every=5000)
    fusion.add(pts, np.full((len(pts), 3), 100))
    fusion.add(pts + 1e-4, np.full((len(pts), 3), 200))
    xyz, rgb = fusion.result()
    assert len(xyz) == 1000  # 10 x 10 x 10 voxels, all occupied
    assert (np.floor(xyz / 0.1) >= 0).all() and (np.floor(xyz / 0.1) <= 9).all()
    assert abs(float(rgb.mean()) - 150) < 1  # colours average across frames
    # the bound: more voxels than max_points coarsens the grid
    small = VoxelFusion(voxel_size=0.1, max_points=200)
    small.add(pts, np.zeros((len(pts), 3)))
    xyz_small, _ = small.result()
    assert len(xyz_small) <= 200 and small.voxel_size == pytest.approx(0.2)

    path = write_ply(tmp_path / "cloud.ply", xyz, rgb)
    cloud = trimesh.load(path)
    assert isinstance(cloud, trimesh.PointCloud)
    np.testing.assert_allclose(cloud.vertices, xyz, atol=1e-6)
    np.testing.assert_array_equal(cloud.colors[:, :3], rgb)


def test_subsample_mask_is_bounded_and_deterministic() -> None:
    mask = np.zeros((50, 60), bool)
    mask[10:40, 5:55] = True
    idx = subsample_mask(mask, 400)
    assert 300 < len(idx) <= 400 and mask.reshape(-1)[idx].all()
    np.testing.assert_array_equal(idx, subsample_mask(mask, 400))


def _cameras(n: int) -> tuple[np.ndarray, np.ndarray]:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.arange(n) * 0.5
    k = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    return c2w, k


def test_frustum_geometry() -> None:
    c2w, k = _cameras(1)
    seg = frustum_segments(c2w[0], k, (48, 64), depth=2.0)
    assert seg.shape == (8, 2, 3)
    np.testing.assert_allclose(seg[0, 0], [0, 0, 0])
    np.testing.assert_allclose(seg[0, 1], [-32 / 50 * 2, -24 / 50 * 2, 2.0])  # top-left corner, 2 m ahead


def test_glb_has_meshes_cameras_and_points(tmp_path: Path) -> None:
    box = trimesh.creation.box()
    c2w, k = _cameras(5)
    frames = [GlbFrame(i, c2w[i], k, (box.vertices + [i, 0, 3]).astype(np.float32)) for i in range(5)]
    cloud = (np.random.default_rng(0).uniform(size=(100, 3)), np.full((100, 3), 77, np.uint8))
    path = write_glb(tmp_path / "scene.glb", frames, box.faces, (48, 64), points=cloud, max_frames=3,
                     frame_count=5)
    scene = trimesh.load(path)
    names = set(scene.geometry)
    assert {"smpl_00000", "smpl_00002", "smpl_00004", "camera_00000", "points", "trajectory"} <= names
    assert "smpl_00001" not in names  # 5 frames, at most 3 kept: every 2nd
    mesh = scene.geometry["smpl_00002"]
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) == len(box.faces)
    np.testing.assert_allclose(mesh.vertices, (box.vertices + [2, 0, 3]) @ OPENCV_TO_GLTF.T, atol=1e-5)
    assert isinstance(scene.geometry["camera_00004"], trimesh.path.Path3D)
    np.testing.assert_allclose(scene.geometry["points"].vertices, cloud[0] @ OPENCV_TO_GLTF.T, atol=1e-6)


def test_vertex_normals_point_outward() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    n = vertex_normals(sphere.vertices, sphere.faces)
    assert (np.einsum("ij,ij->i", n, sphere.vertices) > 0.95).all()


def test_rrd_is_readable(tmp_path: Path) -> None:
    from rerun.chunk import RrdReader

    box = trimesh.creation.box()
    c2w, k = _cameras(3)
    writer = RrdWriter(tmp_path / "rec.rrd", faces=box.faces)
    for i in range(3):
        writer.log_frame(i, i / 6, c2w[i], k, image=np.full((48, 64, 3), 40 * i, np.uint8),
                         points=np.random.default_rng(i).normal(size=(30, 3)), colors=np.zeros((30, 3), np.uint8),
                         vertices=box.vertices + i, vertex_normals=vertex_normals(box.vertices, box.faces))
    writer.log_static(fused=(np.zeros((5, 3)), np.zeros((5, 3), np.uint8)), trajectory=c2w[:, :3, 3],
                      info={"metric_scale": 1.0})
    writer.close()
    assert (tmp_path / "rec.rrd").stat().st_size > 1000
    chunks = RrdReader(tmp_path / "rec.rrd").stream().to_chunks()
    rows: dict[str, int] = {}
    timelines: dict[str, set[str]] = {}
    for c in chunks:
        rows[c.entity_path] = rows.get(c.entity_path, 0) + c.num_rows
        timelines.setdefault(c.entity_path, set()).update(c.timeline_names)
    for entity in ("/world/points", "/world/camera", "/world/camera/image"):
        assert rows[entity] >= 3 and {"frame", "time"} <= timelines[entity], entity
    assert rows["/world/smpl"] == 4  # faces once (static) + 3 frames of vertices
    assert rows["/world/fused"] == 1 and rows["/world/trajectory"] == 1


def test_rrd_skips_a_camera_the_viewer_cannot_draw(tmp_path: Path) -> None:
    """A negative focal (a random model's) logs the frame but no pinhole; a valid one logs both."""
    from rerun.chunk import RrdReader

    c2w, k = _cameras(2)
    writer = RrdWriter(tmp_path / "rec.rrd")
    writer.log_frame(0, 0.0, c2w[0], k * [[-1], [-1], [1]], image=np.zeros((48, 64, 3), np.uint8))
    writer.log_frame(1, 0.2, c2w[1], k, image=np.zeros((48, 64, 3), np.uint8), mask=np.ones((48, 64), bool))
    writer.close()
    pinholes, images, masks = [], [], []
    for chunk in RrdReader(tmp_path / "rec.rrd").stream().to_chunks():
        names = chunk.to_record_batch().schema.names
        frames = chunk.to_record_batch().column("frame").to_pylist() if "frame" in names else []
        if any(n.startswith("Pinhole:") for n in names):
            pinholes += frames
        if any(n.startswith("EncodedImage:") for n in names):
            images += frames
        if any(n.startswith("SegmentationImage:") for n in names):
            masks += frames
    assert sorted(images) == [0, 1] and pinholes == [1] and masks == [1]
