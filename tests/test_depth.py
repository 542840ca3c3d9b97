"""depth: MoGe-2's real architecture (the ViT-L config, random weights) on real frames, checkpoint
loading from the weights folder, the stored label's error bound, and the lite profile's absent depth."""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from shards import depth_codec as dc
from shards.mask_codec import pack_masks
from shards.sample import ClipSample, decode_sample, encode_sample
from tasks import depth as D
from tasks.stage import ClipRejected, ClipWindow, build_stage
from tasks.weights import WeightsMissing

DATA = Path(__file__).parent / "data" / "labels"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.stack([cv2.imread(str(DATA / f"frame_{i}.jpg"))[..., ::-1] for i in (0, 1, 3)])


def make_clip(frames: np.ndarray) -> ClipWindow:
    return ClipWindow("pose2sim-000000000-000005000", "pose2sim", 0.0, 5.0, frames, np.arange(len(frames)) / 6.0)


@pytest.fixture(scope="module")
def moge_run(frames):
    """One MoGe-2 ViT-L (random weights) run over 3 real frames in batches of 2, with its raw output."""
    stage = D.MogeDepthStage(D.MogeConfig(allow_random_weights=True, num_tokens=48, batch_size=2, device="cpu"))
    raw: dict[str, tuple] = {}
    infer = stage.infer

    def recording_infer(f):
        raw["out"] = infer(f)
        return raw["out"]

    stage.infer = recording_infer  # type: ignore[method-assign]
    clip = make_clip(frames)
    clip.labels["masks"] = pack_masks(np.zeros(frames.shape[:3], bool) | (np.arange(frames.shape[2]) < 100))
    clip = stage(clip)
    return stage, clip, raw["out"]


def test_moge_vitl_runs_on_real_frames_and_stores_within_the_bound(frames, moge_run):
    stage, clip, (depth, valid, k) = moge_run
    assert sum(p.numel() for p in stage.model.parameters()) > 3.2e8  # the ViT-L model, not a toy
    t, h, w = frames.shape[:3]
    assert depth.shape == valid.shape == (t, h, w) and k.shape == (t, 3, 3)  # at the stored resolution
    # intrinsics in pixels, principal point at the centre, one focal per frame
    np.testing.assert_allclose(k[:, 0, 2], w / 2)
    np.testing.assert_allclose(k[:, 1, 2], h / 2)
    assert (k[:, 0, 0] > 0).all() and np.allclose(k[:, 0, 0], k[:, 1, 1], rtol=1e-4)

    entries = decode_sample(encode_sample(ClipSample(clip.key, frames, {}, dict(clip.labels)))).labels["depth"]
    label = dc.from_entries(entries, key=clip.key)
    expected_valid = dc.valid_pixels(depth, valid)
    assert expected_valid.any() and not expected_valid.all()  # MoGe's mask does cut pixels
    np.testing.assert_array_equal(label.valid, expected_valid)
    err = np.abs(label.depth[expected_valid] / depth[expected_valid] - 1)
    assert err.max() <= label.max_rel_error <= 1e-3 + 1e-6
    np.testing.assert_array_equal(label.intrinsics, k)
    stats = entries["stats"]
    assert stats["bytes"] == entries["code_z"].nbytes < depth.nbytes / 2
    assert stats["valid_frac"] == [round(float(v.mean()), 4) for v in expected_valid]
    assert len(stats["person_valid_frac"]) == t  # valid share on the masks label's pixels
    assert stats["moge_mask"] is True  # the validity is MoGe's own mask


def test_batches_match_single_frame_inference(frames, moge_run):
    stage, _clip, (depth, valid, k) = moge_run
    # frame 1 ran in a batch with frame 0; alone it must give the same output
    d1, v1, k1 = D.MogeDepthStage.infer(stage, frames[1:2])
    np.testing.assert_allclose(d1[0], depth[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(k1[0], k[1], rtol=1e-4)
    assert (v1[0] != valid[1]).mean() < 1e-3


def test_moge_provenance(moge_run):
    _stage, clip, _raw = moge_run
    prov = clip.provenance["depth"]
    assert prov["backend"] == "moge" and prov["weights"] is None and prov["weights_sha256"] is None
    assert prov["package_version"] == "dlr-moge 2.0.0"
    params = prov["params"]
    assert params["random_weights"] is True and params["num_tokens"] == 48 and params["batch_size"] == 2
    assert params["codec"] == "log16z" and params["max_rel_error"] == 1e-3


def test_moge_default_needs_the_official_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    stage = build_stage("depth:moge")
    assert stage.config.allow_random_weights is False
    with pytest.raises(WeightsMissing, match=r"moge-2-vitl\.pt.*unish weights pull moge-2-vitl"):
        stage.setup()


# A small MoGe-2 (ViT-S backbone, narrow heads) for the checkpoint-loading test only.
SMALL = copy.deepcopy(D.MOGE2_VITL_CONFIG)
SMALL["encoder"] = {"backbone": "dinov2_vits14", "intermediate_layers": [2, 5, 8, 11], "dim_out": 64}
SMALL["neck"].update(dim_in=[66, 2, 2, 2, 2], dim_res_blocks=[64, 32, 16, 16, 16])
for head in ("points_head", "mask_head"):
    SMALL[head].update(dim_in=[64, 32, 16, 16, 16], dim_res_blocks=[64, 32, 16, 16, 16])
SMALL["scale_head"] = {"dims": [384, 64, 1]}


def test_moge_loads_the_checkpoint_and_its_own_config(tmp_path, monkeypatch, frames):
    from moge.model.v2 import MoGeModel

    torch.manual_seed(3)
    src = MoGeModel(**copy.deepcopy(SMALL))
    path = tmp_path / "moge-2-vitl.pt"
    torch.save({"model_config": copy.deepcopy(SMALL), "model": src.state_dict()}, path)  # the official layout
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    stage = build_stage("depth:moge", num_tokens=32, device="cpu")
    stage.setup()
    for name, value in src.state_dict().items():
        assert torch.equal(stage.model.state_dict()[name], value), name
    clip = stage(make_clip(frames[:1]))
    prov = clip.provenance["depth"]
    assert prov["weights"] == "moge-2-vitl" and prov["params"]["random_weights"] is False
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    state = src.state_dict()
    state.pop("scale_head.0.weight")
    torch.save({"model_config": copy.deepcopy(SMALL), "model": state}, path)
    with pytest.raises(ValueError, match="lacks 1 weights"):
        build_stage("depth:moge", device="cpu").setup()

    state = {**src.state_dict(), "normal_head.0.weight": torch.zeros(1)}  # a head its own config does not build
    torch.save({"model_config": copy.deepcopy(SMALL), "model": state}, path)
    with pytest.raises(ValueError, match="1 weights its own config does not build.*normal_head"):
        build_stage("depth:moge", device="cpu").setup()


class _NoMaskMoge:
    """A MoGe without a mask head: its output has no `mask`."""

    def infer(self, x, **_):
        t, _, h, w = x.shape
        depth = torch.full((t, h, w), 2.0)
        depth[:, :3] = float("inf")  # undefined pixels, which a mask head would have cut
        k = torch.tensor([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]]).expand(t, 3, 3)
        return {"depth": depth, "intrinsics": k}


def test_no_mask_from_moge_is_recorded_and_only_finite_depth_is_valid(frames):
    stage = D.MogeDepthStage(D.MogeConfig(allow_random_weights=True, device="cpu"))
    stage.model, stage.effective = _NoMaskMoge(), {"device": "cpu", "fp16": False, "random_weights": True}
    depth, valid, _k = stage.infer(frames)
    assert valid is None
    clip = stage(make_clip(frames))
    entries = clip.labels["depth"]
    assert entries["stats"]["moge_mask"] is False
    label = dc.from_entries(entries, key=clip.key)
    np.testing.assert_array_equal(label.valid, np.isfinite(depth) & (depth > 0))
    assert not label.valid[:, :3].any() and label.valid[:, 3:].all()
    assert stage.version == D.MOGE_STAGE_VERSION == "2" and clip.provenance["depth"]["version"] == "2"


def test_frames_without_valid_depth_reject_the_clip(frames):
    stage = D.MogeDepthStage(D.MogeConfig(allow_random_weights=True, min_valid_frac=0.05))
    t, h, w = frames.shape[:3]
    depth = np.full((t, h, w), 2.0, np.float32)
    valid = np.ones((t, h, w), bool)
    valid[1, :, :] = False
    valid[1, :5, :] = True  # 5 of 518 rows: under 5%
    k = np.tile(np.eye(3, dtype=np.float32), (t, 1, 1))
    stage.infer = lambda f: (depth, valid, k)  # type: ignore[method-assign]
    with pytest.raises(ClipRejected) as info:
        stage(make_clip(frames))
    assert info.value.rule == D.DEPTH_INVALID == "depth_invalid" and "frames [1]" in info.value.detail


def test_lite_depth_is_recorded_absent_and_refused_by_readers(frames):
    stage = build_stage("depth:none")
    stage.setup()
    clip = stage(make_clip(frames))
    assert clip.provenance["depth"]["backend"] == "none"
    members = encode_sample(ClipSample(clip.key, frames, {}, dict(clip.labels)))
    assert [m for m in members if m.startswith("depth.")] == ["depth.absent.json"]
    back = decode_sample(members).labels["depth"]
    with pytest.raises(dc.DepthAbsent, match=r"no offline depth model.*stage 1 needs depth"):
        dc.from_entries(back, key=clip.key, needed_by="stage 1")


def test_pixel_intrinsics():
    k = D.pixel_intrinsics(np.array([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]]), height=294, width=518)
    np.testing.assert_allclose(k, [[0.8 * 518, 0, 259], [0, 1.4 * 294, 147], [0, 0, 1]], rtol=1e-6)
