"""keypoints stage: CameraHMR (our code, tiny random weights through the converter, synthetic SMPL) and MediaPipe
pose on real frames (tests/data/keypoints, from pose2sim_single_cam01.mp4)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tasks import pipeline, staging
from tasks.keypoints import (
    MEDIAPIPE_TO_SMPL, SMPL_JOINT_NAMES, KeypointsError, camerahmr_keypoints_stage, mediapipe_keypoints_stage,
)
from tasks.stage import ClipWindow, build_stage
from tasks.weights import WeightsMissing
from unish_model.body import BodyModel, write_synthetic_body_model
from unish_model.convert.camerahmr import smpl_head_key, vit_key
from unish_model.human import HumanBranch, HumanBranchConfig

DATA = Path(__file__).parent / "data" / "keypoints"
J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}


def load_frames() -> tuple[np.ndarray, np.ndarray]:
    spec = json.loads((DATA / "boxes.json").read_text())
    frames = np.stack([cv2.imread(str(DATA / name))[..., ::-1] for name in spec["frames"]])
    return np.ascontiguousarray(frames), np.asarray(spec["boxes_xyxy"], np.float32)


def make_clip(frames: np.ndarray, boxes: np.ndarray | None = None, present: np.ndarray | None = None,
              intrinsics: np.ndarray | None = None) -> ClipWindow:
    clip = ClipWindow(key="pose2sim-000000000-000001600", source_id="pose2sim", start_s=0.0, end_s=1.6,
                      frames=frames, frame_times_s=np.arange(len(frames)) * 0.4)
    if boxes is not None:
        p = np.ones(len(frames), bool) if present is None else present
        clip.labels["people"] = {"box": np.where(p[:, None], boxes, np.nan).astype(np.float32), "present": p}
    if intrinsics is not None:
        clip.labels["depth"] = {"intrinsics": intrinsics}
    return clip


# ----------------------------------------------------------------------------------------------- camerahmr


def official_name(ours: str) -> str:
    """Our HumanBranch key -> CameraHMR's checkpoint key (the converter's rules, read backwards)."""
    if ours.startswith("backbone."):
        return "backbone." + vit_key.official(ours[len("backbone."):])
    return "smpl_head." + smpl_head_key.official(ours[len("head."):])


@pytest.fixture(scope="module")
def camerahmr_files(tmp_path_factory):
    """A CameraHMR .ckpt in the official layout (Lightning `state_dict`, official key names) holding a tiny
    model's random weights, and a synthetic SMPL-layout body model."""
    d = tmp_path_factory.mktemp("camerahmr")
    torch.manual_seed(0)
    model = HumanBranch(HumanBranchConfig.tiny(with_camera_head=True, with_keypoint_head=True)).eval()
    with torch.no_grad():
        model.backbone.pos_embed.normal_(0, 0.02)
        model.head.query_pos.normal_(0, 0.02)
        model.head.camera_out.weight.mul_(0.01)  # keep the camera scale near the mean (0.9): person in front
        model.head.mean_betas.normal_(0, 0.5)
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = d / "camerahmr_checkpoint_cleaned.ckpt"
    torch.save({"state_dict": {official_name(k): v for k, v in ours.items()}, "epoch": 3}, ckpt)
    body = write_synthetic_body_model(d / "smpl.npz", ring_size=8, rings=60)
    return {"ckpt": ckpt, "body": body, "state": ours, "model": model}


@pytest.fixture(scope="module")
def camerahmr(camerahmr_files):
    stage = camerahmr_keypoints_stage(checkpoint=str(camerahmr_files["ckpt"]), body_model=str(camerahmr_files["body"]),
                                      arch="tiny", device="cpu")
    stage.setup()
    return stage


def test_camerahmr_loads_official_checkpoint_through_converter(camerahmr, camerahmr_files):
    loaded = camerahmr.backend.model.state_dict()
    assert set(loaded) == set(camerahmr_files["state"])
    for k, v in camerahmr_files["state"].items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)
    prov = camerahmr.provenance()
    assert prov["backend"] == "camerahmr" and len(prov["weights_sha256"]) == 64
    assert len(prov["body_model_sha256"]) == 64 and prov["params"]["arch"] == "tiny"


def _square(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centre = np.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], 1)
    return centre, np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])


def test_camerahmr_keypoints_are_projected_smpl_joints(camerahmr, camerahmr_files):
    frames, boxes = load_frames()
    kp = camerahmr(make_clip(frames, boxes)).labels["keypoints"]
    t, h, w = frames.shape[:3]
    assert kp["joints2d"].shape == (t, 24, 2) and kp["confidence"].shape == (t, 24)
    assert kp["info"]["focal_source"] == "default_diagonal"
    np.testing.assert_allclose(kp["focal"], math.hypot(w, h), rtol=1e-6)
    assert kp["present"].all() and (kp["confidence"] == 1).all()

    # Recompute CameraHMR's full-image camera and the pinhole projection here, from the stored SMPL outputs.
    f = kp["focal"].astype(np.float64)
    centre, size = _square(boxes.astype(np.float64))
    s, tx, ty = kp["camera"].astype(np.float64).T
    tz = 2 * f / (s * size)
    expected_t = np.stack([tx + 2 * (centre[:, 0] - w / 2) / (s * size),
                           ty + 2 * (centre[:, 1] - h / 2) / (s * size), tz], 1)
    np.testing.assert_allclose(kp["translation"], expected_t, rtol=1e-4, atol=1e-4)
    body = BodyModel.from_file(camerahmr_files["body"])
    rot = torch.from_numpy(kp["rotmats"])
    with torch.no_grad():
        joints = body(rot[:, 0], rot[:, 1:], torch.from_numpy(kp["betas"])).joints.double().numpy()
    cam = joints + expected_t[:, None]
    uv = cam[..., :2] / cam[..., 2:] * f[:, None, None] + np.array([w / 2, h / 2])
    np.testing.assert_allclose(kp["joints2d"], uv, atol=2e-2)
    # The body lands on the person: the pelvis projects inside each frame's person box.
    pelvis = kp["joints2d"][:, J["pelvis"]]
    assert ((pelvis[:, 0] > boxes[:, 0]) & (pelvis[:, 0] < boxes[:, 2])).all(), (pelvis, boxes)
    assert ((pelvis[:, 1] > boxes[:, 1]) & (pelvis[:, 1] < boxes[:, 3])).all(), (pelvis, boxes)


def test_camerahmr_matches_the_unconverted_model_on_person_crops(camerahmr, camerahmr_files):
    from unish_model.human import backbone_columns, bbox_condition, crop_patches, imagenet_normalize, square_boxes

    frames, boxes = load_frames()
    kp = camerahmr(make_clip(frames, boxes)).labels["keypoints"]
    h, w = frames.shape[1:3]
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    centre, size = square_boxes(torch.from_numpy(boxes))
    crops = backbone_columns(imagenet_normalize(crop_patches(images, centre, size, 256)), 192)
    with torch.no_grad():
        out = camerahmr_files["model"](crops, bbox_condition(centre, size, (h, w), math.hypot(w, h)))
    np.testing.assert_allclose(kp["rotmats"], out.rotmats.numpy(), atol=1e-5)
    np.testing.assert_allclose(kp["camera"], out.camera.numpy(), atol=1e-5)


def test_camerahmr_focal_from_depth_intrinsics(camerahmr):
    frames, boxes = load_frames()
    t, h, w = frames.shape[:3]
    normalised = np.tile(np.array([[400 / w, 0, 0.5], [0, 400 / h, 0.5], [0, 0, 1]], np.float32), (t, 1, 1))
    pixels = np.tile(np.array([[400, 0, w / 2], [0, 400, h / 2], [0, 0, 1]], np.float32), (t, 1, 1))
    a = camerahmr(make_clip(frames, boxes, intrinsics=normalised))
    b = camerahmr(make_clip(frames, boxes, intrinsics=pixels)).labels["keypoints"]
    default = camerahmr(make_clip(frames, boxes)).labels["keypoints"]
    kp = a.labels["keypoints"]
    assert kp["info"]["focal_source"] == "depth" and a.provenance["keypoints"]["focal_source"] == "depth"
    np.testing.assert_allclose(kp["focal"], 400, rtol=1e-5)
    np.testing.assert_allclose(kp["joints2d"], b["joints2d"], atol=1e-4)
    # CLIFF conditioning sees the focal: the predicted pose changes with it, and so do the keypoints.
    assert np.abs(kp["rotmats"] - default["rotmats"]).max() > 1e-4
    assert np.abs(kp["joints2d"] - default["joints2d"]).max() > 0.5


def test_camerahmr_absent_frame_is_missing_and_others_unchanged(camerahmr):
    frames, boxes = load_frames()
    full = camerahmr(make_clip(frames, boxes)).labels["keypoints"]
    present = np.array([True, True, False, True, True])
    kp = camerahmr(make_clip(frames, boxes, present)).labels["keypoints"]
    assert not kp["present"][2] and (kp["confidence"][2] == 0).all() and (kp["joints2d"][2] == 0).all()
    # float32 through a ViT in a differently shaped batch: measured noise 6e-7 of the coordinates' size
    # (1.2e-4 px at ~190 px); a frame mixed up with another is pixels off.
    atol = 1e-5 * float(np.abs(full["joints2d"]).max())
    np.testing.assert_allclose(kp["joints2d"][present], full["joints2d"][present], rtol=0, atol=atol)


def test_camerahmr_needs_people_boxes(camerahmr):
    frames, _ = load_frames()
    with pytest.raises(KeypointsError, match="people"):
        camerahmr(make_clip(frames))


def test_camerahmr_fails_fast_without_weights(tmp_path, monkeypatch, camerahmr_files):
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsMissing, match="camerahmr.*camerahmr.is.tue.mpg.de"):
        build_stage("keypoints:camerahmr").setup()
    stage = camerahmr_keypoints_stage(checkpoint=str(camerahmr_files["ckpt"]), arch="tiny")
    (tmp_path / "SMPL_NEUTRAL.pkl").write_bytes(b"not unpickled")
    with pytest.raises(WeightsMissing, match=r"SMPL_NEUTRAL\.npz"):
        stage.setup()
    with pytest.raises(TypeError, match="unknown keypoints:camerahmr parameters: focal"):
        camerahmr_keypoints_stage(focal=500)


# ----------------------------------------------------------------------------------------------- mediapipe


@pytest.fixture(scope="module")
def mediapipe_stage():
    stage = mediapipe_keypoints_stage()
    stage.setup()
    return stage


MAPPED = sorted(MEDIAPIPE_TO_SMPL)
UNMAPPED = [j for j in range(24) if j not in MEDIAPIPE_TO_SMPL]


def test_mediapipe_whole_frames_give_anatomically_ordered_smpl_joints(mediapipe_stage):
    frames, boxes = load_frames()
    clip = mediapipe_stage(make_clip(frames))
    kp = clip.labels["keypoints"]
    assert kp["info"]["input"] == "whole frames" and kp["present"].all()
    assert kp["landmarks"].shape == (5, 33, 3)
    assert (kp["confidence"][:, UNMAPPED] == 0).all() and (kp["joints2d"][:, UNMAPPED] == 0).all()
    core = [J[n] for n in ("left_hip", "right_hip", "left_knee", "right_knee", "left_shoulder", "right_shoulder")]
    assert (kp["confidence"][:, core] > 0.5).all()
    xy = kp["joints2d"]

    def mean_y(*names: str) -> np.ndarray:
        return np.mean([xy[:, J[n], 1] for n in names], axis=0)

    # An upright person: shoulders above hips above knees above ankles, in every frame.
    shoulders, hips = mean_y("left_shoulder", "right_shoulder"), mean_y("left_hip", "right_hip")
    knees, ankles = mean_y("left_knee", "right_knee"), mean_y("left_ankle", "right_ankle")
    assert (shoulders < hips).all() and (hips < knees).all() and (knees < ankles).all()
    # He faces the camera: his left side is on the image's right.
    assert (xy[:, J["left_hip"], 0] > xy[:, J["right_hip"], 0]).all()
    assert (xy[:, J["left_shoulder"], 0] > xy[:, J["right_shoulder"], 0]).all()
    # Every confident mapped joint lies in the person's box (pixels of the model-input frames).
    for t in range(len(frames)):
        x1, y1, x2, y2 = boxes[t]
        sure = kp["confidence"][t] > 0.5
        assert ((xy[t, sure, 0] >= x1) & (xy[t, sure, 0] <= x2) & (xy[t, sure, 1] >= y1) & (xy[t, sure, 1] <= y2)).all()
    prov = clip.provenance["keypoints"]
    assert prov["backend"] == "mediapipe" and len(prov["weights_sha256"]) == 64


def test_mediapipe_person_crops_map_back_to_frame_pixels(mediapipe_stage):
    frames, boxes = load_frames()
    whole = mediapipe_stage(make_clip(frames)).labels["keypoints"]
    present = np.array([True, True, True, False, True])
    kp = mediapipe_stage(make_clip(frames, boxes, present)).labels["keypoints"]
    assert kp["info"]["input"] == "person crops"
    assert not kp["present"][3] and (kp["confidence"][3] == 0).all()
    keep = present
    core = [J[n] for n in ("left_hip", "right_hip", "left_shoulder", "right_shoulder", "left_knee", "right_knee")]
    err = np.linalg.norm(kp["joints2d"][keep][:, core] - whole["joints2d"][keep][:, core], axis=-1)
    assert err.mean() < 10, err


def test_mediapipe_stage_in_the_curation_pipeline(tmp_path, mediapipe_stage):
    frames, _ = load_frames()
    workdir = tmp_path / "video"
    key = "pose2sim-000000000-000001600"
    meta = {"key": key, "source_id": "pose2sim", "start_s": 0.0, "end_s": 1.6,
            "frame_times_s": [0.0, 0.4, 0.8, 1.2, 1.6], "width": 294, "height": 518}
    staging.stage_window(workdir / "clips" / key, frames, meta, {"status": "ok"}, 92)
    windows = [{"key": key, "status": "ok"}]
    assert pipeline.run_label_stage(mediapipe_stage, workdir, windows) == {"labelled": 1, "rejected": 0, "errors": 0, "skipped": 0}
    assert pipeline.run_label_stage(mediapipe_stage, workdir, windows)["skipped"] == 1
    members = staging.sample_members(workdir / "clips" / key, ["keypoints"])
    assert {"keypoints.joints2d.npy", "keypoints.confidence.npy", "keypoints.info.json"} <= set(members)
    assert json.loads(members["meta.json"])["labels"]["keypoints"]["backend"] == "mediapipe"
