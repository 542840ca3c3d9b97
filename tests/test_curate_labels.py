"""Every label family end to end: `run_curate` on a real portrait video with people:external, then the
paper chain (SAM2.1, MoGe-2, CameraHMR: real architectures, random weights) or the lite chain (MediaPipe,
no depth), into shards, and back through `shards.reader`.

The person boxes come from tests/data/external/pose2sim_cam01_boxes.json, drawn by hand on the source
frames the window samples (see its README): no offline detector finds this person (HOG misses him, a
random-weight YOLO boxes noise), so the people stage reads them as an external detections file.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from flows.curate import run_curate
from flows.params import CurateConfig
from shards import depth_codec
from shards.index import read_index
from shards.mask_codec import unpack_masks
from shards.reader import iter_clips, shard_urls
from shards.runfolder import LOCK_FILE
from unish_model.body import write_synthetic_body_model
from unish_model.convert.camerahmr import smpl_head_key, vit_key
from unish_model.human import HumanBranch, HumanBranchConfig

REPO = Path(__file__).resolve().parents[1]
BOXES = Path(__file__).parent / "data" / "external" / "pose2sim_cam01_boxes.json"
VIDEO = "pose2sim_single_cam01.mp4"
SOURCE_ID = "pose2sim"
T, H, W = 4, 518, 294  # 4 frames at 6 fps (0 .. 0.5 s) of one 1.5 s window, portrait model size
BASE = dict(progress=False, workers=1, window_seconds=1.5, window_frames=4, fetch_retries=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def detection_rows() -> list[dict]:
    spec = json.loads(BOXES.read_text())
    rows = [{"source_id": SOURCE_ID, "time_s": r["time_s"], "x1": r["box"][0], "y1": r["box"][1],
             "x2": r["box"][2], "y2": r["box"][3], "score": 0.9} for r in spec["subject"]]
    # Rows the stage must ignore: another video, and a time between two sampled frames.
    rows.append({"source_id": "other", "time_s": 0.0, "x1": 0, "y1": 0, "x2": 500, "y2": 1900, "score": 0.99})
    rows.append({"source_id": SOURCE_ID, "time_s": 0.25, "x1": 0, "y1": 0, "x2": 1000, "y2": 1000, "score": 0.99})
    return rows


def _official_name(ours: str) -> str:
    if ours.startswith("backbone."):
        return "backbone." + vit_key.official(ours[len("backbone."):])
    return "smpl_head." + smpl_head_key.official(ours[len("head."):])


def write_camerahmr_files(d: Path) -> tuple[Path, Path]:
    """A tiny CameraHMR checkpoint in the official layout (Lightning state_dict, official key names) and a
    synthetic SMPL-layout body model, as tests/test_keypoints.py writes them."""
    torch.manual_seed(0)
    model = HumanBranch(HumanBranchConfig.tiny(with_camera_head=True, with_keypoint_head=True)).eval()
    with torch.no_grad():
        model.head.camera_out.weight.mul_(0.01)  # camera scale near its mean: the body in front of the camera
    ckpt = d / "camerahmr_tiny.ckpt"
    torch.save({"state_dict": {_official_name(k): v for k, v in model.state_dict().items()}}, ckpt)
    return ckpt, write_synthetic_body_model(d / "smpl.npz", ring_size=8, rings=60)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(out: Path) -> dict[str, tuple[int, str]]:
    """Every file the run wrote, tables included, except the run lock (each writer leaves its record there)."""
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, sha256(p)) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def curate(d: Path, media: Path, stages: list[str], params: dict) -> tuple[Path, dict, CurateConfig]:
    shutil.copy(media / VIDEO, d / VIDEO)
    manifest = d / "manifest.csv"
    manifest.write_text(f"source,id\n{VIDEO},{SOURCE_ID}\n")
    config = CurateConfig(**BASE, stages=stages, stage_params=params)
    out = d / "out"
    return out, run_curate(manifest, out, config), config


def read_back(out: Path) -> tuple[dict, list]:
    index, _videos = read_index(out)
    rows = index.to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    clips = list(iter_clips(shard_urls(out / "shards")))
    assert [c.key for c in clips] == [rows[0]["key"]] == [f"{SOURCE_ID}-000000000-000001500"]
    return rows[0], clips


def check_people(clip, dets: Path, subject_boxes: np.ndarray) -> None:
    people = clip.labels["people"]
    assert people["box"].shape == (T, 4) and people["box"].dtype == np.float32
    assert people["score"].shape == (T,) and people["score"].dtype == np.float32
    assert people["present"].shape == (T,) and people["present"].dtype == bool and people["present"].all()
    assert people["track_id"].dtype == np.int64 and int(people["track_id"]) == 1  # the IoU tracker's first id
    # the hand-drawn source boxes in model pixels: x * 294/1080, y * 523/1920 - 2 (2 rows cropped at the top)
    expected = subject_boxes * [W / 1080, 523 / 1920, W / 1080, 523 / 1920] - [0, 2, 0, 2]
    np.testing.assert_allclose(people["box"], expected, atol=1e-3)
    np.testing.assert_allclose(people["score"], 0.9, atol=1e-6)  # the decoy rows (0.99) were not picked
    stats = people["stats"]
    assert stats["backend"] == "external" and stats["max_people_in_frame"] == 1 and stats["num_tracks"] == 1
    assert stats["mean_height_ratio"] > 0.4
    prov = clip.meta["labels"]["people"]
    assert prov["backend"] == "external" and prov["version"] == "1"
    assert prov["detections"] == str(dets) and prov["detections_sha256"] == sha256(dets)
    assert prov["params"]["detector"]["track_ids"] == "iou_tracker"


def check_masks(clip) -> np.ndarray:
    entries = clip.labels["masks"]
    assert entries["mask_bits"].dtype == np.uint8 and entries["mask_bits"].ndim == 1
    assert entries["format"]["shape"] == [T, H, W]
    masks = unpack_masks(entries)
    assert masks.shape == (T, H, W) and masks.dtype == bool
    assert entries["area"].dtype == np.int32 and entries["area"].shape == (T,)
    np.testing.assert_array_equal(entries["area"], masks.sum(axis=(1, 2)))
    assert (entries["area"] > 0).all()
    return masks


def check_keypoints(clip, backend: str) -> dict:
    kp = clip.labels["keypoints"]
    assert kp["joints2d"].shape == (T, 24, 2) and kp["joints2d"].dtype == np.float32
    assert kp["confidence"].shape == (T, 24) and kp["confidence"].dtype == np.float32
    assert kp["present"].shape == (T,) and kp["present"].dtype == bool
    assert kp["info"]["backend"] == backend and kp["info"]["image_size"] == [W, H]
    return kp


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, media, prefect_api):
    d = tmp_path_factory.mktemp("paper")
    dets = d / "detections.json"
    dets.write_text(json.dumps(detection_rows()))
    ckpt, body = write_camerahmr_files(d)
    params = {
        "people:external": {"detections": str(dets)},
        # Random weights segment and estimate anything: the quality rules are off, every code path runs.
        "masks:sam2": {"weights": "sam2.1_hiera_tiny", "allow_random_weights": True, "image_size": 256,
                       "device": "cpu", "min_box_fill": 0.0, "min_in_box": 0.0},
        "depth:moge": {"allow_random_weights": True, "num_tokens": 48, "batch_size": 4, "device": "cpu",
                       "min_valid_frac": 0.0},
        "keypoints:camerahmr": {"checkpoint": str(ckpt), "body_model": str(body), "arch": "tiny", "device": "cpu"},
    }
    stages = ["people:external", "masks:sam2", "depth:moge", "keypoints:camerahmr"]
    out, result, config = curate(d, media, stages, params)
    return {"out": out, "result": result, "config": config, "dets": dets, "ckpt": ckpt, "body": body, "d": d}


def test_paper_chain_writes_every_label_family(paper_run):
    assert {k: paper_run["result"][k] for k in ("videos", "clips", "ok", "skipped")} == \
        {"videos": 1, "clips": 1, "ok": 1, "skipped": 0}
    row, (clip,) = read_back(paper_run["out"])
    assert clip.frames.shape == (T, H, W, 3) and clip.meta["frame_times_s"] == [0.0, 0.166667, 0.333333, 0.5]
    subject = np.array([r["box"] for r in json.loads(BOXES.read_text())["subject"]], np.float64)
    check_people(clip, paper_run["dets"].resolve(), subject)
    check_masks(clip)

    label = depth_codec.from_entries(clip.labels["depth"], key=clip.key)
    assert label.depth.shape == label.valid.shape == (T, H, W) and label.depth.dtype == np.float32
    assert label.intrinsics.shape == (T, 3, 3) and label.valid.any()
    np.testing.assert_allclose(label.intrinsics[:, 0, 2], W / 2)
    assert label.max_rel_error <= 1e-3 + 1e-6

    kp = check_keypoints(clip, "camerahmr")
    assert kp["rotmats"].shape == (T, 24, 3, 3) and kp["betas"].shape[0] == T
    assert kp["translation"].shape == (T, 3) and kp["camera"].shape == (T, 3)
    # the focal came from the depth stage's intrinsics, not the default
    assert kp["info"]["focal_source"] == "depth"
    np.testing.assert_allclose(kp["focal"], (label.intrinsics[:, 0, 0] + label.intrinsics[:, 1, 1]) / 2, rtol=1e-5)

    labels = clip.meta["labels"]
    assert labels["masks"]["backend"] == "sam2" and labels["masks"]["params"]["segmenter"]["random_weights"] is True
    assert labels["masks"]["weights_sha256"] is None  # no file: random weights
    assert labels["depth"]["backend"] == "moge" and labels["depth"]["package_version"] == "dlr-moge 2.0.0"
    assert labels["keypoints"]["backend"] == "camerahmr"
    assert labels["keypoints"]["weights_sha256"] == sha256(paper_run["ckpt"])
    assert labels["keypoints"]["body_model_sha256"] == sha256(paper_run["body"])
    versions = json.loads(row["labels"])
    assert versions == {f: labels[f]["version"] for f in ("people", "masks", "depth", "keypoints")}
    assert versions == {"people": "1", "masks": "1", "depth": "2", "keypoints": "1"}  # depth 2: stats.moge_mask


def test_paper_chain_rerun_does_no_work(paper_run, media):
    out = paper_run["out"]
    before = snapshot(out)
    index_before = pq.read_table(out / "index.parquet")
    manifest = paper_run["d"] / "manifest.csv"
    again = run_curate(manifest, out, paper_run["config"])
    assert again == {**paper_run["result"], "skipped": 1, "tables_written": False}
    assert snapshot(out) == before  # no shard, staged label or marker rewritten
    assert pq.read_table(out / "index.parquet").equals(index_before)


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory, media, prefect_api):
    """The lite chain through the `unish curate` command line, parameters as `--stage-param`."""
    d = tmp_path_factory.mktemp("lite")
    dets = d / "detections.parquet"  # the other file format, same rows
    pq.write_table(pa.Table.from_pylist(detection_rows()), dets)
    shutil.copy(media / VIDEO, d / VIDEO)
    (d / "manifest.csv").write_text(f"source,id\n{VIDEO},{SOURCE_ID}\n")
    out = d / "out"
    cmd = [sys.executable, "-m", "flows.cli", "curate", str(d / "manifest.csv"), "--out", str(out),
           "--stages", "people:external,masks:mediapipe,depth:none,keypoints:mediapipe",
           "--stage-param", f"people:external.detections={dets}",
           "--stage-param", "people:external.max_time_gap_s=0.005",
           "--window-seconds", "1.5", "--window-frames", "4", "--workers", "1", "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "dets": dets, "stdout": r.stdout}


def test_lite_chain_writes_every_label_family_and_says_depth_is_absent(lite_run):
    row, (clip,) = read_back(lite_run["out"])
    subject = np.array([r["box"] for r in json.loads(BOXES.read_text())["subject"]], np.float64)
    check_people(clip, lite_run["dets"].resolve(), subject)
    masks = check_masks(clip)
    people_box = clip.labels["people"]["box"]
    for i in range(T):  # MediaPipe's mask stays inside the (5% grown) person box
        ys, xs = np.nonzero(masks[i])
        x0, y0, x1, y1 = people_box[i]
        bw, bh = x1 - x0, y1 - y0
        assert xs.min() >= x0 - 0.05 * bw - 1 and xs.max() <= x1 + 0.05 * bw + 1
        assert ys.min() >= y0 - 0.05 * bh - 1 and ys.max() <= y1 + 0.05 * bh + 1

    assert clip.labels["depth"] == {"absent": {"reason": clip.labels["depth"]["absent"]["reason"], "backend": "none"}}
    with pytest.raises(depth_codec.DepthAbsent, match="no offline depth model"):
        depth_codec.from_entries(clip.labels["depth"], key=clip.key)

    kp = check_keypoints(clip, "mediapipe")
    assert kp["landmarks"].shape == (T, 33, 3) and kp["landmarks"].dtype == np.float32
    assert kp["present"].all()  # MediaPipe finds the man in every crop
    hips = kp["joints2d"][:, 1:3]  # SMPL left/right hip: inside the person's box
    assert ((hips[..., 0] > people_box[:, None, 0]) & (hips[..., 0] < people_box[:, None, 2])).all()

    labels = clip.meta["labels"]
    assert labels["people"]["params"]["detector"]["max_time_gap_s"] == 0.005  # the --stage-param arrived
    assert labels["masks"]["backend"] == "mediapipe" and len(labels["masks"]["weights_sha256"]) == 64
    assert labels["depth"]["backend"] == "none" and labels["depth"]["weights_sha256"] is None
    assert labels["keypoints"]["backend"] == "mediapipe" and len(labels["keypoints"]["weights_sha256"]) == 64
    versions = json.loads(row["labels"])
    assert versions == {f: labels[f]["version"] for f in ("people", "masks", "depth", "keypoints")}


def test_a_malformed_detections_file_stops_the_run_before_any_video(tmp_path, media, prefect_api):
    from tasks.people import DetectionsFileError

    rows = detection_rows()
    rows[2] = {**rows[2], "x2": rows[2]["x1"] - 1}  # an inverted box in the third row
    dets = tmp_path / "detections.json"
    dets.write_text(json.dumps(rows))
    with pytest.raises(DetectionsFileError, match=r"detections\.json: row 3: box must have x2 > x1"):
        curate(tmp_path, media, ["people:external"], {"people:external": {"detections": str(dets)}})
    assert not (tmp_path / "out" / "_work" / "videos").exists()  # failed in setup: no video was touched


def test_a_rejection_is_reconsidered_when_its_stage_changes(tmp_path, media, prefect_api):
    """A window rejected with one detections file is kept once the file is corrected (the verdict was the
    stage's, and the stage changed); an unchanged rerun keeps the verdict without redoing it."""
    rows = detection_rows()
    bystander = {**rows[0], "x1": 0, "y1": 300, "x2": 200, "y2": 900, "score": 0.8}
    with_bystander = rows + [{**bystander, "time_s": r["time_s"]} for r in rows if r["source_id"] == SOURCE_ID]
    dets = tmp_path / "detections.json"
    dets.write_text(json.dumps(with_bystander))
    params = {"people:external": {"detections": str(dets)}}
    out, _, _ = curate(tmp_path, media, ["people:external"], params)
    [row] = read_index(out)[0].to_pylist()
    assert (row["status"], row["reason"]) == ("rejected", "multi_person")

    dets.write_text(json.dumps(rows))  # the annotator removes the bystander
    curate(tmp_path, media, ["people:external"], params)
    [row] = read_index(out)[0].to_pylist()
    assert row["status"] == "ok" and row["reason"] == ""
    assert [c.key for c in iter_clips(shard_urls(out / "shards"))] == [row["key"]]


def test_a_clip_error_is_recorded_on_the_clip_and_retried(tmp_path, media, prefect_api):
    """A stage failing on a clip marks that clip `error` (the video stays ok); the next run retries it."""
    dets = tmp_path / "detections.json"
    dets.write_text(json.dumps([r for r in detection_rows() if r["source_id"] != SOURCE_ID]))
    params = {"people:external": {"detections": str(dets)}}
    out, _, _ = curate(tmp_path, media, ["people:external"], params)
    index, videos = read_index(out)
    [row] = index.to_pylist()
    assert row["status"] == "error" and row["reason"] == "DetectionsNotFound" and SOURCE_ID in row["message"]
    assert videos.to_pylist()[0]["status"] == "ok"

    dets.write_text(json.dumps(detection_rows()))
    curate(tmp_path, media, ["people:external"], params)
    [row] = read_index(out)[0].to_pylist()
    assert row["status"] == "ok"
