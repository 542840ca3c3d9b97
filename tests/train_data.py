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
    """A smooth scene (a tilted plane, 2-2.8 m, moving slowly) with the person 0.3 m nearer: it compresses
    like a real depth map, and tests can recompute it exactly."""
    yy, xx = np.mgrid[0:h, 0:w]
    plane = 2.0 + 0.5 * xx / w + 0.3 * yy / h
    frames = plane[None] + 0.05 * np.sin(np.arange(t))[:, None, None] - 0.3 * person_disc(h, w)[None]
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
            k = np.array([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1]], np.float32)
            enc = depth_codec.encode(depth, valid)
            clip.labels[self.name] = depth_codec.to_entries(enc, np.repeat(k[None], t, 0), {"synthetic": True})
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


SYNTHETIC_STAGES = ["masks:synthetic", "depth:synthetic", "keypoints:synthetic"]
for _name, _cls in zip(SYNTHETIC_STAGES, (SyntheticMasks, SyntheticDepth, SyntheticKeypoints)):
    if _name not in registered_stages():
        register_stage(_name)(_cls)


def curate_training_run(media: Path, d: Path, videos: dict[str, str], shard_max_samples: int,
                        window_seconds: float = 1.0, window_frames: int = 6, **depth_params) -> Path:
    """Curate `videos` (id -> file in `media` or an absolute path) into `d/run` with the synthetic stages."""
    from flows.curate import run_curate
    from flows.params import CurateConfig

    lines = ["source,id"]
    for vid, name in videos.items():
        src = Path(name) if Path(name).is_absolute() else media / name
        shutil.copy(src, d / f"{vid}{src.suffix}")
        lines.append(f"{vid}{src.suffix},{vid}")
    (d / "m.csv").write_text("\n".join(lines) + "\n")
    config = CurateConfig(progress=False, workers=2, stages=SYNTHETIC_STAGES, window_seconds=window_seconds,
                          window_frames=window_frames, shard_max_samples=shard_max_samples,
                          stage_params={"depth:synthetic": depth_params} if depth_params else {})
    run_curate(d / "m.csv", d / "run", config)
    return d / "run"
