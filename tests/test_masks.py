"""masks: storage, the mask_lost rule, SAM2.1's real architecture (random weights, no checkpoint) and
MediaPipe's bundled model on real frames (tests/data/labels)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from shards.mask_codec import unpack_masks
from tasks import masks as M
from tasks.stage import ClipRejected, ClipWindow, build_stage
from tasks.weights import WeightsMissing
from unish_model.boxes import box_mask, grow_box

DATA = Path(__file__).parent / "data" / "labels"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.stack([cv2.imread(str(DATA / f"frame_{i}.jpg"))[..., ::-1] for i in range(4)])


@pytest.fixture(scope="module")
def boxes() -> np.ndarray:
    return np.asarray(json.loads((DATA / "boxes.json").read_text())["boxes"], np.float32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: two shared cores, one torch thread


def make_clip(frames: np.ndarray, boxes: np.ndarray, present: np.ndarray | None = None) -> ClipWindow:
    t = len(frames)
    present = np.ones(t, bool) if present is None else present
    box = np.where(present[:, None], boxes, np.nan).astype(np.float32)
    clip = ClipWindow("pose2sim-000000000-000005000", "pose2sim", 0.0, 5.0, frames, np.arange(t) / 6.0)
    clip.labels["people"] = {"box": box, "score": np.linspace(0.6, 0.9, t).astype(np.float32), "present": present,
                             "track_id": np.asarray(1), "stats": {}}
    return clip


class FixedSegmenter:
    """A stand-in backend returning given masks, to test the stage's rule and storage alone."""

    name = "fixed"

    def __init__(self, masks: np.ndarray):
        self.masks = masks
        self.seen_boxes: np.ndarray | None = None

    def setup(self) -> None:
        pass

    def segment(self, frames, boxes, present, scores):
        self.seen_boxes = boxes
        return self.masks

    def run_info(self):
        return {}

    def provenance(self):
        return {"backend": self.name, "weights": None, "weights_sha256": None, "package_version": None,
                "segmenter": {}}


def box_masks(boxes: np.ndarray, h: int, w: int, shrink: float = 0.2) -> np.ndarray:
    return np.stack([box_mask(grow_box(b, -shrink, w, h), h, w) for b in boxes])


# ---------------------------------------------------------------------------------------------- rule


def test_good_masks_are_stored(frames, boxes):
    h, w = frames.shape[1:3]
    masks = box_masks(boxes, h, w)
    present = np.array([True, False, True, True])
    stage = M.MasksStage(FixedSegmenter(masks))
    clip = stage(make_clip(frames, boxes, present))
    labels = clip.labels["masks"]
    np.testing.assert_array_equal(unpack_masks(labels), masks)
    assert labels["stats"]["lost_frames"] == [] and labels["stats"]["frames"] == 4
    # the absent frame's box was filled from its neighbours before segmenting
    np.testing.assert_allclose(stage.segmenter.seen_boxes[1], (boxes[0] + boxes[2]) / 2)
    assert clip.provenance["masks"]["params"]["rules"] == {"min_box_fill": 0.05, "min_in_box": 0.5, "box_margin": 0.1}


@pytest.mark.parametrize("damage, why", [("empty", "area"), ("tiny", "box fill"), ("elsewhere", "inside the box")])
def test_lost_mask_in_one_frame_rejects_the_clip(frames, boxes, damage, why):
    h, w = frames.shape[1:3]
    masks = box_masks(boxes, h, w)
    if damage == "empty":
        masks[2] = False
    elif damage == "tiny":
        masks[2] = False
        masks[2, 200:204, 120:124] = True  # 16 px inside a ~35k px box
    else:  # a mask that jumped to the background person at the top left
        masks[2] = False
        masks[2, 70:200, 0:50] = True
    with pytest.raises(ClipRejected) as info:
        M.MasksStage(FixedSegmenter(masks))(make_clip(frames, boxes))
    assert info.value.rule == M.MASK_LOST == "mask_lost"
    assert info.value.stats["lost_frames"] == [2]
    assert why in info.value.detail


def test_a_track_absent_in_every_frame_has_nothing_to_segment(frames, boxes):
    stage = M.MasksStage(FixedSegmenter(np.zeros(frames.shape[:3], bool)))
    with pytest.raises(M.MissingUpstreamLabels, match="present in no frame"):
        stage(make_clip(frames, boxes, np.zeros(len(frames), bool)))
    assert stage.segmenter.seen_boxes is None  # refused before the backend ran


def test_masks_need_the_people_labels(frames):
    clip = ClipWindow("k-000000000-000005000", "k", 0.0, 5.0, frames, np.arange(4) / 6.0)
    with pytest.raises(M.MissingUpstreamLabels, match="people -> masks -> depth"):
        M.MasksStage(FixedSegmenter(np.zeros(frames.shape[:3], bool)))(clip)


# ---------------------------------------------------------------------------------------------- sam2


def test_sam2_default_is_the_official_checkpoint_and_fails_clearly_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    stage = build_stage("masks:sam2")
    assert stage.segmenter.config.allow_random_weights is False
    assert M.sam2_config_for(stage.segmenter.config) == "configs/sam2.1/sam2.1_hiera_l.yaml"
    with pytest.raises(WeightsMissing, match=r"sam2\.1_hiera_large\.pt.*unish weights pull sam2\.1_hiera_large"):
        stage.setup()


def test_sam2_loads_an_official_layout_checkpoint_from_the_weights_folder(tmp_path, monkeypatch):
    # The official .pt is {"model": state_dict}; write one from a differently seeded build.
    src = M.Sam2Segmenter(M.Sam2Config(weights="sam2.1_hiera_tiny", allow_random_weights=True, seed=1,
                                       image_size=256, device="cpu"))
    src.setup()
    state = src.predictor.state_dict()
    torch.save({"model": state}, tmp_path / "sam2.1_hiera_tiny.pt")
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    seg = M.Sam2Segmenter(M.Sam2Config(weights="sam2.1_hiera_tiny", image_size=256, device="cpu"))
    seg.setup()
    name = "image_encoder.trunk.patch_embed.proj.weight"
    assert torch.equal(seg.predictor.state_dict()[name], state[name])
    digest = hashlib.sha256((tmp_path / "sam2.1_hiera_tiny.pt").read_bytes()).hexdigest()
    prov = seg.provenance()
    assert prov["weights_sha256"] == digest and prov["segmenter"]["random_weights"] is False


def test_sam2_architecture_runs_on_real_frames(frames, boxes):
    # SAM2.1 (tiny config) with random weights at a 256 px predictor input: the same code path as the
    # paper's hiera_large at 1024 over 30 frames. The track starts on frame 1, so the predictor
    # propagates forward from the prompt and then backward to frame 0.
    config = M.Sam2Config(weights="sam2.1_hiera_tiny", allow_random_weights=True, image_size=256, device="cpu")
    seg = M.Sam2Segmenter(config)
    stage = M.MasksStage(seg, M.MaskRules(min_box_fill=0.0, min_in_box=0.0))  # random weights segment anything
    seg.setup()
    calls: dict[str, list] = {"prompt": [], "propagate": []}
    add, prop = seg.predictor.add_new_points_or_box, seg.predictor.propagate_in_video

    def spy_add(state, **kw):
        calls["prompt"].append((kw["frame_idx"], np.asarray(kw["box"]).tolist(), state["video_height"],
                                state["video_width"]))
        return add(state, **kw)

    def spy_prop(state, **kw):
        calls["propagate"].append((kw.get("start_frame_idx"), kw.get("reverse")))
        return prop(state, **kw)

    seg.predictor.add_new_points_or_box, seg.predictor.propagate_in_video = spy_add, spy_prop
    present = np.array([False, True, True, True])
    clip = stage(make_clip(frames, boxes, present))

    assert calls["prompt"] == [(1, boxes[1].tolist(), 518, 294)]  # the box in frame pixels, on frame 1
    assert calls["propagate"] == [(1, False), (1, True)]
    labels = clip.labels["masks"]
    masks = unpack_masks(labels)
    assert masks.shape == (4, 518, 294)  # the stored frame size, not the predictor's 256
    assert (labels["area"] > 0).all()
    np.testing.assert_array_equal(labels["area"], masks.sum(axis=(1, 2)))
    assert labels["stats"]["prompt_frame"] == 1
    prov = clip.provenance["masks"]
    assert prov["backend"] == "sam2" and prov["weights"] is None and prov["weights_sha256"] is None
    assert prov["package_version"] == "sam2 1.1.0"
    assert prov["params"]["segmenter"]["random_weights"] is True
    assert prov["params"]["segmenter"]["image_size"] == 256
    assert prov["params"]["segmenter"]["config_file"] == "configs/sam2.1/sam2.1_hiera_t.yaml"


# ----------------------------------------------------------------------------------------- mediapipe


@pytest.fixture(scope="module")
def mediapipe_stage():
    stage = build_stage("masks:mediapipe")
    stage.setup()
    yield stage
    stage.segmenter.close()


def test_mediapipe_segments_the_person_inside_the_box(frames, boxes, mediapipe_stage):
    clip = mediapipe_stage(make_clip(frames, boxes))
    masks = unpack_masks(clip.labels["masks"])
    h, w = frames.shape[1:3]
    for i, b in enumerate(boxes):
        box_area = box_mask(b, h, w).sum()
        # a person fills a good part of the box but not all of it (a box-filling mask would be wrong)
        assert 0.15 < masks[i].sum() / box_area < 0.8
        assert not (masks[i] & ~box_mask(grow_box(b, 0.05, w, h), h, w)).any()
    # hand-picked pixels of frame 0: the torso is in; the treadmill inside the box, right of the feet, is out
    assert box_mask(boxes[0], h, w)[300, 150]
    assert masks[0, 180, 112] and not masks[0, 300, 150] and not masks[0, 250, 150]
    prov = clip.provenance["masks"]
    bundled = Path(__import__("mediapipe").__file__).parent / "modules/selfie_segmentation/selfie_segmentation.tflite"
    assert prov["backend"] == "mediapipe"
    assert prov["weights_sha256"] == hashlib.sha256(bundled.read_bytes()).hexdigest()
    assert "0.10.21" in prov["package_version"]


def test_mediapipe_box_on_no_person_loses_the_mask(frames, boxes, mediapipe_stage):
    wrong = boxes.copy()
    wrong[3] = [20, 400, 140, 510]  # the treadmill: nobody there
    with pytest.raises(ClipRejected) as info:
        mediapipe_stage(make_clip(frames, wrong))
    assert info.value.rule == "mask_lost" and info.value.stats["lost_frames"] == [3]
