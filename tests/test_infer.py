"""`unish infer` end to end with a tiny random model on a real video, plus the person-choice helpers."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
import typer
from typer.testing import CliRunner

from flows.infer_cmd import infer
from tasks.people.choice import choose_person
from tasks.people_filters import FrameDetections
from unish_model.boxes import box_masks

REPO = Path(__file__).resolve().parents[1]
VIDEO = REPO / "examples" / "media" / "vtest_20s.mp4"
H, W = 98, 126  # 7 x 9 patches of 14 px: small, so the tiny model runs in seconds


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(infer)
    return app


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("infer")
    video = tmp / "vtest.mp4"
    shutil.copy(VIDEO, video)
    out = tmp / "out"
    # 3 s at 6 fps in windows of 6 frames starting every 4: 3 windows (frames 0-13), 2 frames shared
    result = CliRunner().invoke(_app(), [
        str(video), "--out", str(out), "--tiny-random", "--window", "6", "--stride", "4", "--long-side", str(W),
        "--short-side", str(H), "--people", "frame", "--end", "3.0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_writes_all_four_outputs(run: tuple[Path, str]) -> None:
    out, output = run
    for name in ("unish.npz", "points.ply", "scene.glb", "recording.rrd"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / ".spool").exists()
    assert "14 frames from 3 windows" in output


def test_npz_arrays_are_consistent(run: tuple[Path, str]) -> None:
    from unish_model.body import BodyModel, write_synthetic_body_model

    out, _ = run
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        a = {k: d[k] for k in d.files}
    n = 14
    assert a["images"].shape == (n, H, W, 3) and a["world_points"].shape == (n, H, W, 3)
    np.testing.assert_array_equal(a["frame_index"], np.arange(n))
    np.testing.assert_array_equal(a["window_start_frame"], [0, 4, 8])
    np.testing.assert_array_equal(a["window_overlap"], [0, 2, 2])
    np.testing.assert_array_equal(a["window_index"], [0] * 6 + [1] * 4 + [2] * 4)  # new frames only
    np.testing.assert_allclose(a["window_similarity"][0], np.eye(4), atol=1e-12)
    metres = float(a["metric_scale"])
    assert metres > 0 and np.isfinite(metres)
    # the first camera is the world origin; every pose is a rigid transform
    np.testing.assert_allclose(a["c2w"][0], np.eye(4), atol=1e-5)
    rot = a["c2w"][:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-4)
    # stitching and the metric scale moved points, poses and camera-frame points together: world = c2w @ local
    world_from_local = np.einsum("fij,fhwj->fhwi", rot, a["local_points"]) + a["c2w"][:, None, None, :3, 3]
    tol = 1e-4 * max(1.0, float(np.abs(a["world_points"]).max()))
    np.testing.assert_allclose(world_from_local, a["world_points"], atol=tol)
    # depth = local z + shift, all in metres
    np.testing.assert_allclose(a["depth"], a["local_points"][..., 2] + a["shift"][:, None, None], atol=1e-4)
    # SMPL: the world pelvis is the camera-frame pelvis moved by c2w (trans_cam's z carries the shift)
    body = BodyModel.from_file(write_synthetic_body_model(out.parent / "body.npz"))  # the model --tiny-random uses
    import torch

    j0 = body.rest_joints(torch.from_numpy(a["betas"]))[:, 0].numpy().astype(np.float64)
    cam_pelvis = a["trans_cam"] - np.stack([0 * a["shift"], 0 * a["shift"], a["shift"]], 1) + j0
    world_pelvis = np.einsum("fij,fj->fi", rot, cam_pelvis) + a["c2w"][:, :3, 3]
    np.testing.assert_allclose(a["joints_world"][:, 0], world_pelvis, atol=1e-4)
    np.testing.assert_allclose(a["joints_world"][:, 0], a["trans_world"] + j0, atol=1e-4)
    assert a["smpl_faces"].shape == (13776, 3)
    # the person: whole-frame boxes with --people frame, as masks too
    np.testing.assert_allclose(a["person_box"], np.tile([0, 0, W, H], (n, 1)))
    assert a["person_mask"].all() and a["person_present"].all()
    assert any(line.startswith("world_points:") for line in a["array_doc"])


def test_glb_and_ply_load_back(run: tuple[Path, str]) -> None:
    out, _ = run
    scene = trimesh.load(out / "scene.glb")
    smpl = sorted(k for k in scene.geometry if k.startswith("smpl_"))
    cams = sorted(k for k in scene.geometry if k.startswith("camera_"))
    assert len(smpl) == 14 and len(cams) == 14
    mesh = scene.geometry[smpl[0]]
    assert isinstance(mesh, trimesh.Trimesh) and mesh.faces.shape == (13776, 3)
    # the mesh is SMPL posed with the npz's world parameters, in glTF axes (x, -y, -z)
    import torch

    from unish_model.body import BodyModel, write_synthetic_body_model

    body = BodyModel.from_file(write_synthetic_body_model(out.parent / "body_glb.npz"))
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        pose, betas, transl = (torch.from_numpy(d[k][0]) for k in ("pose_world", "betas", "trans_world"))
    verts = body(pose[:3], pose[3:], betas, transl).vertices.numpy()
    np.testing.assert_allclose(mesh.vertices, verts * [1, -1, -1], atol=1e-4 * max(1.0, np.abs(verts).max()))
    assert "points" in scene.geometry and "trajectory" in scene.geometry
    cloud = trimesh.load(out / "points.ply")
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) > 100
    assert np.isfinite(cloud.vertices).all() and cloud.colors.shape[1] == 4
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        lo, hi = d["world_points"].reshape(-1, 3).min(0), d["world_points"].reshape(-1, 3).max(0)
    assert (cloud.vertices >= lo - 1e-4).all() and (cloud.vertices <= hi + 1e-4).all()


def test_rrd_has_points_cameras_and_mesh_on_a_timeline(run: tuple[Path, str]) -> None:
    from rerun.chunk import RrdReader

    out, _ = run
    rows: dict[str, int] = {}
    for chunk in RrdReader(out / "recording.rrd").stream().to_chunks():
        if "frame" in chunk.timeline_names or chunk.is_static:
            rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
    assert rows["/world/points"] == 14 and rows["/world/camera"] == 14
    assert rows["/world/smpl"] == 15  # static faces + one mesh per frame
    assert rows["/world/fused"] == 1


def test_bad_inputs_exit_with_a_message(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(_app(), [str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"), "--tiny-random",
                                     "--people", "frame", "--body-model", "none"])
    assert missing.exit_code == 1 and "nope.mp4" in missing.output
    bad = runner.invoke(_app(), [str(VIDEO), "--out", str(tmp_path / "o"), "--tiny-random", "--window", "4",
                                 "--stride", "5"])
    assert bad.exit_code == 2 and "stride" in bad.output


def _det(boxes: list[list[float]], ids: list[int], scores: list[float] | None = None) -> FrameDetections:
    return FrameDetections.make(np.asarray(boxes, np.float32).reshape(-1, 4),
                                [0.9] * len(ids) if scores is None else scores, ids)


def test_choose_person_prefers_prominent_then_continuity() -> None:
    small, big = [10, 10, 20, 30], [50, 10, 90, 90]
    dets = [_det([small, big], [1, 2]) for _ in range(4)]
    np.testing.assert_allclose(choose_person(dets), np.tile(big, (4, 1)))
    # a previous window followed the small person on the first two frames: continuity wins
    previous = np.full((4, 4), np.nan)
    previous[:2] = small
    np.testing.assert_allclose(choose_person(dets, previous), np.tile(small, (4, 1)))
    # low scores do not count; no one at all gives NaN boxes
    assert np.isnan(choose_person([_det([big], [1], [0.1])] * 3)).all()


def test_hog_person_on_real_video(tmp_path: Path) -> None:
    """The lite detector at the paper's input size: the chosen person is one of HOG's tracked boxes, the
    frames where it was missed take interpolated or held boxes, and the mask is the box."""
    from tasks.people import HogBackend

    video = tmp_path / "vtest.mp4"
    shutil.copy(VIDEO, video)
    out = tmp_path / "out"
    result = CliRunner().invoke(_app(), [str(video), "--out", str(out), "--tiny-random", "--window", "6", "--stride",
                                         "4", "--end", "1.0", "--people", "hog", "--body-model", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        images, boxes, present, masks = d["images"], d["person_box"], d["person_present"], d["person_mask"]
        assert d["smpl_faces"].shape == (0, 3) and d["joints_world"].shape == (6, 24, 3)
    assert images.shape == (6, 294, 518, 3) and present.any()
    detections = HogBackend().detect(images)
    for i in np.flatnonzero(present):
        assert np.abs(detections[i].boxes - boxes[i]).max(axis=1).min() < 1e-3  # one of HOG's boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 518).all() and (boxes[:, 3] <= 294).all()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(masks.sum(axis=(1, 2)), areas, rtol=0.1)
    glb = trimesh.load(out / "scene.glb")
    assert not any(k.startswith("smpl_") for k in glb.geometry)  # --body-model none: cameras only
    assert sum(k.startswith("camera_") for k in glb.geometry) == 6


def test_person_masked_by_the_masks_stage(tmp_path: Path) -> None:
    """`--masks mediapipe`: the person mask comes from the lite masks stage, inside the tracked box, not the box."""
    video = tmp_path / "p2s.mp4"
    shutil.copy(REPO / "examples" / "media" / "pose2sim_single_cam01.mp4", video)
    out = tmp_path / "out"
    result = CliRunner().invoke(_app(), [str(video), "--out", str(out), "--tiny-random", "--window", "4", "--stride",
                                         "4", "--long-side", "294", "--short-side", "168", "--people", "frame",
                                         "--masks", "mediapipe", "--body-model", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        masks, boxes = d["person_mask"], d["person_box"]
    assert masks.shape[0] == len(boxes) >= 4 and masks.dtype == bool
    if "person mask lost" in result.output:  # the stage's own rule rejected it: the box stands in, and says so
        np.testing.assert_array_equal(masks, box_masks(boxes, *masks.shape[1:]))
    else:
        box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert (masks.sum(axis=(1, 2)) > 0).all() and (masks.sum(axis=(1, 2)) < 0.8 * box_area).all()


def _readme_entities(section: str) -> set[str]:
    """Entity paths listed in the README's table of a recording (rows "| `/path` | ... |" after `section`)."""
    text = (REPO / "README.md").read_text()
    start = text.index(section)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return {cell.strip().strip("`") for cell in (r.split("|")[1] for r in rows) if cell.strip().startswith("`/")}


def _blueprint_views(path: Path) -> dict[str, tuple[str, str]]:
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    (store,) = reader.blueprints()
    views = {}
    for chunk in reader.stream(store=store).to_chunks():
        batch = chunk.to_record_batch()
        names = batch.schema.names
        if "ViewBlueprint:class_identifier" in names:
            views[batch.column("ViewBlueprint:display_name").to_pylist()[0][0]] = (
                batch.column("ViewBlueprint:class_identifier").to_pylist()[0][0],
                batch.column("ViewBlueprint:space_origin").to_pylist()[0][0])
    return views


def test_rrd_opens_with_the_blueprint_and_entities_the_readme_describes(run: tuple[Path, str]) -> None:
    from rerun.chunk import RrdReader

    from unish_model.viewer import INFER_ENTITIES, INFER_VIEWS

    out, _ = run
    path = out / "recording.rrd"
    assert _blueprint_views(path) == INFER_VIEWS  # the saved layout: 3D world, frame + mask, the two plots
    rows: dict[str, int] = {}
    for chunk in RrdReader(path).stream().to_chunks():
        if not chunk.entity_path.startswith("/__"):
            rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
    assert set(rows) == set(INFER_ENTITIES) == _readme_entities("recording.rrd entities")
    assert rows["/world/camera/image/mask"] == 1 + 14  # the class colours (static) + one mask per frame
    for series in ("/plots/metric_scale/window", "/plots/metric_scale/applied", "/plots/stitching/residual_rms",
                   "/plots/stitching/inlier_share"):
        assert rows[series] == 1 + 3, series  # the series style (static) + one point per window
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        estimates, metres = d["window_metres_per_unit"], float(d["metric_scale"])
    values = []
    for chunk in RrdReader(path).stream().to_chunks():
        if chunk.entity_path == "/plots/metric_scale/window" and not chunk.is_static:
            batch = chunk.to_record_batch()
            column = next(n for n in batch.schema.names if n.endswith(":scalars"))
            frames = batch.column("frame").to_pylist()
            values += sorted(zip(frames, (v[0] for v in batch.column(column).to_pylist())))
    assert [f for f, _ in values] == [0, 4, 8]  # at each window's first frame
    np.testing.assert_allclose([v for _, v in values], estimates)
    assert metres == pytest.approx(float(np.median(estimates)))


def test_glb_plays_one_keyframe_per_frame(run: tuple[Path, str]) -> None:
    from trimesh.exchange.gltf import validate

    from unish_model.export import _glb_chunks

    out, _ = run
    tree, binary = _glb_chunks((out / "scene.glb").read_bytes())
    validate(tree)  # the glTF 2.0 schema
    (anim,) = tree["animations"]
    inputs = {s["input"] for s in anim["samplers"]}
    assert len(inputs) == 1 and {s["interpolation"] for s in anim["samplers"]} == {"STEP"}
    acc = tree["accessors"][inputs.pop()]
    view = tree["bufferViews"][acc["bufferView"]]
    times = np.frombuffer(binary, np.float32, acc["count"], view["byteOffset"] + acc.get("byteOffset", 0))
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        frame_index, fps = d["frame_index"], float(d["fps"])
    np.testing.assert_allclose(times, frame_index / fps, atol=1e-6)  # one keyframe per frame (14), at its time
    nodes = tree["nodes"]
    for k, sampler in enumerate(anim["samplers"]):
        targets = {nodes[c["target"]["node"]]["name"] for c in anim["channels"] if c["sampler"] == k}
        assert targets == {f"smpl_{k:05d}", f"camera_{k:05d}"}
        out_acc = tree["accessors"][sampler["output"]]
        out_view = tree["bufferViews"][out_acc["bufferView"]]
        scales = np.frombuffer(binary, np.float32, 3 * out_acc["count"], out_view["byteOffset"]).reshape(-1, 3)
        np.testing.assert_array_equal(scales[:, 0], np.arange(len(times)) == k)  # shown at its keyframe only
    # before playing, the first frame shows and the others are hidden: not every frame overlaid
    shown = {n["name"] for n in nodes if n.get("scale", [1, 1, 1]) != [0, 0, 0]}
    assert shown == {"smpl_00000", "camera_00000", "trajectory", "points"}
