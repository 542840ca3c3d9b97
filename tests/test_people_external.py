"""people:external: detections from a file, matched by source and time, mapped from source pixels to the
clip's model pixels, tracked, and filtered like every other people backend; bad files fail in setup()."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import pipeline
from tasks.decode import frame_geometry, to_model_frame
from tasks.people import (
    DetectionsFileError,
    DetectionsNotFound,
    ExternalBackend,
    ExternalConfig,
    PeopleStage,
    external_people_stage,
    load_detections,
    match_frame_times,
    source_to_model_boxes,
)
from tasks.probe import VideoInfo, probe_video
from tasks.stage import ClipRejected, ClipWindow, build_stage

BOXES = json.loads((Path(__file__).parent / "data" / "external" / "pose2sim_cam01_boxes.json").read_text())
SUBJECT = [(r["time_s"], r["box"]) for r in BOXES["subject"]]  # hand-drawn, upright source pixels
BYSTANDER = BOXES["bystander"][0]
PORTRAIT = VideoInfo("pose2sim.mp4", 1.6667, 60.0, 1080, 1920, "h264", 0, 100)  # pose2sim_single_cam01.mp4
FRAME_TIMES = [0.0, 0.166667, 0.333333, 0.5]  # as the curation stores them (6 digits) for a 4-frame window


def row(t: float, box, score: float = 0.9, source_id: str = "pose2sim", **extra) -> dict:
    x1, y1, x2, y2 = box
    return {"source_id": source_id, "time_s": t, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": score, **extra}


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def clip_for(info: VideoInfo, times=FRAME_TIMES, source_id: str = "pose2sim") -> ClipWindow:
    """A clip as the curation stages it: frames at the model size, meta with geometry and frame times."""
    geom = frame_geometry(info)
    frames = np.zeros((len(times), geom.out_height, geom.out_width, 3), np.uint8)
    meta = {"key": f"{source_id}-000000000-000001500", "source_id": source_id, "frame_times_s": list(times),
            "geometry": geom.to_dict(), "source_fps": info.fps, "width": geom.out_width, "height": geom.out_height}
    return ClipWindow(meta["key"], source_id, 0.0, 1.5, frames, np.asarray(times), meta)


def backend(path: Path, **config) -> ExternalBackend:
    b = ExternalBackend(ExternalConfig(detections=str(path), **config))
    b.setup()
    return b


def expected_portrait(box) -> np.ndarray:
    # pose2sim's 1080x1920 is resized to 294x523 (scale 0.27222 across, 523/1920 = 0.27240 down) and
    # 2 rows are cropped at the top to make 294x518
    x1, y1, x2, y2 = box
    return np.array([x1 * 294 / 1080, y1 * 523 / 1920 - 2, x2 * 294 / 1080, y2 * 523 / 1920 - 2])


# ------------------------------------------------------------------------------------------ time matching


def test_match_frame_times_nearest_within_the_gap():
    det = np.array([0.0, 1 / 60, 1 / 6, 0.5])
    frames = np.array([0.0, 0.166667, 0.25, 0.49, 0.6, 1 / 120])
    got = match_frame_times(det, frames, max_gap_s=0.5 / 60)
    # 0.25 and 0.6 have no detection time within half a frame; 1/120 lies exactly between 0 and 1/60: earlier wins
    assert got.tolist() == [0, 2, -1, -1, -1, 0]
    assert match_frame_times(det, np.array([0.25, 0.6]), max_gap_s=0.1).tolist() == [2, 3]
    assert match_frame_times(np.zeros(0), frames, 1.0).tolist() == [-1] * 6


def test_each_frame_gets_the_rows_of_its_own_source_and_time(tmp_path):
    a, b, c = (100, 400, 500, 1500), (110, 400, 510, 1500), (120, 420, 520, 1520)
    rows = [row(0.0, a), row(1 / 60, b), row(1 / 6, c), row(1 / 6 + 1e-9, (600, 400, 1000, 1500), score=0.3),
            row(0.0, (0, 0, 1000, 1900), source_id="other"), row(0.4, c)]
    dets = backend(write_json(tmp_path / "d.json", rows)).detect_clip(clip_for(PORTRAIT))
    assert [len(f.boxes) for f in dets] == [1, 2, 0, 0]  # 0.333 and 0.5: nothing within 1/120 s
    np.testing.assert_allclose(dets[0].boxes[0], expected_portrait(a), atol=1e-4)  # not b, the next source frame
    np.testing.assert_allclose(dets[1].boxes, [expected_portrait(c), expected_portrait((600, 400, 1000, 1500))],
                               atol=1e-4)  # rows a float-noise apart belong to the same frame
    np.testing.assert_allclose(dets[1].scores, [0.9, 0.3])
    assert dets[0].track_ids.tolist() == [1] and dets[1].track_ids.tolist() == [1, 2]  # the IoU tracker's ids


def test_sparse_annotations_stand_for_nearby_frames_with_a_larger_gap(tmp_path):
    path = write_json(tmp_path / "d.json", [row(0.0, SUBJECT[0][1]), row(0.5, SUBJECT[3][1])])
    clip = clip_for(PORTRAIT)
    assert [len(f.boxes) for f in backend(path).detect_clip(clip)] == [1, 0, 0, 1]
    dets = backend(path, max_time_gap_s=0.25).detect_clip(clip)
    np.testing.assert_allclose([f.boxes[0] for f in dets],
                               [expected_portrait(SUBJECT[i][1]) for i in (0, 0, 3, 3)], atol=1e-4)


# --------------------------------------------------------------------------------------- pixel mapping


def test_pose2sim_geometry_maps_source_boxes_to_model_pixels():
    geom = frame_geometry(PORTRAIT)
    assert (geom.out_width, geom.out_height, geom.crop_x, geom.crop_y) == (294, 518, 0, 2)
    boxes = np.array([b for _, b in SUBJECT], np.float64)
    np.testing.assert_allclose(source_to_model_boxes(boxes, geom.to_dict()),
                               [expected_portrait(b) for b in boxes], atol=1e-9)
    # the frame's far corner lands on the model frame's far corner (plus the 3 rows cropped at the bottom)
    np.testing.assert_allclose(source_to_model_boxes([[0, 0, 1080, 1920]], geom.to_dict()), [[0, -2, 294, 521]])


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _white_box(frame_rgb: np.ndarray) -> np.ndarray:
    """The extent of the white rectangle, in pixel-edge coordinates (xyxy), at half intensity."""
    ys, xs = np.nonzero(frame_rgb[..., 1] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def _first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as c:
        return next(c.decode(video=0))


@pytest.mark.parametrize("size, rect", [
    ((1080, 1920), (300, 500, 620, 1400)),  # portrait, like pose2sim: crop 2 rows, per-axis scale
    ((768, 576), (100, 100, 400, 500)),  # 4:3 landscape, like vtest: 47 rows cropped at the top
])
def test_mapping_agrees_with_the_decoded_model_frame(tmp_path, size, rect):
    # A lossless video with a white rectangle at known source pixels, decoded by the curation's own
    # decoder: the mapped box must land on the rectangle in the model frame.
    w, h = size
    x1, y1, x2, y2 = rect
    path = tmp_path / "rect.mp4"
    _ffmpeg("-f", "lavfi", "-i", f"color=black:s={w}x{h}:r=10:d=0.2",
            "-vf", f"drawbox=x={x1}:y={y1}:w={x2 - x1}:h={y2 - y1}:color=white:t=fill",
            "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path))
    info = probe_video(str(path))
    geom = frame_geometry(info)
    seen = _white_box(to_model_frame(_first_frame(path), geom))
    mapped = source_to_model_boxes([rect], geom.to_dict())[0]
    np.testing.assert_allclose(mapped, seen, atol=0.6)


def test_rotated_video_maps_upright_pixels(tmp_path):
    # Stored landscape with a 90 degree rotation flag: the file's boxes are in the upright (display) frame,
    # as ffmpeg shows it. The upright rectangle is found in ffmpeg's own autorotated copy.
    stored = tmp_path / "stored.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=black:s=960x540:r=10:d=0.2", "-vf",
            "drawbox=x=100:y=60:w=300:h=200:color=white:t=fill", "-c:v", "libx264", "-qp", "0",
            "-pix_fmt", "yuv444p", str(tmp_path / "flat.mp4"))
    _ffmpeg("-i", str(tmp_path / "flat.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(stored))
    upright = tmp_path / "upright.mp4"
    _ffmpeg("-i", str(stored), "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(upright))
    info = probe_video(str(stored))
    assert info.rotation % 180 == 90 and info.display_size == (540, 960)
    upright_box = _white_box(_first_frame(upright).to_ndarray(format="rgb24"))
    geom = frame_geometry(info)
    seen = _white_box(to_model_frame(_first_frame(stored), geom))
    np.testing.assert_allclose(source_to_model_boxes([upright_box], geom.to_dict())[0], seen, atol=0.6)


# ---------------------------------------------------------------------------------------------- filters


def subject_rows(**extra) -> list[dict]:
    return [row(t, b, **extra) for t, b in SUBJECT]


def run_stage(path: Path, info: VideoInfo = PORTRAIT, **params) -> ClipWindow:
    stage = external_people_stage(detections=str(path), **params)
    stage.setup()
    return stage(clip_for(info))


def test_the_hand_drawn_subject_passes_the_filters(tmp_path):
    clip = run_stage(write_json(tmp_path / "d.json", subject_rows()))
    lab = clip.labels["people"]
    np.testing.assert_allclose(lab["box"], [expected_portrait(b) for _, b in SUBJECT], atol=1e-4)
    assert lab["present"].all() and int(lab["track_id"]) == 1
    assert lab["stats"]["backend"] == "external" and 0.4 < lab["stats"]["mean_height_ratio"] < 0.45


@pytest.mark.parametrize("score, rule", [(0.8, "multi_person"), (0.3, None)])
def test_a_detected_bystander_counts_as_a_second_person(tmp_path, score, rule):
    rows = subject_rows() + [row(BYSTANDER["time_s"], BYSTANDER["box"], score=score)]
    path = write_json(tmp_path / "d.json", rows)
    if rule is None:  # below person_conf (0.5): not counted
        assert run_stage(path).labels["people"]["stats"]["max_people_in_frame"] == 1
        return
    with pytest.raises(ClipRejected) as e:
        run_stage(path)
    assert e.value.rule == rule and e.value.stats["max_people_in_frame"] == 2


def test_small_truncated_and_inconsistent_are_rejected(tmp_path):
    half = [row(t, (b[0], (b[1] + b[3]) / 2, b[2], b[3])) for t, b in SUBJECT]  # the lower half of the body
    with pytest.raises(ClipRejected) as e:
        run_stage(write_json(tmp_path / "small.json", half))
    assert e.value.rule == "small"
    # the frame's top rows are cropped away: a box from the source's top edge reaches the model frame's border
    top = [row(t, (b[0], 0, b[2], b[3])) for t, b in SUBJECT]
    with pytest.raises(ClipRejected) as e:
        run_stage(write_json(tmp_path / "top.json", top))
    assert e.value.rule == "truncated" and e.value.stats["min_border_gap_px"] == 0.0
    with pytest.raises(ClipRejected) as e:  # present in 2 of 4 frames
        run_stage(write_json(tmp_path / "gaps.json", subject_rows()[:2]))
    assert e.value.rule == "inconsistent"
    # the filters take their parameters like the other backends'
    clip = run_stage(write_json(tmp_path / "half.json", subject_rows()[:2]), consistency_share=0.5)
    assert clip.labels["people"]["present"].tolist() == [True, True, False, False]


def test_file_track_ids_are_kept(tmp_path):
    clip = run_stage(write_json(tmp_path / "d.json", subject_rows(track_id=17)))
    assert int(clip.labels["people"]["track_id"]) == 17
    assert clip.provenance["people"]["params"]["detector"]["track_ids"] == "file"


def test_a_source_missing_from_the_file_is_an_error_not_a_rejection(tmp_path):
    b = backend(write_json(tmp_path / "d.json", subject_rows()))
    with pytest.raises(DetectionsNotFound, match=r"d\.json has no detections for source_id 'cam2'"):
        b.detect_clip(clip_for(PORTRAIT, source_id="cam2"))


# ------------------------------------------------------------------------------------- files, provenance


def test_json_jsonl_and_parquet_read_the_same(tmp_path):
    rows = subject_rows() + [row(0.0, (1, 2, 3, 4), score=0.2, source_id="b")]
    write_json(tmp_path / "d.json", {"detections": rows})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    loaded = [load_detections(tmp_path / f"d.{ext}") for ext in ("json", "jsonl", "parquet")]
    for by_source, with_track, n in loaded:
        assert sorted(by_source) == ["b", "pose2sim"] and not with_track and n == 5
        np.testing.assert_array_equal(by_source["pose2sim"].times, loaded[0][0]["pose2sim"].times)
        np.testing.assert_array_equal(by_source["pose2sim"].boxes, loaded[0][0]["pose2sim"].boxes)
        np.testing.assert_array_equal(by_source["b"].scores, [np.float32(0.2)])


BAD_ROWS = [
    ([row(0, (1, 2, 3, 4)), [1, 2]], "row 2: expected an object"),
    ([row(0, (1, 2, 3, 4)), {k: v for k, v in row(0, (1, 2, 3, 4)).items() if k != "score"}], "row 2: missing score"),
    ([row(0, (1, 2, 3, 4), source_id="")], "row 1: source_id must be a non-empty string"),
    ([row(0, (1, 2, 3, 4)), {**row(0, (1, 2, 3, 4)), "time_s": "0.5"}], "row 2: time_s must be a finite number"),
    ([{**row(0, (1, 2, 3, 4)), "x1": float("nan")}], "row 1: x1 must be a finite number"),
    ([{**row(0, (1, 2, 3, 4)), "y2": True}], "row 1: y2 must be a finite number"),
    ([row(-0.1, (1, 2, 3, 4))], "row 1: time_s must be >= 0"),
    ([row(0, (1, 2, 3, 4)), row(0, (5, 2, 3, 4))], "row 2: box must have x2 > x1"),
    ([row(0, (1, 2, 3, 4), score=1.5)], r"row 1: score must be in \[0, 1\]"),
    ([row(0, (1, 2, 3, 4), track_id=1), row(0, (1, 2, 3, 4))], "row 2: track_id missing"),
    ([row(0, (1, 2, 3, 4), track_id=-1)], "row 1: track_id must be an integer >= 0"),
    ([row(0, (1, 2, 3, 4), track_id=1.5)], "row 1: track_id must be an integer >= 0"),
    ({"rows": []}, "expected a list of rows"),
]


@pytest.mark.parametrize("rows, message", BAD_ROWS)
def test_malformed_rows_fail_in_setup_naming_file_and_row(tmp_path, rows, message):
    path = write_json(tmp_path / "bad.json", rows)
    stage = build_stage("people:external", detections=str(path))
    with pytest.raises(DetectionsFileError, match=message) as e:
        stage.setup()
    assert str(path) in str(e.value)


def test_unreadable_files_fail_in_setup(tmp_path):
    def setup_error(path: Path | str) -> str:
        with pytest.raises(DetectionsFileError) as e:
            ExternalBackend(ExternalConfig(detections=str(path))).setup()
        return str(e.value)

    assert "needs a detections file" in setup_error("")
    assert f"{tmp_path / 'none.json'}: detections file not found" in setup_error(tmp_path / "none.json")
    (tmp_path / "d.csv").write_text("source_id,time_s\n")
    assert "unknown detections format '.csv'" in setup_error(tmp_path / "d.csv")
    (tmp_path / "d.json").write_text("[{")
    assert "d.json: not JSON" in setup_error(tmp_path / "d.json")
    (tmp_path / "d.jsonl").write_text(json.dumps(row(0, (1, 2, 3, 4))) + "\n\n{oops\n")
    assert "d.jsonl: line 3: not JSON" in setup_error(tmp_path / "d.jsonl")
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    assert "d.parquet: cannot read as Parquet" in setup_error(tmp_path / "d.parquet")
    no_score = [{k: v for k, v in r.items() if k != "score"} for r in subject_rows()]
    pq.write_table(pa.Table.from_pylist(no_score), tmp_path / "cols.parquet")
    assert "cols.parquet: no column score" in setup_error(tmp_path / "cols.parquet")
    with_null = subject_rows()
    with_null[1]["x1"] = None
    pq.write_table(pa.Table.from_pylist(with_null), tmp_path / "null.parquet")
    assert "null.parquet: row 2: missing x1" in setup_error(tmp_path / "null.parquet")


def test_provenance_names_the_file_and_its_hash_and_keys_the_cache(tmp_path):
    path = write_json(tmp_path / "d.json", subject_rows())
    stage = external_people_stage(detections=str(path))
    stage.setup()
    prov = stage(clip_for(PORTRAIT)).provenance["people"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["backend"] == "external" and prov["weights"] is None and prov["weights_sha256"] is None
    assert prov["detections"] == str(path.resolve()) and prov["detections_sha256"] == digest
    assert prov["params"]["detector"]["rows"] == 4 and prov["params"]["filters"]["person_conf"] == 0.5
    assert prov["package_version"].startswith("unish ")
    fp = pipeline.stage_fingerprint(stage)
    again = external_people_stage(detections=str(path))
    again.setup()
    assert pipeline.stage_fingerprint(again) == fp  # same file, same key
    write_json(path, subject_rows(score=0.8))  # new content at the same path: a new key
    changed = external_people_stage(detections=str(path))
    changed.setup()
    assert pipeline.stage_fingerprint(changed) != fp
    # the stage built before the edit refuses to label from stale rows
    with pytest.raises(DetectionsFileError, match="changed after it was loaded"):
        stage(clip_for(PORTRAIT))


def test_stage_needs_the_clip_and_splits_its_params(tmp_path):
    path = write_json(tmp_path / "d.json", subject_rows())
    stage = external_people_stage(detections=str(path), min_height_ratio=0.3, max_time_gap_s=0.01)
    assert isinstance(stage, PeopleStage) and stage.filters.min_height_ratio == 0.3
    assert stage.backend.config.max_time_gap_s == 0.01
    with pytest.raises(TypeError, match="needs the clip"):
        stage.evaluate(clip_for(PORTRAIT).frames)
    with pytest.raises(TypeError, match="no_such"):
        external_people_stage(detections=str(path), no_such=1)
    clip = clip_for(PORTRAIT)
    del clip.meta["geometry"]
    with pytest.raises(ValueError, match="no meta\\['geometry'\\]"):
        stage(clip)
