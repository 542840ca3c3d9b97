"""The `people` labelling stage, whatever the backend: detect and track persons over the clip window
(`DetectorBackend`), apply the paper's filters (`tasks.people_filters`), and write the tracked box per frame.

Label entries (`people.<entry>`): `box` (T, 4) float32 xyxy model pixels, NaN where the track is absent; `score`
(T,) float32; `present` (T,) bool; `track_id` (the kept track); `stats` (every filter's statistic).  A rejection
names its rule (`tasks.people_filters.RULES`) and keeps every raw detection as its evidence (`rejection_evidence`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tasks.people_filters import FrameDetections, PeopleFilterParams, PeopleVerdict, evaluate_people
from tasks.stage import ClipRejected, ClipWindow

__all__ = ["STAGE_VERSION", "DetectorBackend", "PeopleStageParams", "PeopleStage", "rejection_evidence"]

STAGE_VERSION = "1"


class DetectorBackend(Protocol):
    name: str

    def setup(self) -> None: ...

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        """(T,H,W,3) uint8 RGB -> one FrameDetections per frame, track ids from a tracker fresh for this call."""
        ...

    def provenance(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PeopleStageParams:
    """Everything that changes the stage's output: the flow's cache key is built from it."""

    backend: str
    detector: dict[str, Any]
    filters: PeopleFilterParams
    weights_sha256: str | None


class PeopleStage:
    """The `people` labelling stage: detect + track, filter, and write the tracked box per frame."""

    name = "people"
    version = STAGE_VERSION

    def __init__(self, backend: DetectorBackend, filters: PeopleFilterParams | None = None):
        self.backend = backend
        self.filters = filters or PeopleFilterParams()
        self._ready = False

    def setup(self) -> None:
        self.backend.setup()
        self._ready = True

    @property
    def params(self) -> PeopleStageParams:
        p = self.backend.provenance()
        return PeopleStageParams(p["backend"], p["detector"], self.filters, p.get("weights_sha256"))

    def evaluate(self, frames: np.ndarray, clip: ClipWindow | None = None) -> PeopleVerdict:
        """Detect, track and filter. Backends that read detections by source and time (`detect_clip`,
        as people:external) need the clip; the others see the frames only."""
        return self._evaluate(frames, clip)[0]

    def _evaluate(self, frames: np.ndarray, clip: ClipWindow | None) -> tuple[PeopleVerdict, list[FrameDetections]]:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"people: frames must be (T,H,W,3) uint8 with T > 0, got {frames.shape} {frames.dtype}")
        if not self._ready:
            self.setup()
        detect_clip = getattr(self.backend, "detect_clip", None)
        if detect_clip is not None:
            if clip is None:
                raise TypeError(f"people:{self.backend.name} needs the clip (source id, frame times, geometry)")
            detections = detect_clip(clip)
        else:
            detections = self.backend.detect(frames)
        if len(detections) != len(frames):
            raise RuntimeError(
                f"people:{self.backend.name} gave {len(detections)} frames of detections for {len(frames)}"
            )
        height, width = frames.shape[1:3]
        return evaluate_people(detections, width, height, self.filters), detections

    def provenance(self) -> dict[str, Any]:
        p = self.backend.provenance()
        detector = p.pop("detector")
        return {**p, "params": {"detector": detector, "filters": self.filters.as_dict()}, "version": self.version}

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        verdict, detections = self._evaluate(clip.frames, clip)
        clip.provenance[self.name] = self.provenance()
        stats = {**verdict.stats, "backend": self.backend.name}
        if not verdict.kept:
            assert verdict.rule is not None
            raise ClipRejected(verdict.rule, verdict.detail, stats, rejection_evidence(verdict, detections))
        clip.labels[self.name] = {
            "box": verdict.box.astype(np.float32),
            "score": verdict.score.astype(np.float32),
            "present": verdict.present.astype(bool),
            "track_id": np.asarray(verdict.track_id, np.int64),
            "stats": stats,
        }
        return clip


def rejection_evidence(verdict: PeopleVerdict, detections: list[FrameDetections]) -> dict[str, Any]:
    """What the filters saw, for a person to check a rejection (the second box, the border touch, the small box):
    every raw detection as flat arrays `frame` (N,) int32, `boxes` (N, 4) float32 xyxy model pixels, `scores` (N,),
    `track_ids` (N,) int64 (-1: untracked), and the main track's box per frame `track_box` (T, 4), NaN where absent."""
    frame = np.concatenate([np.full(len(d.boxes), i, np.int32) for i, d in enumerate(detections)] or
                           [np.zeros(0, np.int32)])
    return {
        "frame": frame,
        "boxes": np.concatenate([d.boxes for d in detections]).astype(np.float32).reshape(-1, 4),
        "scores": np.concatenate([d.scores for d in detections]).astype(np.float32),
        "track_ids": np.concatenate([d.track_ids for d in detections]).astype(np.int64),
        "track_box": verdict.box.astype(np.float32),
    }
