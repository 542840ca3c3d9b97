"""`unish bedlam`: BEDLAM's layout (written here, small: tests/bedlam_data.py) -> clips with ground truth.

What is checked: the ground truth projects onto the frames where the body was rendered (known camera, known body),
depth units and pixel mapping, rotated closeups, masks (rasterised and occluded; from BEDLAM's actor masks), the fit
error of bodies whose SMPL parameters are known (exact, and with a part SMPL cannot express), SMPL labels taken as
they are, bad input recorded while the rest goes on, reruns doing nothing, a run killed mid-pack finishing as an
uninterrupted one, and the training loader reading the result."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bedlam_data import (STEP, STORED_H, STORED_W, Models, SceneSpec, smpl_vertices, walking_person,
                         write_models, write_scene)
from flows.bedlam import BedlamConfig, BodyFilesMissing, run_bedlam
from shards import depth_codec
from shards.mask_codec import unpack_masks
from shards.reader import iter_clips, shard_urls
from shards.verify import verify_run
from unish_model.body import BodyModel
from unish_model.losses.raster import rasterize

REPO = Path(__file__).resolve().parents[1]
WINDOW = 6  # frames per clip here (1 s at 6 fps; BEDLAM's default is 30): the same code, less to render
FRAMES = list(range(0, 2 * WINDOW * STEP, STEP))  # two windows' worth of labelled frames

LANDSCAPE = "20221010_3_1000_batch01hand_6fps"
CLOSEUP = "20221019_3-8_250_highbmihand_closeup_suburb_c"
SMPL_LABELS = "smpl_labels_scene"
FIT = "fit_scene"
MISSING = "missing_files_scene"
UNREADABLE, OBJECTS, NO_LABELS = "unreadable_npz_scene", "object_array_scene", "no_labels_scene"
OCCLUDER = (20, 40, 110, 75)  # upright-frame pixels over the left person's upper body (it stands at x0 = -1 m)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(d: Path, models: Models, **kw) -> BedlamConfig:
    return BedlamConfig(labels=str(d / "labels"), smpl=str(models.smpl), smplx=str(models.smplx),
                        smplx2smpl=str(models.smplx2smpl), window_frames=WINDOW, workers=2, **kw)


def _cli(d: Path, models: Models, out: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "bedlam", str(d / "root"), "--out", str(out), "--labels",
            str(d / "labels"), "--smpl", str(models.smpl), "--smplx", str(models.smplx), "--smplx2smpl",
            str(models.smplx2smpl), "--window-frames", str(WINDOW), "--workers", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("bedlam")
    models = write_models(d / "models")
    root, labels = d / "root", d / "labels"
    people = {
        LANDSCAPE: [walking_person(FRAMES, 1, x0=0.5, sub="rp_alice"),
                    walking_person(FRAMES[:-3], 2, x0=-1.0, sub="rp_bob")],  # 9 frames: one window, a remainder
        CLOSEUP: [walking_person(FRAMES, 3, depth=2.6, sub="rp_carol")],
        SMPL_LABELS: [walking_person(FRAMES[:WINDOW], 4, sub="rp_dan")],
        FIT: [walking_person(FRAMES[:WINDOW], 5, sub="rp_erin", beta11=0.3),  # 3 mm SMPL cannot express: kept
              walking_person(FRAMES[:WINDOW], 6, x0=-0.9, sub="rp_finn", beta11=4.0)],  # 4 cm: rejected
        MISSING: [walking_person(FRAMES, 7, sub="rp_gail")],
    }
    specs = [SceneSpec(LANDSCAPE, people=people[LANDSCAPE], occluder=OCCLUDER),
             SceneSpec(CLOSEUP, people=people[CLOSEUP], masks=True),
             SceneSpec(SMPL_LABELS, people=people[SMPL_LABELS], labels_as_smpl=True),
             SceneSpec(FIT, people=people[FIT]), SceneSpec(MISSING, people=people[MISSING]),
             SceneSpec(OBJECTS, people=[walking_person(FRAMES[:WINDOW], 8)])]
    rendered = {s.name: write_scene(root, labels, models, s) for s in specs}
    # bad input: a frame and a depth file gone (one in each window), a label file that is no zip, an object array
    # that is not strings, a scene without labels
    (root / MISSING / "png" / "seq_000000" / "seq_000000_0010.png").unlink()
    (root / MISSING / "depth" / "seq_000000" / "seq_000000_0045_depth.exr").unlink()
    (root / UNREADABLE / "png" / "seq_000000").mkdir(parents=True)
    (labels / f"{UNREADABLE}.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    with np.load(labels / f"{OBJECTS}.npz", allow_pickle=True) as z:  # the test writes the pickle; we never read one
        arrays = {k: z[k] for k in z.files}
    arrays["sub"] = np.array([{"name": "rp_x"}] * len(arrays["sub"]), dtype=object)
    np.savez(labels / f"{OBJECTS}.npz", **arrays)
    (root / NO_LABELS / "png" / "seq_000000").mkdir(parents=True)
    return {"d": d, "models": models, "people": people, "rendered": rendered}


@pytest.fixture(scope="module")
def converted(data, prefect_api):
    out = data["d"] / "out"
    t0 = time.perf_counter()
    summary = run_bedlam(data["d"] / "root", out, _config(data["d"], data["models"]))
    summary["seconds"] = time.perf_counter() - t0
    clips = {c.key: c for c in iter_clips(shard_urls(out / "shards"))}
    index = {r["key"]: r for r in pq.read_table(out / "index.parquet").to_pylist() if r["key"]}
    videos = pq.read_table(out / "videos.parquet").to_pylist()
    return {**data, "out": out, "summary": summary, "clips": clips, "index": index, "videos": videos}


def _clips_of(converted, scene: str, person: int) -> list:
    prefix = f"{scene}_seq_000000_p{person}-"
    return [c for k, c in sorted(converted["clips"].items()) if k.startswith(prefix)]


def _gt_raster(body: BodyModel, clip) -> np.ndarray:
    """(T, H, W) bool: the clip's GT SMPL body rasterised with the clip's GT camera, at the clip's size."""
    gt = clip.labels["gt"]
    verts = smpl_vertices(body, gt["pose"].astype(np.float64), gt["betas"][0].astype(np.float64),
                          gt["trans"].astype(np.float64))
    raster = rasterize(verts, body.faces, torch.from_numpy(gt["intrinsics"].astype(np.float64)),
                       (clip.meta["height"], clip.meta["width"]))
    return (raster.face_index >= 0).numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _painted(clip, person: int) -> np.ndarray:
    """(T, H, W) bool: the pixels of the clip's frames painted in the person's colour (bedlam_data.COLOURS)."""
    rgb = clip.frames.astype(int)
    bright = rgb[..., 0] > 172  # 255 on grey 90: halfway
    return bright & (rgb[..., 1] > 172) if person == 0 else bright & (rgb[..., 1] < 158)


def _model_pixels(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the upright source pixel under each model pixel's centre, from the geometry meta.json records
    (scale to cover, then crop: a model pixel's centre (j + 0.5, i + 0.5) is source ((j + 0.5 + crop_x) / sx, ...))."""
    g = meta["geometry"]
    sx = max(g["out_width"], round(g["src_width"] * g["scale"])) / g["src_width"]
    sy = max(g["out_height"], round(g["src_height"] * g["scale"])) / g["src_height"]
    cols = np.floor((np.arange(g["out_width"]) + 0.5 + g["crop_x"]) / sx).astype(int)
    rows = np.floor((np.arange(g["out_height"]) + 0.5 + g["crop_y"]) / sy).astype(int)
    return rows, cols


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("scene,person", [(LANDSCAPE, 0), (CLOSEUP, 0), (SMPL_LABELS, 0)])
def test_gt_projects_onto_the_frames_where_the_body_is(converted, scene, person):
    """Rendered white where the body is; the converted GT body through the converted GT camera must cover the same
    pixels of the clip's frames (after rotation, scale to cover and crop)."""
    clips = _clips_of(converted, scene, person)
    assert clips, f"no clip of {scene} person {person}"
    body = converted["models"].body
    for clip in clips:
        painted = _painted(clip, person)
        gt = _gt_raster(body, clip)
        # JPEG and the resize blur a one-pixel rim (measured IoU 0.94-0.97); a wrong scale, crop or rotation costs
        # far more (limbs are 4-12 px wide)
        for t in range(len(gt)):
            assert _iou(painted[t], gt[t]) > 0.9, (clip.key, t)
        # and no shift of the GT by whole pixels matches the frames better than none (a camera off by >= 0.5 px
        # would prefer a shift)
        overlap = {(dy, dx): int((painted & np.roll(gt, (dy, dx), axis=(1, 2))).sum())
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        assert max(overlap, key=overlap.get) == (0, 0), (clip.key, overlap)


def test_gt_equals_the_rendered_body(converted):
    """The bodies are exactly SMPL bodies (SMPL-X's 11th beta at 0): the fit recovers the SMPL parameters the scene
    was rendered with, and `trans` is in the camera frame (BEDLAM's trans_cam plus cam_ext's translation)."""
    for scene, person, truth in [(LANDSCAPE, 0, converted["people"][LANDSCAPE][0]),
                                 (CLOSEUP, 0, converted["people"][CLOSEUP][0])]:
        for k, clip in enumerate(_clips_of(converted, scene, person)):
            gt = clip.labels["gt"]
            sl = slice(k * WINDOW, (k + 1) * WINDOW)
            assert gt["pose"].shape == (WINDOW, 72) and gt["pose"].dtype == np.float32
            np.testing.assert_allclose(gt["trans"], truth.trans[sl], atol=1e-5)  # float32 of metres
            np.testing.assert_allclose(gt["betas"], np.broadcast_to(truth.betas, (WINDOW, 10)), atol=1e-4)
            fitted = smpl_vertices(converted["models"].body, gt["pose"].astype(np.float64),
                                   gt["betas"][0].astype(np.float64), gt["trans"].astype(np.float64))
            rendered = smpl_vertices(converted["models"].body, truth.pose[sl], truth.betas, truth.trans[sl])
            assert float((fitted - rendered).norm(dim=-1).max()) < 1e-4  # float32 storage: ~1e-6 m
            assert gt["fit_error"].dtype == np.float32 and float(gt["fit_error"].max()) < 1e-5
            np.testing.assert_allclose(gt["extrinsics"][:, :3, 3], np.broadcast_to([0.1, -0.2, 0.4], (WINDOW, 3)),
                                       atol=1e-7)


def test_depth_is_metres_at_the_model_pixels(converted):
    """Depth EXR in centimetres becomes metres; each model pixel takes the upright source pixel under its centre
    (the rendered depth: a tilted background plane, the bodies, the occluder), after the closeup's rotation."""
    for scene in (LANDSCAPE, CLOSEUP):
        truth = converted["rendered"][scene]
        for clip in _clips_of(converted, scene, 0):
            entries = clip.labels["gt_depth"]
            depth, valid = depth_codec.decode(entries["code_z"].tobytes(), entries["codec"])
            assert valid.all() and depth.dtype == np.float32
            rows, cols = _model_pixels(clip.meta)
            for t, name in enumerate(clip.meta["bedlam"]["images"]):
                frame = int(name[-8:-4])
                expected = truth["zbuf"][frame][rows[:, None], cols[None, :]]
                rel = np.abs(depth[t] - expected) / expected
                assert rel.max() <= entries["codec"]["max_rel_error"] + 1e-6, (clip.key, t)
                assert 1.9 < expected.min() and expected.max() < 15.0  # metres (in centimetres it would be 100x)
            np.testing.assert_array_equal(entries["intrinsics"], clip.labels["gt"]["intrinsics"])


def test_rotated_closeup_becomes_portrait(converted):
    clip = _clips_of(converted, CLOSEUP, 0)[0]
    assert (clip.meta["width"], clip.meta["height"]) == (294, 518) and clip.frames.shape[1:3] == (518, 294)
    assert clip.meta["geometry"]["rotation"] == 270 and clip.meta["bedlam"]["rotated"]
    assert clip.meta["bedlam"]["stored_size"] == [STORED_W, STORED_H]
    k = clip.labels["gt"]["intrinsics"][0]
    assert abs(k[0, 2] - 147) < 1 and abs(k[1, 2] - 259) < 1  # the principal point of the portrait frame
    landscape = _clips_of(converted, LANDSCAPE, 0)[0]
    assert (landscape.meta["width"], landscape.meta["height"]) == (518, 294)
    assert landscape.meta["geometry"]["rotation"] == 0


# ------------------------------------------------------------------------------------------------ masks, people


def test_rasterised_mask_hides_what_the_depth_puts_in_front(converted):
    """No mask files: the GT body rasterised, minus the pixels an occluder (nearer in the GT depth) covers."""
    (clip,) = _clips_of(converted, LANDSCAPE, 1)
    masks = unpack_masks(clip.labels["masks"])
    gt = _gt_raster(converted["models"].body, clip)
    depth, _ = depth_codec.decode(clip.labels["gt_depth"]["code_z"].tobytes(), clip.labels["gt_depth"]["codec"])
    hidden = gt & (depth < 2.05)  # the occluder stands at 2 m; the body at ~3.2 m
    assert hidden.sum() > 200  # the occluder really covers part of this body
    assert not (masks & hidden).any()
    assert _iou(masks, gt & ~hidden) > 0.99  # the same mesh and camera (float32 vs float64 may flip an edge pixel)
    assert clip.labels["masks"]["stats"]["source"] == "raster"
    assert _iou(masks, _painted(clip, 1)) > 0.9  # what is visible in the frames
    _check_people(clip, masks, person=1)


def test_mask_files_are_used_where_the_layout_has_them(converted):
    """The closeup scene has BEDLAM mask files (a distractor actor 00 and the person, body and clothing halves):
    the person's mask is the union of its files, chosen by overlap with the body."""
    for clip in _clips_of(converted, CLOSEUP, 0):
        stats = clip.labels["masks"]["stats"]
        assert stats["source"] == "bedlam_masks" and stats["actor"] == [1] * WINDOW
        masks = unpack_masks(clip.labels["masks"])
        assert min(stats["iou_with_body"]) > 0.9
        assert _iou(masks, _painted(clip, 0)) > 0.9
        assert not masks[:, :40, :].any()  # the distractor (top-left) is not the person
        _check_people(clip, masks, person=0)


def _check_people(clip, masks: np.ndarray, person: int) -> None:
    people = clip.labels["people"]
    assert people["box"].dtype == np.float32 and people["box"].shape == (WINDOW, 4)
    assert people["present"].dtype == bool and people["present"].all()
    assert people["score"].dtype == np.float32 and (people["score"] == 1).all()
    assert people["track_id"].dtype == np.int64 and (people["track_id"] == person).all()
    for t in range(WINDOW):
        ys, xs = np.nonzero(masks[t])
        np.testing.assert_array_equal(people["box"][t], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


# ------------------------------------------------------------------------------------------------ bodies


def test_fit_error_is_recorded_and_bounded(converted):
    """SMPL-X's 11th beta moves vertices in a way SMPL cannot follow: 0.3 of it (~5 mm) is kept with its fit error
    recorded per frame, 4 of it (~6 cm) is beyond the 2 cm bound and rejects the clip."""
    (kept,) = _clips_of(converted, FIT, 0)
    err = kept.labels["gt"]["fit_error"]
    assert err.shape == (WINDOW,) and err.dtype == np.float32
    # the displacement's mean size is 0.3 * 1 cm * sqrt(8/pi) = 4.8 mm; the fit absorbs a little of it
    assert (0.003 < err).all() and (err < 0.0048).all()
    assert kept.labels["gt"]["info"]["fit"]["bound_m"] == 0.02
    rejected = [r for k, r in converted["index"].items() if k.startswith(f"{FIT}_seq_000000_p1-")]
    assert [(r["status"], r["reason"]) for r in rejected] == [("rejected", "fit_error")]
    stats = json.loads(rejected[0]["stats"])
    assert min(stats["fit_error_m"]) > 0.02 and "bound 20 mm" in rejected[0]["message"]


def test_smpl_labels_are_taken_as_they_are(converted):
    (clip,) = _clips_of(converted, SMPL_LABELS, 0)
    truth = converted["people"][SMPL_LABELS][0]
    gt = clip.labels["gt"]
    np.testing.assert_array_equal(gt["pose"], truth.pose.astype(np.float32))
    np.testing.assert_array_equal(gt["betas"], np.broadcast_to(truth.betas, (WINDOW, 10)).astype(np.float32))
    np.testing.assert_allclose(gt["trans"], truth.trans, atol=1e-6)
    np.testing.assert_array_equal(gt["fit_error"], np.zeros(WINDOW, np.float32))
    assert gt["info"]["labels_body"] == "smpl" and gt["info"]["fit"] is None


# ------------------------------------------------------------------------------------------------ the run


def test_clip_format_and_provenance(converted):
    clip = _clips_of(converted, LANDSCAPE, 0)[0]
    meta = clip.meta
    assert meta["source"] == f"{LANDSCAPE}/png/seq_000000" and not os.path.isabs(meta["source"])
    assert meta["key"] == clip.key == f"{LANDSCAPE}_seq_000000_p0-000000000-000001000"
    assert meta["frame_times_s"] == [round(f / 30, 6) for f in FRAMES[:WINDOW]] and meta["fps"] == 6.0
    assert clip.frames.shape == (WINDOW, 294, 518, 3)
    sha = {name: hashlib.sha256(Path(getattr(converted["models"], name)).read_bytes()).hexdigest()
           for name in ("smpl", "smplx", "smplx2smpl")}
    for family in ("gt", "gt_depth", "masks", "people"):
        p = meta["labels"][family]
        assert p["backend"] == "bedlam_gt" and p["weights_sha256"] == sha and p["version"] == "1"
        assert p["package_version"].startswith("unish") and p["params"]["max_fit_error_m"] == 0.02
    row = converted["index"][clip.key]
    assert json.loads(row["labels"]) == {"gt": "1", "gt_depth": "1", "masks": "1", "people": "1"}
    assert str(converted["d"]) not in json.dumps(meta)  # no absolute path of this machine


def test_bad_input_is_recorded_and_the_rest_goes_on(converted):
    videos = {v["source_id"]: v for v in converted["videos"]}
    assert videos[UNREADABLE]["status"] == "error" and videos[UNREADABLE]["reason"] == "labels"
    assert f"{UNREADABLE}.npz" in videos[UNREADABLE]["message"]
    assert videos[OBJECTS]["status"] == "error" and "only strings are allowed" in videos[OBJECTS]["message"]
    assert f"{OBJECTS}.npz:sub" in videos[OBJECTS]["message"]
    assert videos[NO_LABELS]["status"] == "error" and videos[NO_LABELS]["reason"] == "no_labels"
    rows = sorted((r for k, r in converted["index"].items() if k.startswith(MISSING)), key=lambda r: r["start_s"])
    assert [(r["status"], r["reason"]) for r in rows] == [("error", "missing_file")] * 2
    assert rows[0]["message"].endswith("seq_000000_0010.png: frame missing")
    assert rows[1]["message"].endswith("seq_000000_0045_depth.exr: depth file missing")
    # the other scenes' clips are all there
    ok = sorted(k.rsplit("-", 2)[0] for k, r in converted["index"].items() if r["status"] == "ok")
    assert ok == sorted([f"{LANDSCAPE}_seq_000000_p0"] * 2 + [f"{LANDSCAPE}_seq_000000_p1"] +
                        [f"{CLOSEUP}_seq_000000_p0"] * 2 + [f"{SMPL_LABELS}_seq_000000_p0", f"{FIT}_seq_000000_p0"])
    remainder = [v for v in converted["videos"] if v["source_id"] == f"{LANDSCAPE}_seq_000000_p1"]
    assert remainder[0]["n_windows"] == 1  # 9 labelled frames: one window of 6, the rest too short


def test_restricted_unpickler_refuses_code(tmp_path):
    from tasks.bedlam import BedlamInputError, read_labels

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    n = 2
    np.savez(tmp_path / "evil.npz", imgname=np.array(["s/s_0000.png", "s/s_0005.png"]), pose_cam=np.zeros((n, 165)),
             shape=np.zeros((n, 11)), trans_cam=np.zeros((n, 3)), cam_int=np.zeros((n, 3, 3)),
             cam_ext=np.zeros((n, 4, 4)), gender=np.array([Evil(), "x"], dtype=object))
    with pytest.raises(BedlamInputError, match=r"evil\.npz:gender.*refusing to load posix\.system"):
        read_labels(tmp_path / "evil.npz")
    assert not (tmp_path / "pwned").exists()


def test_verify_and_the_stage_2_loader_read_the_run(converted):
    from unish_model.train.data import ClipLoader, LoaderConfig

    report = verify_run(converted["out"])
    assert report.ok and report.clips_checked == len(converted["clips"]) == 7
    loader = ClipLoader(str(converted["out"]), LoaderConfig(stage=2, batch_size=1, workers=0, shuffle_buffer=1),
                        rank=0, world=1)
    seen = {}
    for batch in loader:
        for i, key in enumerate(batch.keys):
            seen[key] = {k: v[i] for k, v in batch.tensors.items()}
    assert set(seen) == set(converted["clips"])  # every clip has what stage 2 needs
    for key, t in seen.items():
        labels = converted["clips"][key].labels
        for name in ("pose", "betas", "trans", "intrinsics", "extrinsics"):
            torch.testing.assert_close(t[f"gt_{name}"], torch.from_numpy(labels["gt"][name]), atol=0, rtol=0)
        depth, valid = depth_codec.decode(labels["gt_depth"]["code_z"].tobytes(), labels["gt_depth"]["codec"])
        torch.testing.assert_close(t["gt_depth"], torch.from_numpy(depth), atol=0, rtol=0)
        assert torch.equal(t["gt_depth_valid"], torch.from_numpy(valid))
        assert torch.equal(t["box_present"], torch.from_numpy(labels["people"]["present"]))


def test_a_rerun_does_nothing(converted):
    out = converted["out"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()}
    tables = {n: (out / n).stat().st_mtime_ns for n in ("index.parquet", "videos.parquet", "bedlam.json")}
    summary = run_bedlam(converted["d"] / "root", out, _config(converted["d"], converted["models"]))
    # every finished track is skipped; the one with clip errors (missing files) is tried again, as curation does
    assert summary["tracks"] == 7 and summary["skipped"] == 6 and not summary["tables_written"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()} == before
    assert {n: (out / n).stat().st_mtime_ns for n in tables} == tables


def _samples(out: Path) -> dict[str, str]:
    result = {}
    for c in iter_clips(shard_urls(out / "shards")):
        h = hashlib.sha256(c.frames.tobytes())
        h.update(json.dumps(c.meta, sort_keys=True).encode())
        for family in sorted(c.labels):
            for entry, value in sorted(c.labels[family].items()):
                h.update(value.tobytes() if isinstance(value, np.ndarray) else json.dumps(value, sort_keys=True).encode())
        result[c.key] = h.hexdigest()
    return result


def test_a_run_killed_mid_pack_finishes_like_an_uninterrupted_one(converted, tmp_path, prefect_api):
    """`unish bedlam` on two scenes, SIGKILLed while it writes a shard, then run again: the same index rows, videos
    rows, samples and shards as the uninterrupted run of the fixture (which converted every scene)."""
    d, models = converted["d"], converted["models"]
    scenes = [CLOSEUP, SMPL_LABELS]
    cmd = _cli(d, models, tmp_path / "killed") + [arg for s in scenes for arg in ("--scene", s)]
    killed = tmp_path / "killed"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "UNISH_FAULT_PACK_DELAY_S": "0.5"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not list((killed / "shards").glob("*.tar.tmp")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    assert list((killed / "shards").glob("*.tar.tmp")), "packing never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "index.parquet").exists()
    for url in shard_urls(killed / "shards"):  # whatever a reader sees now is complete shards only
        list(iter_clips(url, verify=False))
    env.pop("UNISH_FAULT_PACK_DELAY_S")
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    clean = converted["out"]

    def of_scenes(table: Path) -> list[dict]:
        return [r for r in pq.read_table(table).to_pylist() if r["source_id"].startswith(tuple(scenes))]

    assert of_scenes(killed / "index.parquet") == of_scenes(clean / "index.parquet")
    assert of_scenes(killed / "videos.parquet") == of_scenes(clean / "videos.parquet")
    assert _samples(killed) == {k: v for k, v in _samples(clean).items() if k.startswith(tuple(scenes))}
    names = lambda out: sorted(p.name for p in (out / "shards").iterdir() if p.name.startswith(tuple(scenes)))  # noqa: E731
    assert names(killed) == names(clean) and len(names(killed)) == 2
    for name in names(killed):  # shards are byte-deterministic
        assert (killed / "shards" / name).read_bytes() == (clean / "shards" / name).read_bytes()
    assert verify_run(killed).ok


# ------------------------------------------------------------------------------------------------ the command


def test_missing_smplx_files_stop_the_run_before_any_work(data, tmp_path, prefect_api):
    config = _config(data["d"], data["models"]).model_copy(update={"smplx2smpl": str(tmp_path / "nowhere.pt")})
    with pytest.raises(BodyFilesMissing, match=r"nowhere\.pt.*smpl-x\.is\.tue\.mpg\.de"):
        run_bedlam(data["d"] / "root", tmp_path / "out", config)
    assert not (tmp_path / "out" / "index.parquet").exists() and not (tmp_path / "out" / "shards").exists()


def test_help_names_the_layout_and_where_the_files_come_from():
    from typer.testing import CliRunner

    from flows.cli import app

    r = CliRunner().invoke(app, ["bedlam", "--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    text = " ".join(re.sub(r"[\u2500-\u257f]", " ", r.output).split())  # no box drawing, no line breaks
    for needed in ("png/<seq>/<seq>_NNNN.png", "depth/<seq>/<seq>_NNNN_depth.exr", "Depth, centimetres",
                   "LABELS/<scene>.npz", "cam_int", "cam_ext", '"closeup"', "smpl-x.is.tue.mpg.de",
                   "smplx2smpl_sparse.pt", "--max-fit-error", "--smplx2smpl", "--smplx", "--labels"):
        assert needed in text, needed
