"""One person through a video's windows, for `unish infer` (not a curation stage: nothing is filtered out).

Per window, a people backend detects and tracks (`person_detector`: `yolo`, the paper's choice; `hog`, lite;
`frame`, the whole frame as the person, for smoke tests and close-ups).  `choose_person` keeps the track that best
continues the previous window's person (mean box IoU > 0.1 on the frames both windows hold), else the most
prominent one (largest sum of box area x score over the window).  Frames where the chosen track is missing are
filled by `unish_model.boxes.fill_boxes`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tasks.people.stage import DetectorBackend
from tasks.people_filters import FrameDetections
from unish_model.boxes import box_iou

__all__ = ["PERSON_DETECTORS", "WholeFrameDetector", "person_detector", "choose_person"]

PERSON_DETECTORS = ("yolo", "hog", "frame")


class WholeFrameDetector:
    """The `frame` detector: one person filling the frame (smoke tests, close-up videos)."""

    name = "frame"

    def setup(self) -> None:
        pass

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        h, w = frames.shape[1:3]
        return [FrameDetections.make([[0, 0, w, h]], [1.0], [1]) for _ in frames]

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "weights": None, "weights_sha256": None, "package_version": None,
                "detector": {}}


def person_detector(kind: str, yolo_weights: str = "yolo11n", device: str = "cpu") -> DetectorBackend:
    """A people backend by name, set up now (missing weights or no HOG in this OpenCV fail before any decoding).
    YOLO runs on the CPU when `device` is the CPU, else where Ultralytics picks."""
    if kind not in PERSON_DETECTORS:
        raise ValueError(f"person detector must be one of {', '.join(PERSON_DETECTORS)}, got {kind!r}")
    if kind == "frame":
        return WholeFrameDetector()
    from tasks.people.hog import HogBackend
    from tasks.people.yolo import YoloBackend, YoloConfig

    backend: DetectorBackend = HogBackend() if kind == "hog" else YoloBackend(
        YoloConfig(weights=yolo_weights, device="cpu" if device == "cpu" else None))
    backend.setup()
    return backend


def choose_person(detections: list[FrameDetections], previous: np.ndarray | None = None, min_score: float = 0.3
                  ) -> np.ndarray:
    """Pick one tracked person in a window: (T, 4) xyxy boxes, NaN where the track is absent.

    detections: per-frame FrameDetections (boxes, scores, track_ids).  previous: (T, 4) boxes of the person in
    this window's frames as far as known from the previous window (NaN elsewhere): the track that overlaps them
    best (mean IoU > 0.1) continues the person; otherwise the most prominent track (sum of area x score)."""
    t_count = len(detections)
    tracks: dict[int, np.ndarray] = {}
    prominence: dict[int, float] = {}
    for i, det in enumerate(detections):
        for box, score, tid in zip(det.boxes, det.scores, det.track_ids):
            if score < min_score or tid < 0:
                continue
            tid = int(tid)
            track = tracks.setdefault(tid, np.full((t_count, 4), np.nan, np.float64))
            if np.isnan(track[i, 0]):  # one box per id and frame
                track[i] = box
                prominence[tid] = prominence.get(tid, 0.0) + float((box[2] - box[0]) * (box[3] - box[1]) * score)
    if not tracks:
        return np.full((t_count, 4), np.nan, np.float64)
    if previous is not None and np.isfinite(previous).all(1).any():
        known = np.isfinite(previous).all(1)

        def continuity(tid: int) -> float:
            both = known & np.isfinite(tracks[tid]).all(1)
            if not both.any():
                return 0.0
            return float(np.mean([box_iou(tracks[tid][i], previous[i])[0, 0] for i in np.flatnonzero(both)]))

        best = max(tracks, key=continuity)
        if continuity(best) > 0.1:
            return tracks[best]
    return tracks[max(prominence, key=lambda k: (prominence[k], -k))]
