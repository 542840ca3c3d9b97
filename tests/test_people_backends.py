"""people backends on real frames: YOLO through Ultralytics' real predictor and ByteTrack (random
weights built from the yaml, and a checkpoint file written here), HOG with its IoU tracker, and the
stage around them. No network: every socket connect fails in this module."""
from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import tasks.people as people  # first: it sets Ultralytics' offline switches before the import below

import cv2
import numpy as np
import pytest
import torch

from tasks.people import (
    HogBackend,
    IoUTracker,
    PeopleStage,
    YoloBackend,
    YoloConfig,
    hog_people_stage,
    yolo_people_stage,
)
from tasks.people_filters import FrameDetections
from tasks.profiles import PROFILES, stages_for_profile
from tasks.stage import BackendUnavailable, ClipRejected, ClipWindow
from tasks.weights import WeightsMissing
from unish_model.boxes import box_iou

DATA = Path(__file__).parent / "data" / "people"
W, H = 518, 294


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def cover(img_bgr: np.ndarray, w: int, h: int) -> np.ndarray:
    """Scale to cover w x h and centre-crop, as decode does; returns RGB."""
    ih, iw = img_bgr.shape[:2]
    s = max(w / iw, h / ih)
    sw, sh = max(w, round(iw * s)), max(h, round(ih * s))
    r = cv2.resize(img_bgr, (sw, sh), interpolation=cv2.INTER_AREA)
    x, y = (sw - w) // 2, (sh - h) // 2
    return np.ascontiguousarray(r[y : y + h, x : x + w, ::-1])


def asset(name: str) -> np.ndarray:
    import ultralytics

    path = Path(ultralytics.__file__).parent / "assets" / name
    img = cv2.imread(str(path))
    assert img is not None, path
    return img


def window(img_rgb: np.ndarray, n: int) -> np.ndarray:
    """A short 'video' from one real image: a slow pan of 2 px per frame."""
    return np.stack([np.roll(img_rgb, 2 * i, axis=1) for i in range(n)])


@pytest.fixture(scope="module")
def zidane() -> np.ndarray:
    return window(cover(asset("zidane.jpg"), W, H), 5)


@pytest.fixture(scope="module")
def bus() -> np.ndarray:
    return window(cover(asset("bus.jpg"), W, H), 5)


def calibration_frames() -> np.ndarray:
    return np.concatenate([window(cover(asset("zidane.jpg"), W, H), 3), window(cover(asset("bus.jpg"), W, H), 3)])


def wake(backend: YoloBackend, cls: int, logit: float = 1.0) -> None:
    """Make a random-weight YOLO answer to its input, and say `cls` for every box.

    Freshly initialised, the network's activations shrink to ~1e-9 by the head, so every image gives
    the same boxes. Re-estimating BatchNorm statistics on real frames (two passes in train mode) brings
    them back to unit scale; then the class biases make one class confident. Call it before the first
    predict: Ultralytics' predictor works on its own fused copy.
    """
    net = backend.model.model
    x = torch.from_numpy(calibration_frames()).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(192, 320))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
    net.train()
    with torch.no_grad():
        net(x)
        net(x)
    net.eval()
    with torch.no_grad():
        for branch in net.model[-1].cv3:
            branch[-1].bias.fill_(-10.0)
            branch[-1].bias[cls] = logit


def yolo(weights: str = "yolo11n.yaml", favour: int | None = 0, **kw) -> YoloBackend:
    torch.manual_seed(0)  # the yaml build draws its random weights from torch's global generator
    cfg = dict(person_class=0, imgsz=320, max_det=4)
    cfg.update(kw)
    b = YoloBackend(YoloConfig(weights=weights, **cfg))
    b.setup()
    if favour is not None:
        wake(b, favour)
    return b


@pytest.fixture(scope="module")
def yolo_person() -> YoloBackend:
    return yolo()


# ------------------------------------------------------------------------------------------- yolo


def test_yolo_boxes_are_person_boxes_in_frame_pixels(yolo_person, zidane):
    dets = yolo_person.detect(zidane)
    assert len(dets) == len(zidane)
    for f in dets:
        assert f.boxes.dtype == np.float32 and f.boxes.shape == (len(f.scores), 4)
        assert 1 <= len(f.boxes) <= 4  # max_det
        assert (f.boxes[:, [0, 2]] >= 0).all() and (f.boxes[:, [0, 2]] <= W).all()
        assert (f.boxes[:, [1, 3]] >= 0).all() and (f.boxes[:, [1, 3]] <= H).all()
        assert (f.boxes[:, 2] >= f.boxes[:, 0]).all() and (f.boxes[:, 3] >= f.boxes[:, 1]).all()
        assert (f.scores >= 0.1).all()  # detect_conf
    # ByteTrack starts a track for every confident box of the first frame, numbered from 1
    first = dets[0].track_ids[dets[0].scores >= 0.25]
    assert sorted(first.tolist()) == list(range(1, len(first) + 1))
    # the boxes follow the image (not a constant of the random weights)
    bus_dets = yolo_person.detect(window(cover(asset("bus.jpg"), W, H), 1))
    assert not np.allclose(bus_dets[0].boxes[:1], dets[0].boxes[:1], atol=2)


def test_yolo_keeps_only_the_person_class(yolo_person, zidane):
    b = yolo(favour=2)  # every box now says class 2 ('car' in COCO order)
    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in zidane[:2]]
    raw = b.model.predict(bgr, imgsz=320, conf=0.1, max_det=4, verbose=False)
    assert len(raw[0].boxes) > 0 and (raw[0].boxes.cls.cpu().numpy() == 2).all()
    assert all(len(f.boxes) == 0 for f in b.detect(zidane[:2]))
    res = yolo_person.predict(zidane[:2])
    assert len(res[0].boxes) > 0 and (res[0].boxes.cls.cpu().numpy() == 0).all()


def ids(dets: list[FrameDetections]) -> list[list[int]]:
    return [f.track_ids.tolist() for f in dets]


def test_track_ids_never_carry_over_between_windows(yolo_person, zidane, bus):
    alone = yolo_person.detect(bus)
    yolo_person.detect(zidane)
    after = yolo_person.detect(bus)
    assert ids(after) == ids(alone)
    assert min(t for f in after for t in f.track_ids if t >= 0) == 1

    # Control: one tracker carried across both windows gives other ids (what the test guards against).
    tracker = yolo_person.new_tracker()
    for res in yolo_person.predict(zidane):
        tracker.update(res.boxes.cpu().numpy(), res.orig_img)
    carried = []
    for res in yolo_person.predict(bus):
        rows = tracker.update(res.boxes.cpu().numpy(), res.orig_img)
        carried.append(sorted(int(r[4]) for r in rows))
    assert carried != [sorted(t for t in f if t >= 0) for f in ids(alone)]


def test_yolo_checkpoint_file_loads_weights_only_and_gives_the_same_boxes(yolo_person, zidane, tmp_path, monkeypatch):
    ckpt = tmp_path / "person_yolo.pt"
    yolo_person.model.save(str(ckpt))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = yolo(str(ckpt), favour=None)
    assert calls and all(c is True for c in calls), calls  # never a full unpickle
    assert loaded.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()

    # Ultralytics saves fp16 weights: same boxes to a fraction of a pixel (order may swap on near-ties)
    def rows(f: FrameDetections) -> np.ndarray:
        return f.boxes[np.lexsort((f.boxes[:, 1], f.boxes[:, 0]))]

    a = yolo_person.detect(zidane[:2])
    b = loaded.detect(zidane[:2])
    for fa, fb in zip(a, b):
        assert len(fa.boxes) == len(fb.boxes) > 0
        np.testing.assert_allclose(rows(fa), rows(fb), atol=0.5)


def test_yolo_loads_a_registry_name_from_the_weights_folder(yolo_person, tmp_path, monkeypatch, zidane):
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    yolo_person.model.save(str(tmp_path / "yolo11n.pt"))
    b = yolo("yolo11n", favour=None)
    assert len(b.detect(zidane[:1])[0].boxes) > 0
    assert b.provenance()["weights_sha256"] == hashlib.sha256((tmp_path / "yolo11n.pt").read_bytes()).hexdigest()


def test_missing_yolo_weights_fail_in_setup_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    stage = yolo_people_stage()  # default: yolo11n from the weights folder
    with pytest.raises(WeightsMissing) as e:
        stage.setup()
    assert str(tmp_path / "yolo11n.pt") in str(e.value) and "unish weights pull yolo11n" in str(e.value)
    # a bare file name that is not on disk is refused, never downloaded
    with pytest.raises(WeightsMissing):
        yolo_people_stage(weights="yolov8s.pt").setup()


def test_a_model_without_a_person_class_needs_person_class():
    with pytest.raises(ValueError, match="person_class"):
        YoloBackend(YoloConfig(weights="yolo11n.yaml")).setup()  # yaml classes are named '0'..'79'


# -------------------------------------------------------------------------------------------- hog


def hog_or_skip() -> HogBackend:
    b = HogBackend()
    try:
        b.setup()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    return b


def sports(*names: str) -> np.ndarray:
    return np.stack([cv2.imread(str(DATA / f"sports2d_{n}.jpg"))[..., ::-1] for n in names])


MAN_ON_BOX = np.array([[168, 28, 204, 135]], np.float32)  # hand-labelled in sports2d_000/080
WALKER = np.array([[325, 155, 395, 276]], np.float32)  # hand-labelled in sports2d_080


def test_hog_finds_the_man_on_the_box():
    b = hog_or_skip()
    boxes, scores = b.detect_frame(sports("000")[0])
    assert len(boxes) == 1 and scores[0] > 0.5
    assert box_iou(boxes, MAN_ON_BOX)[0, 0] > 0.4


def test_hog_finds_both_people_and_the_stage_rejects_the_window():
    b = hog_or_skip()
    boxes, _ = b.detect_frame(sports("080")[0])
    assert len(boxes) == 2
    assert box_iou(boxes, MAN_ON_BOX).max() > 0.4 and box_iou(boxes, WALKER).max() > 0.4

    stage = hog_people_stage()
    clip = ClipWindow("v-000000000-000000500", "v", 0.0, 0.5, sports("000", "005", "080"), np.arange(3) / 6)
    with pytest.raises(ClipRejected) as e:
        stage(clip)
    assert e.value.rule == "multi_person" and e.value.stats["max_people_in_frame"] == 2
    assert "people" not in clip.labels


def test_hog_stage_keeps_a_single_person_window_with_labels():
    hog_or_skip()
    stage = hog_people_stage()
    stage.setup()
    clip = ClipWindow("v-000000000-000000333", "v", 0.0, 0.33, sports("000", "005"), np.arange(2) / 6)
    out = stage(clip)
    lab = out.labels["people"]
    assert lab["box"].shape == (2, 4) and lab["box"].dtype == np.float32
    assert lab["present"].tolist() == [True, True] and int(lab["track_id"]) == 1
    assert box_iou(lab["box"][:1], MAN_ON_BOX)[0, 0] > 0.4
    assert lab["stats"]["mean_height_ratio"] > 0.4
    prov = out.provenance["people"]
    assert prov["backend"] == "hog" and prov["package_version"].startswith("opencv ")
    assert prov["params"]["filters"]["min_height_ratio"] == 0.4 and prov["version"] == stage.version


def test_hog_missing_from_opencv_fails_in_setup(monkeypatch):
    monkeypatch.delattr(cv2, "HOGDescriptor", raising=False)
    with pytest.raises(BackendUnavailable, match="opencv-contrib-python-headless"):
        hog_people_stage().setup()


# ------------------------------------------------------------------------------------- iou tracker


def test_iou_tracker_keeps_ids_and_restarts_per_tracker():
    t = IoUTracker(iou_match=0.3, max_lost=2)
    a, b = [10, 10, 50, 100], [200, 10, 240, 100]
    assert t.update(np.array([a, b])).tolist() == [1, 2]
    assert t.update(np.array([[b[0] + 2, 10, b[2] + 2, 100], [a[0] + 2, 10, a[2] + 2, 100]])).tolist() == [2, 1]
    for _ in range(2):  # b lost for 2 frames: still alive
        assert t.update(np.array([a])).tolist() == [1]
    assert t.update(np.array([a, b])).tolist() == [1, 2]
    for _ in range(3):  # lost for 3 > max_lost: dropped
        t.update(np.array([a]))
    assert t.update(np.array([a, b])).tolist() == [1, 3]
    assert IoUTracker().update(np.array([b])).tolist() == [1]
    assert t.update(np.zeros((0, 4))).tolist() == []


# ------------------------------------------------------------------------------- stage + profiles


class ScriptedBackend:
    """Hands the stage fixed detections, to test what the stage writes."""

    name = "scripted"

    def __init__(self, frames: list[FrameDetections]):
        self.frames = frames
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        assert len(frames) == len(self.frames)
        return self.frames

    def provenance(self) -> dict:
        return {"backend": self.name, "weights_sha256": None, "package_version": "x", "detector": {}}


def blank_clip(t: int) -> ClipWindow:
    return ClipWindow("s-000000000-000005000", "s", 0.0, 5.0, np.zeros((t, H, W, 3), np.uint8), np.arange(t) / 6)


def test_stage_writes_the_label_and_provenance():
    good = FrameDetections.make([[200, 40, 300, 260]], [0.9], [3])
    frames = [good] * 5 + [FrameDetections.empty()] + [good] * 24
    stage = PeopleStage(ScriptedBackend(frames))
    stage.setup()
    out = stage(blank_clip(30))
    lab = out.labels["people"]
    assert set(lab) == {"box", "score", "present", "track_id", "stats"}
    assert lab["present"].sum() == 29 and not lab["present"][5] and np.isnan(lab["box"][5]).all()
    assert lab["score"].dtype == np.float32 and lab["track_id"].dtype == np.int64 and int(lab["track_id"]) == 3
    assert lab["stats"]["backend"] == "scripted"
    assert out.provenance["people"]["params"]["filters"]["person_conf"] == 0.5


def test_stage_rejection_names_its_rule_and_carries_stats():
    small = FrameDetections.make([[200, 100, 260, 200]], [0.9], [1])
    with pytest.raises(ClipRejected) as e:
        PeopleStage(ScriptedBackend([small] * 30))(blank_clip(30))
    assert e.value.rule == "small" and e.value.stats["mean_height_ratio"] == pytest.approx(100 / 294, abs=1e-6)


def test_stage_rejects_malformed_frames():
    with pytest.raises(ValueError):
        PeopleStage(ScriptedBackend([]))(
            ClipWindow("k", "s", 0, 1, np.zeros((0, H, W, 3), np.uint8), np.zeros(0))
        )


def test_stage_params_change_with_every_setting():
    """The flow keys its cache on `stage.params` (a dataclass): any setting must show in it."""
    from dataclasses import asdict

    base = asdict(hog_people_stage().params)
    assert base["backend"] == "hog" and base["filters"]["min_height_ratio"] == 0.4
    assert asdict(hog_people_stage(min_height_ratio=0.5).params) != base
    assert asdict(hog_people_stage(scale=1.1).params) != base
    assert asdict(yolo_people_stage(weights="yolo11n.yaml").params)["detector"]["weights"] == "yolo11n.yaml"


def test_factories_split_detector_and_filter_params():
    s = yolo_people_stage(weights="yolo11n.yaml", imgsz=320, min_height_ratio=0.3)
    assert isinstance(s, PeopleStage) and s.filters.min_height_ratio == 0.3 and s.backend.config.imgsz == 320
    with pytest.raises(TypeError, match="no_such"):
        hog_people_stage(no_such=1)


def test_profiles_build_registered_stages_in_order():
    assert PROFILES["paper"][0] == "people:yolo" and PROFILES["lite"][0] == "people:hog"
    lite = stages_for_profile("lite")
    assert [s.name for s in lite] == ["people", "masks", "depth", "keypoints"]  # readers after what they read
    assert type(lite[0].backend).__name__ == "HogBackend"
    paper = stages_for_profile("paper", {"people:yolo": {"weights": "yolo11n.yaml", "person_class": 0}})
    assert paper[0].backend.config.weights == "yolo11n.yaml" and paper[0].name == "people"
    with pytest.raises(KeyError):
        stages_for_profile("fast")
    with pytest.raises(KeyError):
        stages_for_profile("lite", {"people:yolo": {}})
