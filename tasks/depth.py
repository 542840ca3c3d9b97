"""depth: per-frame metric depth, validity mask and intrinsics of the clip window.

- `depth:moge` (paper profile): MoGe-2 through the `moge` package (`moge.model.v2.MoGeModel`), run on
  the stored frames (the model's input size, 518x294 or 294x518) in batches; its output is at that
  same resolution. Depth is metric (MoGe-2's scale head applied), the validity mask is MoGe's own
  (sky and undefined pixels out), intrinsics come from MoGe's focal recovery with the principal point
  at the image centre, converted to pixels (cx = W/2, cy = H/2: the convention of
  `unish_model.geometry.focal_to_intrinsics`). Weights: the official `moge-2-vitl` checkpoint from
  the weights folder; the architecture is built from the config stored in the checkpoint, and the checkpoint
  must hold exactly that architecture's weights (no key missing, none left over). A model without a mask head
  gives no validity mask: the valid pixels are then the finite depths > 0, and the clip's `stats.moge_mask`
  says false (true when MoGe's own mask was used).
- `depth:none` (lite profile): no monocular depth model ships in any registry package, so the clip
  records depth as absent, with the reason; training stages that need depth read the family through
  `shards.depth_codec.from_entries`, which raises `DepthAbsent` naming the clip and the reason.

Depth is stored with `shards.depth_codec` (log-quantised uint16, deflated): the worst relative error
of a valid pixel is stated in `depth.codec.json` (`max_rel_error`, 1e-3 by default).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards import depth_codec
from tasks.stage import (ClipRejected, ClipWindow, LabelStage, package_version, pick_device, register_stage,
                         split_params)
from tasks.weights import Need, need_file, registry_or_file, sha256_file

# A stage's version is part of cache keys and label versions: bump it when the stage's output changes.
MOGE_STAGE_VERSION = "2"  # 2: the depth stats say whether MoGe gave its validity mask (`moge_mask`)
NO_DEPTH_STAGE_VERSION = "1"
DEPTH_INVALID = "depth_invalid"

# MoGe-2 ViT-L as the official training config (microsoft/MoGe configs/train/v2.json) defines it, without
# the normal head (the `moge-2-vitl` release has none). Only random-weight builds use it: a checkpoint
# carries its own `model_config`, which always wins.
_CONV_STACK = {
    "dim_res_blocks": [1024, 256, 128, 64, 32],
    "res_block_in_norm": "none",
    "res_block_hidden_norm": "none",
    "resamplers": ["conv_transpose", "conv_transpose", "conv_transpose", "bilinear"],
}
MOGE2_VITL_CONFIG: dict[str, Any] = {
    "encoder": {"backbone": "dinov2_vitl14", "intermediate_layers": [5, 11, 17, 23], "dim_out": 1024},
    "neck": {"dim_in": [1026, 2, 2, 2, 2], "dim_out": None, "num_res_blocks": [0, 2, 2, 2, 0], **_CONV_STACK},
    "points_head": {"dim_in": [1024, 256, 128, 64, 32], "dim_out": [None, None, None, None, 3],
                    "num_res_blocks": [0, 1, 1, 1, 0], **_CONV_STACK},
    "mask_head": {"dim_in": [1024, 256, 128, 64, 32], "dim_out": [None, None, None, None, 1],
                  "num_res_blocks": [0, 1, 1, 1, 0], **_CONV_STACK},
    "scale_head": {"dims": [1024, 1024, 1024, 1]},
    "remap_output": "exp",
    "num_tokens_range": [1200, 3600],
}
MOGE_CONFIGS: dict[str, dict[str, Any]] = {"moge-2-vitl": MOGE2_VITL_CONFIG}






@dataclass
class MogeConfig:
    # A registry name (file in the weights folder) or a local MoGe-2 `model.pt`.
    weights: str = "moge-2-vitl"
    # Tests only, never a default: build `random_config` with random weights (seeded), load no file.
    allow_random_weights: bool = False
    random_config: str = "moge-2-vitl"
    seed: int = 0
    device: str | None = None  # None: first GPU, else CPU
    batch_size: int = 10  # frames per forward pass
    # ViT tokens per image; None: MoGe's own rule from resolution_level (9 -> 3600, its default).
    num_tokens: int | None = None
    resolution_level: int = 9
    fp16: bool | None = None  # MoGe's mixed precision (None: on CUDA only; CPU autocast lacks it)
    max_rel_error: float = depth_codec.DEFAULT_MAX_REL_ERROR  # storage bound, see shards.depth_codec
    # A frame with less than this share of valid pixels rejects the clip (`depth_invalid`).
    min_valid_frac: float = 0.01


def load_moge_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_config, state_dict) of an official MoGe checkpoint, read without unpickling code."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a MoGe checkpoint (expected keys model_config and model)")
    return dict(ckpt["model_config"]), ckpt["model"]


def pixel_intrinsics(k_normalized: np.ndarray, height: int, width: int) -> np.ndarray:
    """MoGe's image-size-normalised K (cx = cy = 0.5) -> pixels (cx = W/2, cy = H/2)."""
    k = np.asarray(k_normalized, np.float64).copy()
    k[..., 0, :] *= width
    k[..., 1, :] *= height
    return k.astype(np.float32)


class MogeDepthStage:
    """The `depth` labelling stage with MoGe-2."""

    name = "depth"
    version = MOGE_STAGE_VERSION

    def __init__(self, config: MogeConfig | None = None):
        self.config = config or MogeConfig()
        self.params = self.config
        self.model: Any = None
        self.weights_sha256: str | None = None
        self.effective: dict[str, Any] = {}

    def weights_needed(self) -> list[Need]:
        """The checkpoint setup() will load (none with random weights)."""
        if self.config.allow_random_weights:
            return []
        return [need_file(self.config.weights, "depth:moge", "MoGe", "moge-2-vitl", local="a local model.pt")]

    def setup(self) -> None:
        if self.model is not None:
            return
        c = self.config
        if c.batch_size < 1:
            raise ValueError(f"depth:moge batch_size must be >= 1, got {c.batch_size}")
        path = None if c.allow_random_weights else registry_or_file(  # raises before torch work
            c.weights, "MoGe", "moge-2-vitl", local="a local model.pt")
        import torch
        from moge.model.v2 import MoGeModel

        device = pick_device(c.device)
        if path is None:
            if c.random_config not in MOGE_CONFIGS:
                raise ValueError(f"unknown MoGe config {c.random_config!r}; known: {', '.join(MOGE_CONFIGS)}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed)
                model = MoGeModel(**copy.deepcopy(MOGE_CONFIGS[c.random_config]))
        else:
            model_config, state = load_moge_checkpoint(path)
            model = MoGeModel(**model_config)
            # strict, like every other converter: the architecture is built from the checkpoint's own config
            expected = set(model.state_dict())
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing:
                raise ValueError(f"{path}: checkpoint lacks {len(missing)} weights of its own config, e.g. {missing[:3]}")
            if unexpected:
                raise ValueError(f"{path}: checkpoint has {len(unexpected)} weights its own config does not build, "
                                 f"e.g. {unexpected[:3]}")
            model.load_state_dict(state, strict=True)
            self.weights_sha256 = sha256_file(path)
        self.model = model.to(device).eval()
        self.effective = {
            "device": device,
            "fp16": bool(c.fp16 if c.fp16 is not None else device.startswith("cuda")),
            "random_weights": path is None,
        }

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(depth float32 (T,H,W), MoGe's validity mask bool (T,H,W) or None when the model gives none (no mask
        head), K float32 (T,3,3) in pixels) for uint8 RGB frames."""
        self.setup()
        import torch

        c = self.config
        t_count, height, width = frames.shape[:3]
        depth = np.empty((t_count, height, width), np.float32)
        valid: np.ndarray | None = np.empty((t_count, height, width), bool)
        k_norm = np.empty((t_count, 3, 3), np.float32)
        device = self.effective["device"]
        for s in range(0, t_count, c.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[s : s + c.batch_size])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            with warnings.catch_warnings():
                # MoGe wraps its float32 post-processing in a CPU autocast that torch declines, noisily
                warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
                out = self.model.infer(x, num_tokens=c.num_tokens, resolution_level=c.resolution_level,
                                       apply_mask=False, force_projection=True, use_fp16=self.effective["fp16"])
            depth[s : s + len(x)] = out["depth"].float().cpu().numpy()
            if "mask" not in out:
                valid = None
            elif valid is not None:
                valid[s : s + len(x)] = out["mask"].cpu().numpy()
            k_norm[s : s + len(x)] = out["intrinsics"].float().cpu().numpy()
        return depth, valid, pixel_intrinsics(k_norm, height, width)

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {
            "backend": "moge",
            "weights": None if c.allow_random_weights else c.weights,
            "weights_sha256": self.weights_sha256,
            "package_version": package_version("dlr-moge"),
            "params": {**asdict(c), **self.effective, "codec": depth_codec.CODEC_NAME,
                       "codec_version": depth_codec.CODEC_VERSION},
            "version": self.version,
        }

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        frames = clip.frames
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"depth: frames must be (T,H,W,3) uint8 with T > 0, got {frames.shape} {frames.dtype}")
        depth, valid, intrinsics = self.infer(frames)
        enc = depth_codec.encode(depth, valid, self.config.max_rel_error)
        stats = depth_stats(depth, depth_codec.valid_pixels(depth, valid), clip.labels.get("masks"))
        stats.update(bytes=enc.nbytes, max_rel_error=enc.max_rel_error, backend="moge",
                     moge_mask=valid is not None)
        clip.provenance[self.name] = self.provenance()
        bad = [i for i, f in enumerate(stats["valid_frac"]) if f < self.config.min_valid_frac]
        if bad:
            raise ClipRejected(DEPTH_INVALID, f"valid depth on less than {self.config.min_valid_frac:.0%} of the pixels "
                               f"in frames {bad[:10]} ({[stats['valid_frac'][i] for i in bad[:5]]})", stats)
        clip.labels[self.name] = depth_codec.to_entries(enc, intrinsics, stats)
        return clip


def depth_stats(depth: np.ndarray, valid: np.ndarray, masks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-frame valid share, depth range and median; with a masks label, the valid share on the person."""
    t_count = len(depth)
    vals = [depth[i][valid[i]] for i in range(t_count)]
    stats: dict[str, Any] = {
        "frames": int(t_count),
        "valid_frac": [round(float(valid[i].mean()), 4) for i in range(t_count)],
        "median_m": [round(float(np.median(v)), 4) if len(v) else None for v in vals],
        "min_m": float(min((v.min() for v in vals if len(v)), default=0.0)),
        "max_m": float(max((v.max() for v in vals if len(v)), default=0.0)),
    }
    if masks and "mask_bits" in masks:
        from shards.mask_codec import unpack_masks

        person = unpack_masks(masks)
        if person.shape == valid.shape:
            share = [(valid[i] & person[i]).sum() / max(int(person[i].sum()), 1) for i in range(t_count)]
            stats["person_valid_frac"] = [round(float(s), 4) for s in share]
    return stats


# ---------------------------------------------------------------------------------------------- none

NO_DEPTH_REASON = (
    "the lite profile has no offline depth model (no registry package ships monocular depth weights); "
    "relabel with depth:moge for training stages that need depth"
)


@dataclass
class NoDepthConfig:
    reason: str = NO_DEPTH_REASON


class NoDepthStage:
    """`depth:none`: records that the clip has no depth, and why."""

    name = "depth"
    version = NO_DEPTH_STAGE_VERSION

    def __init__(self, config: NoDepthConfig | None = None):
        self.config = config or NoDepthConfig()
        self.params = self.config

    def setup(self) -> None:
        pass

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        clip.labels[self.name] = depth_codec.absent_entries(self.config.reason, backend="none")
        clip.provenance[self.name] = {
            "backend": "none",
            "weights": None,
            "weights_sha256": None,
            "package_version": None,
            "params": asdict(self.config),
            "version": self.version,
        }
        return clip




@register_stage("depth:moge")
def moge_depth_stage(**params: Any) -> LabelStage:
    """depth with MoGe-2; params are MogeConfig fields."""
    return MogeDepthStage(*split_params("depth:moge", params, MogeConfig))


@register_stage("depth:none")
def no_depth_stage(**params: Any) -> LabelStage:
    """lite profile: depth recorded as absent, with the reason; params are NoDepthConfig fields."""
    return NoDepthStage(*split_params("depth:none", params, NoDepthConfig))


__all__ = [
    "DEPTH_INVALID",
    "MOGE2_VITL_CONFIG",
    "MogeConfig",
    "MogeDepthStage",
    "NoDepthConfig",
    "NoDepthStage",
    "depth_stats",
    "load_moge_checkpoint",
    "moge_depth_stage",
    "no_depth_stage",
    "pixel_intrinsics",
]
