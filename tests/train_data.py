"""Training-data fixtures: small runs curated by the real flow, labelled by cheap deterministic stages.

The `*:synthetic` stages below write every label family training reads (masks, depth, keypoints) in their
real formats, computed from the clip itself (so two runs agree), in milliseconds: the loader's tests are
about streaming, splitting and decoding, not about label quality (the real labellers have their own tests).
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shards import depth_codec
from shards.mask_codec import pack_masks
from tasks.stage import ClipWindow, register_stage, registered_stages


def _provenance(backend: str, params: object, version: str = "1") -> dict:
    return {"backend": backend, "weights": None, "weights_sha256": None, "package_version": None,
            "params": asdict(params), "version": version}  # type: ignore[call-overload]


@dataclass
class SyntheticParams:
    scale: float = 1.0  # depth multiplier: a relabel with another scale is another version
    absent_every: int = 0  # depth: every n-th clip (by start time) records depth as absent


def person_disc(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.2 * w)) ** 2 < 1


def synthetic_depth(t: int, h: int, w: int, scale: float = 1.0) -> np.ndarray:
    """A smooth scene (a tilted plane, 2-2.8 m, moving slowly) with the person 0.3 m nearer and shaped (a few
    cm of relief, so a point map has something to learn there): it compresses like a real depth map, and
    tests can recompute it exactly."""
    yy, xx = np.mgrid[0:h, 0:w]
    plane = 2.0 + 0.5 * xx / w + 0.3 * yy / h
    relief = 0.05 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    person = person_disc(h, w) * (-0.3 + relief)
    frames = plane[None] + 0.05 * np.sin(np.arange(t))[:, None, None] + person[None]
    return (frames * scale).astype(np.float32)


class SyntheticMasks:
    name, version = "masks", "1"

    def __init__(self, **params):
        self.params = SyntheticParams(**params)

    def setup(self) -> None:
        pass

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        t, h, w = clip.frames.shape[:3]
        clip.labels[self.name] = {**pack_masks(np.repeat(person_disc(h, w)[None], t, 0)), "stats": {}}
        clip.provenance[self.name] = _provenance("synthetic", self.params)
        return clip


class SyntheticDepth(SyntheticMasks):
    name = "depth"

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        t, h, w = clip.frames.shape[:3]
        p = self.params
        if p.absent_every and round(clip.start_s * 1000) // 1000 % p.absent_every == 0:
            clip.labels[self.name] = depth_codec.absent_entries("synthetic: no depth for this clip", "synthetic")
        else:
            depth = synthetic_depth(t, h, w, p.scale)
            valid = np.ones_like(depth, bool)
            valid[..., :4] = False  # the 4 leftmost columns
            enc = depth_codec.encode(depth, valid)
            clip.labels[self.name] = depth_codec.to_entries(enc, synthetic_intrinsics(t, h, w), {"synthetic": True})
        clip.provenance[self.name] = _provenance("synthetic", p)
        return clip


class SyntheticKeypoints(SyntheticMasks):
    name = "keypoints"

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        t, h, w = clip.frames.shape[:3]
        ring = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        joints = np.stack([w / 2 + 0.1 * w * np.cos(ring), h / 2 + 0.3 * h * np.sin(ring)], -1).astype(np.float32)
        clip.labels[self.name] = {"joints2d": np.repeat(joints[None], t, 0), "confidence": np.full((t, 24), 0.9, np.float32),
                                  "present": np.ones(t, bool), "info": {"backend": "synthetic"}}
        clip.provenance[self.name] = _provenance("synthetic", self.params)
        return clip


def synthetic_intrinsics(t: int, h: int, w: int) -> np.ndarray:
    k = np.array([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1]], np.float32)
    return np.repeat(k[None], t, 0)


class SyntheticGroundTruth(SyntheticMasks):
    """`gt` as `unish bedlam` writes it: a SMPL body 3 m ahead, upright in the camera frame (OpenCV), its pose
    a smooth function of time; the camera of the synthetic depth."""

    name = "gt"

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        t, h, w = clip.frames.shape[:3]
        phase = clip.start_s + np.arange(t) / 6.0
        pose = np.zeros((t, 72), np.float32)
        pose[:, 0] = np.pi  # root: SMPL's y-up body turned upright in a y-down camera frame
        pose[:, 3:] = 0.2 * np.sin(phase[:, None] + np.arange(69)[None] * 0.7)
        trans = np.stack([0.1 * np.sin(phase), np.zeros(t), 3.0 + 0.1 * np.cos(phase)], -1).astype(np.float32)
        clip.labels[self.name] = {
            "pose": pose, "betas": np.tile(np.linspace(-0.5, 0.5, 10, dtype=np.float32), (t, 1)), "trans": trans,
            "intrinsics": synthetic_intrinsics(t, h, w), "extrinsics": np.repeat(np.eye(4, dtype=np.float32)[None], t, 0),
            "fit_error": np.zeros(t, np.float32), "info": {"backend": "synthetic"}}
        clip.provenance[self.name] = _provenance("synthetic", self.params)
        return clip


class SyntheticGroundTruthDepth(SyntheticMasks):
    name = "gt_depth"

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        t, h, w = clip.frames.shape[:3]
        enc = depth_codec.encode(synthetic_depth(t, h, w, self.params.scale))
        clip.labels[self.name] = depth_codec.to_entries(enc, synthetic_intrinsics(t, h, w), {"synthetic": True})
        clip.provenance[self.name] = _provenance("synthetic", self.params)
        return clip


@dataclass
class ModelDepthParams:
    seed: int = 0  # the tiny random UniSH whose own depth becomes the label (torch.manual_seed(seed))
    median_m: float = 2.5  # its depth scaled to this median, in metres


class ModelDepth:
    """`depth:tinymodel`: the depth of the tiny UniSH built from `seed` (its point map's z, scaled), so that
    stage 1 has a known optimum: that model's point decoder (L_h = 0 up to the scale the loss ignores)."""

    name, version = "depth", "1"

    def __init__(self, **params):
        self.params = ModelDepthParams(**params)
        self.model = None

    def setup(self) -> None:
        import torch

        from unish_model.pipeline import UniSH, UniSHConfig

        torch.manual_seed(self.params.seed)
        self.model = UniSH(UniSHConfig.tiny()).eval()

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        import torch

        t, h, w = clip.frames.shape[:3]
        with torch.no_grad():
            frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255)[None]
            z = self.model.scene(frames).local_points[0, ..., 2].numpy()
        depth = z * (self.params.median_m / np.median(z))
        clip.labels[self.name] = depth_codec.to_entries(depth_codec.encode(depth), synthetic_intrinsics(t, h, w), {})
        clip.provenance[self.name] = _provenance("tinymodel", self.params)
        return clip


SYNTHETIC_STAGES = ["masks:synthetic", "depth:synthetic", "keypoints:synthetic"]
MODEL_DEPTH_STAGES = ["masks:synthetic", "depth:tinymodel", "keypoints:synthetic"]
if "depth:tinymodel" not in registered_stages():
    register_stage("depth:tinymodel")(ModelDepth)
SYNTHETIC_GT_STAGES = ["masks:synthetic", "gt:synthetic", "gt_depth:synthetic"]
for _name, _cls in zip(SYNTHETIC_STAGES + SYNTHETIC_GT_STAGES[1:],
                       (SyntheticMasks, SyntheticDepth, SyntheticKeypoints, SyntheticGroundTruth,
                        SyntheticGroundTruthDepth)):
    if _name not in registered_stages():
        register_stage(_name)(_cls)


def curate_training_run(media: Path, d: Path, videos: dict[str, str], shard_max_samples: int,
                        window_seconds: float = 1.0, window_frames: int = 6, stages: list[str] = SYNTHETIC_STAGES,
                        spans: dict[str, tuple[float, float]] | None = None, **depth_params) -> Path:
    """Curate `videos` (id -> file in `media` or an absolute path; `spans`: id -> (start, end) seconds) into
    `d/run` with the synthetic stages (`SYNTHETIC_GT_STAGES` for stage-2 clips with ground truth)."""
    from flows.curate import run_curate
    from flows.params import CurateConfig

    lines = ["source,start,end,id"]
    for vid, name in videos.items():
        src = Path(name) if Path(name).is_absolute() else media / name
        shutil.copy(src, d / f"{vid}{src.suffix}")
        start, end = (spans or {}).get(vid, ("", ""))
        lines.append(f"{vid}{src.suffix},{start},{end},{vid}")
    (d / "m.csv").write_text("\n".join(lines) + "\n")
    config = CurateConfig(progress=False, workers=2, stages=stages, window_seconds=window_seconds,
                          window_frames=window_frames, shard_max_samples=shard_max_samples,
                          stage_params={"depth:synthetic": depth_params} if depth_params else {})
    run_curate(d / "m.csv", d / "run", config)
    return d / "run"
