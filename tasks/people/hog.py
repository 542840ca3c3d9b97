"""`people:hog` (lite profile, offline, CPU): OpenCV's HOG people detector with its built-in SVM, and the IoU
tracker (`tracker.py`).

It only finds upright, roughly pedestrian-sized people (about 96 px or taller at the model size), misses unusual
poses (dance, sitting, lying, seen from above), and its scores are an SVM margin, not a probability: use it for
laptops and demos, not for a release.  OpenCV 5's main wheels dropped HOG: then setup raises BackendUnavailable
naming the package to install.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tasks.people.stage import PeopleStage
from tasks.people.tracker import IoUTracker
from tasks.people_filters import FrameDetections, PeopleFilterParams
from tasks.stage import BackendUnavailable, LabelStage, package_version, register_stage, split_params

__all__ = ["HogConfig", "HogBackend", "hog_descriptor_class", "hog_people_stage"]


@dataclass
class HogConfig:
    win_stride: int = 8
    padding: int = 8
    scale: float = 1.05  # image pyramid step
    hit_threshold: float = 0.0  # SVM margin a window needs
    group_threshold: float = 2.0  # OpenCV's rectangle grouping (detectMultiScale's finalThreshold)
    # The 64x128 detection window has a margin around the person; shrink boxes to the body as
    # OpenCV's own people-detect sample does (share of width per side, share of height per side).
    shrink_x: float = 0.15
    shrink_y: float = 0.05
    iou_match: float = 0.3  # tracker: least IoU to continue a track
    max_lost: int = 5  # tracker: frames a track survives without a match


def hog_descriptor_class() -> Any:
    """OpenCV's HOGDescriptor, or BackendUnavailable naming the fix (OpenCV 5's main wheels dropped it)."""
    import cv2

    cls = getattr(cv2, "HOGDescriptor", None)
    if cls is None:
        raise BackendUnavailable(
            f"OpenCV {cv2.__version__} has no HOGDescriptor (OpenCV 5 moved the HOG people detector out of "
            f"opencv-python); install opencv-contrib-python-headless=={cv2.__version__.split('-')[0]}.* "
            "or an OpenCV 4.x build to use people:hog"
        )
    return cls


class HogBackend:
    name = "hog"

    def __init__(self, config: HogConfig | None = None):
        self.config = config or HogConfig()
        self._hog: Any = None

    def setup(self) -> None:
        if self._hog is not None:
            return
        cls = hog_descriptor_class()
        hog = cls()
        hog.setSVMDetector(cls.getDefaultPeopleDetector())
        self._hog = hog

    def detect_frame(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (N,4) xyxy float32, scores (N,)) for one RGB frame; score = logistic(SVM margin)."""
        self.setup()
        c = self.config
        bgr = np.ascontiguousarray(frame_rgb[..., ::-1])  # HOG takes the strongest gradient over channels
        rects, weights = self._hog.detectMultiScale(
            bgr,
            hitThreshold=c.hit_threshold,
            winStride=(c.win_stride, c.win_stride),
            padding=(c.padding, c.padding),
            scale=c.scale,
            groupThreshold=c.group_threshold,
        )
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        margins = np.asarray(weights, np.float32).reshape(-1)
        x, y, w, h = rects.T
        h_img, w_img = frame_rgb.shape[:2]
        boxes = np.stack(
            [x + c.shrink_x * w, y + c.shrink_y * h, x + (1 - c.shrink_x) * w, y + (1 - c.shrink_y) * h], axis=1
        )
        boxes = np.clip(boxes, 0, [w_img, h_img, w_img, h_img]).astype(np.float32)
        scores = (1.0 / (1.0 + np.exp(-margins.astype(np.float64)))).astype(np.float32)
        return boxes, scores

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        tracker = IoUTracker(self.config.iou_match, self.config.max_lost)
        out = []
        for frame in frames:
            boxes, scores = self.detect_frame(frame)
            out.append(FrameDetections.make(boxes, scores, tracker.update(boxes)))
        return out

    def provenance(self) -> dict[str, Any]:
        import cv2

        return {
            "backend": self.name,
            "weights": "opencv-default-people-detector",
            "weights_sha256": None,  # built into OpenCV
            "package_version": package_version("opencv", module=cv2),
            "detector": asdict(self.config),
        }


@register_stage("people:hog")
def hog_people_stage(**params: Any) -> LabelStage:
    """people with OpenCV HOG + an IoU tracker; params are HogConfig and PeopleFilterParams fields."""
    config, filters = split_params("people:hog", params, HogConfig, PeopleFilterParams)
    return PeopleStage(HogBackend(config), filters)
