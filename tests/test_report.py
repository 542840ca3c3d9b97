"""`unish report` and `unish inspect` on a small curated run (tests/report_run.py: every window's fate known).

The page is opened in headless Chromium (installed from Debian's registry when missing): every image decodes,
the funnel chart's bars and numbers are the index's, nothing is logged as an error, and a screenshot is taken.
"""
from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from report_run import AT_BORDER, FATES, PERSON, SECOND, SMALL, curate_report_run
from shards.index import compute_funnel, read_index

RULES = sorted({f for f in FATES if f != "ok"})


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_api) -> Path:
    return curate_report_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(run, tmp_path_factory) -> tuple[Path, str]:
    from flows.cli import app

    out = tmp_path_factory.mktemp("page") / "report.html"
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(out), "--sample", "2"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return out, r.output


@pytest.fixture(scope="session")
def chromium() -> str:
    from chromium import find_chromium

    return find_chromium()


CHECK = """(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const bars = data.funnel_bars.map((b, i) => {
    const bar = document.getElementById('funnel-bar-' + i), label = document.getElementById('funnel-label-' + i);
    return {width: bar ? bar.getBBox().width : null, label: label ? label.textContent.trim() : null,
            tick: null};
  });
  return {images: imgs.map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight})), data, bars,
          sheets: Array.from(document.querySelectorAll('.sheet')).map(
            s => ({key: s.dataset.key, outcome: s.dataset.outcome, images: s.querySelectorAll('img').length})),
          svgs: document.querySelectorAll('svg').length};
})()"""


def _expected_bars(run: Path) -> list[tuple[str, int]]:
    f = compute_funnel(*read_index(run))
    return ([("videos in", f.videos_in)] + [(f"video error: {r}", n) for r, n in sorted(f.videos_error.items())]
            + [(f"video rejected: {r}", n) for r, n in sorted(f.videos_rejected.items())]
            + [("videos windowed", f.videos_ok), ("clip windows", f.windows)]
            + [(f"rejected: {r}", n) for r, n in sorted(f.rejected.items())]
            + [(f"error: {r}", n) for r, n in sorted(f.errors.items())] + [("clips written", f.clips_written)])


def test_report_in_chromium_images_chart_and_no_errors(run, page, chromium, tmp_path):
    from chromium import open_page

    path, _ = page
    result = open_page(chromium, path, CHECK)
    v = result.value
    assert result.console_errors == []
    # every image decoded: the contact sheets' frames and depth maps (JPEG data URIs)
    assert v["images"] and all(i["width"] > 0 and i["height"] > 0 for i in v["images"]), v["images"]
    assert len(v["images"]) == sum(s["images"] for s in v["sheets"])
    # the chart's numbers are the index's: the embedded JSON, the bars' labels and the bars' lengths
    funnel = compute_funnel(*read_index(run))
    expected = {k: (dict(x) if isinstance(x, dict) else x) for k, x in vars(funnel).items()}
    assert v["data"]["funnel"] == expected
    bars = _expected_bars(run)
    assert [(b["label"], b["count"]) for b in v["data"]["funnel_bars"]] == bars
    assert [int(b["label"]) for b in v["bars"]] == [n for _, n in bars]
    widths = np.array([b["width"] for b in v["bars"]], float)
    counts = np.array([n for _, n in bars], float)
    np.testing.assert_allclose(widths / widths.max(), counts / counts.max(), atol=1e-3)
    # a contact sheet for the sampled kept clips and one per rejection rule
    outcomes = sorted({s["outcome"] for s in v["sheets"]})
    assert outcomes == sorted({"ok", *RULES})
    assert v["svgs"] >= 8  # funnel, sources, six distributions
    # the screenshot is a real render: a PNG as wide as the window, taller than one screen, not blank
    shot = result.screenshot
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", shot[16:24])
    assert width == 1200 and height > 2000
    (tmp_path / "report.png").write_bytes(shot)
    import cv2

    img = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (height, width) and float(img.std()) > 20


def test_report_is_self_contained_and_light(page):
    path, output = page
    html = path.read_text()
    # nothing to fetch: every src is a JPEG data URI, every link a reference inside the page (the charts' markers),
    # no stylesheet or script is loaded from elsewhere
    sources = re.findall(r"""\bsrc\s*=\s*["']([^"']*)["']""", html)
    links = re.findall(r"""\bhref\s*=\s*["']([^"']*)["']""", html)
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources), [s[:40] for s in sources]
    assert all(h.startswith("#") for h in links), [h for h in links if not h.startswith("#")]
    assert "<link" not in html and not re.search(r"<script[^>]*\bsrc=", html)
    assert "url(http" not in html and "@import" not in html
    size = path.stat().st_size
    assert size < 600_000, size
    for uri in sources:  # each a JPEG thumbnail at most 240 px wide
        data = base64.b64decode(uri.split(",", 1)[1])
        assert data[:2] == b"\xff\xd8"
    assert "wrote" in output


def test_report_draws_what_made_each_rule_fire(run, monkeypatch):
    """The overlays the sheets draw: the second person (multi_person), the border touched (truncated), the small
    box against the minimum height (small); on kept clips the box, the mask and the keypoints."""
    from flows import report_html, report_sheets
    from shards.reader import iter_clips, shard_urls
    from tasks.people.external import source_to_model_boxes

    drawn: list[tuple[report_sheets.Overlay, tuple[int, ...]]] = []
    real = report_sheets.draw_frame

    def record(frame, o):
        drawn.append((o, frame.shape))
        return real(frame, o)

    monkeypatch.setattr(report_sheets, "draw_frame", record)
    data = report_html.gather(run, sample=1)
    geometry = next(iter(iter_clips(shard_urls(run / "shards")))).meta["geometry"]
    model = {name: source_to_model_boxes(np.array([b]), geometry)[0]
             for name, b in (("person", PERSON), ("second", SECOND), ("border", AT_BORDER), ("small", SMALL))}
    by_outcome: dict[str, list] = {}
    for sheets in [data.ok_sheets, *data.rejected_sheets.values()]:
        for s in sheets:
            by_outcome.setdefault(s.outcome, []).extend(s.frames)
    assert sorted(by_outcome) == sorted({"ok", *RULES})
    overlays = iter(drawn)
    # sheets are drawn in order: the kept sample, then each rule in sorted order
    ok = [next(overlays) for _ in data.ok_sheets[0].frames]
    for o, shape in ok:
        np.testing.assert_allclose(o.box, model["person"], atol=0.5)
        assert o.mask is not None and o.mask.shape == shape[:2] and o.mask.any()
        assert o.joints is not None and o.joints.shape == (24, 2) and o.parents
        assert not o.others and o.border_margin is None and o.min_height_ratio is None
    rule_overlays = {rule: [next(overlays) for _ in data.rejected_sheets[rule][0].frames] for rule in RULES}
    for o, _ in rule_overlays["multi_person"]:
        np.testing.assert_allclose(o.box, model["person"], atol=0.5)
        assert len(o.others) == 1
        np.testing.assert_allclose(o.others[0], model["second"], atol=0.5)
    for o, _ in rule_overlays["truncated"]:
        assert o.box[0] == 0 and o.border_margin == 1.0
    for o, _ in rule_overlays["small"]:
        np.testing.assert_allclose(o.box, model["small"], atol=0.5)
        assert o.min_height_ratio == 0.4
    for o, _ in rule_overlays["no_person"]:
        assert o.box is None and not o.others
    assert next(overlays, None) is None
    # the distributions: every clip with a person has its height measured; the threshold is the run's
    heights = {f.outcome: f.height_ratio for f in data.facts}
    assert heights["small"] == pytest.approx(0.25, abs=0.01) and heights["ok"] > 0.7
    assert heights["no_person"] is None
    assert data.thresholds["min_height_ratio"] == 0.4
    assert all(f.mask_area and f.depth_max_m and f.keypoint_conf == pytest.approx(0.9) for f in data.facts
               if f.outcome == "ok")
    assert sum(data.keypoint_hist) == 4 * 3 * 24  # 4 kept clips x 3 frames x 24 joints


def test_draw_frame_marks_the_evidence():
    from flows.report_sheets import GREEN, RED, YELLOW, Overlay, draw_frame

    frame = np.zeros((100, 200, 3), np.uint8)
    img = draw_frame(frame, Overlay(box=np.array([0, 20, 40, 80.0]), others=[np.array([100, 20, 140, 80.0])],
                                    border_margin=1.0))
    assert tuple(img[50, 100]) == RED and tuple(img[50, 139]) == RED  # the other person's box edges
    assert tuple(img[50, 0]) == RED  # the left border, touched by the box
    assert tuple(img[50, 199]) == (0, 0, 0)  # the right border is not
    assert tuple(img[20, 20]) == GREEN  # the tracked person's top edge
    small = draw_frame(frame, Overlay(box=np.array([80, 60, 100, 80.0]), min_height_ratio=0.4))
    assert tuple(small[60, 90]) == YELLOW
    column = small[:, 107]  # the reference bar beside the box: 40% of 100 px, ending at the box's bottom
    rows = np.flatnonzero((column == YELLOW).all(1))  # (lines 3 px thick: +-2 rows at each end)
    assert abs(rows.max() - rows.min() - 40) <= 4 and abs(rows.max() - 79) <= 2
    assert (frame == 0).all()  # drawn on a copy


def _inspect(*args: str) -> dict:
    from flows.cli import app

    r = CliRunner().invoke(app, ["inspect", *args, "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return json.loads(r.output)


def test_inspect_filters_families_and_one_clip(run):
    index, _ = read_index(run)
    rows = index.to_pylist()
    plain = _inspect(str(run))
    assert set(plain) == {"funnel", "read_back", "label_families"}  # no filter: the keys as before, and the families
    assert plain["label_families"] == {"people": 4, "masks": 4, "depth": 4, "keypoints": 4}
    assert len(plain["read_back"]) == 3
    rejected = _inspect(str(run), "--status", "rejected")
    assert rejected["matched"] == len(RULES) and rejected["read_back"] == []
    assert sorted(c["reason"] for c in rejected["clips"]) == RULES
    small = _inspect(str(run), "--reason", "small")
    assert [c["key"] for c in small["clips"]] == [r["key"] for r in rows if r["reason"] == "small"]
    ok = _inspect(str(run), "--status", "ok", "--samples", "10")
    assert sorted(c["key"] for c in ok["read_back"]) == sorted(r["key"] for r in rows if r["status"] == "ok")

    key = next(r["key"] for r in rows if r["status"] == "ok")
    clip = _inspect(str(run), "--key", key)["clip"]
    assert clip["key"] == key and clip["status"] == "ok" and clip["frames"] == [3, 294, 518, 3]
    assert clip["labels"]["keypoints"]["joints2d"]["shape"] == [3, 24, 2]
    assert clip["labels"]["people"]["stats"]["mean_height_ratio"] > 0.7
    assert clip["provenance"]["people"]["backend"] == "external"
    multi = next(r["key"] for r in rows if r["reason"] == "multi_person")
    clip = _inspect(str(run), "--key", multi)["clip"]
    assert clip["stats"]["people"]["max_people_in_frame"] == 2
    assert clip["evidence"]["boxes"]["shape"] == [6, 4]  # 3 frames x 2 people, as the rule saw them

    from flows.cli import app

    missing = CliRunner().invoke(app, ["inspect", str(run), "--key", "nope-000000000-000000001"])
    assert missing.exit_code == 1 and "nope-000000000-000000001" in missing.output
    bad = CliRunner().invoke(app, ["inspect", str(run), "--status", "fine"])
    assert bad.exit_code == 2


def test_smpl_parents_agree_with_the_body_model():
    from tasks.keypoints import SMPL_JOINT_NAMES, SMPL_PARENTS
    from unish_model.body import SMPL_JOINT_NAMES as BODY_NAMES, SMPL_PARENTS as BODY_PARENTS

    assert tuple(SMPL_PARENTS) == tuple(BODY_PARENTS) and tuple(SMPL_JOINT_NAMES) == tuple(BODY_NAMES)


def test_the_browser_check_sees_broken_images_and_errors(chromium, tmp_path):
    """The harness itself: a page with an undecodable image, a console error and an exception fails each check."""
    from chromium import open_page

    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="data:image/jpeg;base64,/9j/AAAA" alt="broken">'
                   '<script>console.error("boom"); throw new Error("kaput");</script></body></html>')
    result = open_page(chromium, bad, "Array.from(document.images).map(i => i.naturalWidth)")
    assert result.value == [0]
    assert any("boom" in e for e in result.console_errors) and any("kaput" in e for e in result.console_errors)


def test_view_writes_a_clip_recording_with_depth_in_3d(run, tmp_path):
    """`unish view`: the clip's frames, mask, box and keypoints in 2D, its depth as points through its intrinsics."""
    from rerun.chunk import RrdReader

    from flows.cli import app
    from shards.reader import iter_clips, shard_urls
    from train_data import synthetic_depth
    from unish_model.viewer import CLIP_ENTITIES, CLIP_VIEWS

    index, _ = read_index(run)
    key = sorted(r["key"] for r in index.to_pylist() if r["status"] == "ok")[1]
    out = tmp_path / "clip.rrd"
    r = CliRunner().invoke(app, ["view", str(run), "--key", key, "--out", str(out), "--no-open"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    reader = RrdReader(out)
    (store,) = reader.blueprints()
    views = {}
    for chunk in reader.stream(store=store).to_chunks():
        batch = chunk.to_record_batch()
        if "ViewBlueprint:class_identifier" in batch.schema.names:
            views[batch.column("ViewBlueprint:display_name").to_pylist()[0][0]] = (
                batch.column("ViewBlueprint:class_identifier").to_pylist()[0][0],
                batch.column("ViewBlueprint:space_origin").to_pylist()[0][0])
    assert views == CLIP_VIEWS
    rows: dict[str, int] = {}
    points = []
    for chunk in reader.stream().to_chunks():
        if chunk.entity_path.startswith("/__"):
            continue
        rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
        batch = chunk.to_record_batch()
        if chunk.entity_path == "/clip/points" and "Points3D:positions" in batch.schema.names:
            points += [np.asarray(p, np.float32) for p in batch.column("Points3D:positions").to_pylist()]
    assert set(rows) == set(CLIP_ENTITIES)
    assert rows["/clip/points"] == rows["/clip/depth"] == rows["/clip/camera/box"] == 3  # one per frame
    clip = next(c for c in iter_clips(shard_urls(run / "shards")) if c.key == key)
    k = np.asarray(clip.labels["depth"]["intrinsics"][0], np.float64)
    depth = synthetic_depth(3, 294, 518)
    for cloud in points:  # each point lies on its pixel's ray, at that pixel's depth (the codec's 1e-3 bound)
        assert len(cloud) > 1000
        u = cloud[:, 0] / cloud[:, 2] * k[0, 0] + k[0, 2] - 0.5
        v = cloud[:, 1] / cloud[:, 2] * k[1, 1] + k[1, 2] - 0.5
        np.testing.assert_allclose(u, np.round(u), atol=1e-2)
        np.testing.assert_allclose(v, np.round(v), atol=1e-2)
        truth = depth[:, np.round(v).astype(int), np.round(u).astype(int)]
        assert (np.abs(truth - cloud[:, 2]) / truth <= 1.01e-3).any(axis=0).all()

    rejected = next(r["key"] for r in index.to_pylist() if r["status"] == "rejected")
    refused = CliRunner().invoke(app, ["view", str(run), "--key", rejected, "--no-open", "--out", str(out)])
    assert refused.exit_code == 1 and "rejected" in refused.output


def test_mask_lost_sheet_shows_the_lost_mask_and_reopening_forgets_evidence(tmp_path, monkeypatch):
    """A `mask_lost` clip is drawn with the mask its rule judged (its evidence), on the frames it was lost in; when
    the clip is reopened (the stage changed), its evidence goes with the old verdict."""
    from flows import report_html, report_sheets
    from shards.mask_codec import pack_masks
    from tasks import pipeline, staging

    key = "src-000000000-000001000"
    clip_dir = tmp_path / "run" / "_work" / "videos" / "src" / "full" / "clips" / key
    frames = np.full((4, 60, 80, 3), 90, np.uint8)
    staging.stage_window(clip_dir, frames, {"key": key, "frame_times_s": [0.0, 0.2, 0.4, 0.6]},
                         {"status": "ok", "reason": "", "message": "", "stats": {}}, 90)
    masks = np.zeros((4, 60, 80), bool)
    masks[:, 10:50, 30:50] = True
    masks[2] = False  # lost in frame 2
    boxes = np.tile(np.array([28, 8, 52, 52], np.float32), (4, 1))
    staging.write_evidence(clip_dir, {**pack_masks(masks), "boxes": boxes, "lost_frames": np.array([2], np.int32)})
    staging.set_clip_status(clip_dir, {"status": "rejected", "reason": "mask_lost", "message": "lost in 1/4",
                                       "stats": {}, "stage": "masks", "fingerprint": "old"})
    drawn = []
    real = report_sheets.draw_frame
    monkeypatch.setattr(report_sheets, "draw_frame", lambda f, o: drawn.append(o) or real(f, o))
    row = {"key": key, "source_id": "src", "reason": "mask_lost", "message": "lost in 1/4", "stats": "{}"}
    sheet = report_html._rejected_sheet(tmp_path / "run", row, report_html._thresholds({}, []))
    assert [f.index for f in sheet.frames] == [2] and not sheet.notes  # the frame the mask was lost in
    (o,) = drawn
    assert o.mask is not None and not o.mask.any()  # the (empty) mask the rule judged
    np.testing.assert_allclose(o.box, boxes[2])

    windows = [{"key": key, "status": "ok"}]
    assert pipeline.reopen_stale_clips(clip_dir.parents[1], windows, {"masks": "new"}) == 1
    assert staging.load_evidence(clip_dir) == {} and staging.clip_status(clip_dir)["status"] == "ok"


def test_report_of_a_damaged_run_says_so(run, tmp_path):
    """A shard altered after curation: the page still renders, its kept clips are not drawn, and it says why."""
    import shutil

    from flows import report_html

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".unish.lock"))
    (shard,) = (copy / "shards").glob("*.tar")
    data = bytearray(shard.read_bytes())
    at = data.index(b"frames.001.jpg") + 2048  # inside the first clip's second frame
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    data_ = report_html.gather(copy, sample=4)
    assert data_.ok_sheets == []
    assert any(shard.name in n and "verify" in n for n in data_.notes), data_.notes
    assert len(data_.rejected_sheets) == len(RULES)  # the rest of the page is there
    html = report_html.render(data_)
    assert shard.name in html
