"""The paper's person filters, as a pure function of per-frame detections and the image size.

The paper keeps a clip when exactly one person is consistently detected, the mean person box height
is above 40% of the image height, no box touches the image border and no box overlaps another
detected person. It counts people on raw detections and keeps identity with the tracker; this module
gets both (every raw detection with the tracker's id for it, -1 where the tracker output none) and
decides. Nothing here runs a model, so every rule is testable on synthetic sequences.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from unish_model.boxes import box_iou

# Rule names double as index reasons: `rejected:<rule>`.
NO_PERSON = "no_person"
MULTI_PERSON = "multi_person"
INCONSISTENT = "inconsistent"
SMALL = "small"
TRUNCATED = "truncated"
OCCLUDED = "occluded"
RULES: tuple[str, ...] = (NO_PERSON, MULTI_PERSON, INCONSISTENT, SMALL, TRUNCATED, OCCLUDED)


@dataclass(frozen=True)
class PeopleFilterParams:
    """Every threshold of the four filters.

    The paper fixes only the height ratio (> 40%, strict) and says "no truncation", "no overlap" and
    "a single person consistently detected"; the numbers for those words are ours and marked so.
    """

    # A raw detection counts as a person at or above this score (ours; Ultralytics' own default is 0.25,
    # 0.5 keeps stray low-score boxes from rejecting clips as multi-person).
    person_conf: float = 0.5
    # Reject as multi_person when at least this share of the frames shows two or more people (ours:
    # 0.1 is 3 frames of 30, so one spurious box in one frame does not reject on its own).
    multi_person_share: float = 0.1
    # The main track must be present in at least this share of the frames (ours).
    consistency_share: float = 0.9
    # Paper: mean box height > 40% of the image height; the comparison is strict.
    min_height_ratio: float = 0.4
    # A box closer than this to any image border (in pixels) is truncated. 1.0 means a box that
    # reaches the border, or comes within a sub-pixel of it, is truncated; one a whole pixel away is not.
    border_margin_px: float = 1.0
    # A box whose IoU with another confident person box exceeds this is occluded; 0 = any intersection
    # of positive area (paper: "no overlap with other detected boxes").
    max_overlap_iou: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class FrameDetections:
    """One frame's person detections: raw boxes (N,4 xyxy px), scores (N,) and the tracker's id per box."""

    boxes: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray

    @staticmethod
    def empty() -> "FrameDetections":
        return FrameDetections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        )

    @staticmethod
    def make(boxes: Any, scores: Any, track_ids: Any | None = None) -> "FrameDetections":
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        s = np.asarray(scores, np.float32).reshape(-1)
        t = np.full(len(b), -1, np.int64) if track_ids is None else np.asarray(track_ids, np.int64).reshape(-1)
        if not (len(b) == len(s) == len(t)):
            raise ValueError(f"boxes, scores and track_ids disagree in length: {len(b)}, {len(s)}, {len(t)}")
        return FrameDetections(b, s, t)


@dataclass
class PeopleVerdict:
    """What the filters decided, with the main track per frame and every rule's statistic."""

    rule: str | None  # None = kept; else one of RULES
    detail: str
    track_id: int  # -1 where no track was chosen
    box: np.ndarray  # (T,4) float32, NaN where the track is absent
    score: np.ndarray  # (T,) float32, NaN where absent
    present: np.ndarray  # (T,) bool
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.rule is None


def _main_track(frames: Sequence[FrameDetections]) -> tuple[int, int, int]:
    """(track id present in the most frames, its frame count, number of distinct tracks); ties go to the lowest id."""
    counts: dict[int, int] = {}
    for f in frames:
        for tid in set(int(t) for t in f.track_ids if t >= 0):
            counts[tid] = counts.get(tid, 0) + 1
    if not counts:
        return -1, 0, 0
    tid = min(counts, key=lambda k: (-counts[k], k))
    return tid, counts[tid], len(counts)


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def evaluate_people(
    frames: Sequence[FrameDetections],
    width: int,
    height: int,
    params: PeopleFilterParams = PeopleFilterParams(),
) -> PeopleVerdict:
    """Apply the filters in order (no_person, multi_person, inconsistent, small, truncated, occluded).

    Every statistic is computed whatever the outcome, so the index can show how near a clip came.
    """
    t_count = len(frames)
    if t_count == 0:
        raise ValueError("evaluate_people needs at least one frame")
    p = params

    # Counting people: raw detections at or above person_conf, tracked or not.
    confident = [f.scores >= p.person_conf for f in frames]
    people_per_frame = np.array([int(c.sum()) for c in confident])
    frames_with_person = int((people_per_frame >= 1).sum())
    multi_frames = int((people_per_frame >= 2).sum())
    multi_share = multi_frames / t_count

    # Identity: the track the tracker kept in the most frames.
    track_id, track_frames, num_tracks = _main_track(frames)
    track_share = track_frames / t_count

    box = np.full((t_count, 4), np.nan, np.float32)
    score = np.full((t_count,), np.nan, np.float32)
    present = np.zeros((t_count,), bool)
    max_iou = 0.0
    overlap_frames = 0
    for i, f in enumerate(frames):
        hits = np.flatnonzero(f.track_ids == track_id) if track_id >= 0 else np.zeros(0, int)
        if len(hits) == 0:
            continue
        j = int(hits[np.argmax(f.scores[hits])])  # a tracker gives one box per id; be safe anyway
        box[i], score[i], present[i] = f.boxes[j], f.scores[j], True
        others = confident[i].copy()
        others[j] = False
        if others.any():
            iou = float(box_iou(f.boxes[j : j + 1], f.boxes[others]).max())
            max_iou = max(max_iou, iou)
            overlap_frames += int(iou > p.max_overlap_iou)

    tracked = box[present].astype(np.float64)
    if len(tracked):
        height_ratio = float((tracked[:, 3] - tracked[:, 1]).mean() / height)
        gaps = np.stack(
            [tracked[:, 0], tracked[:, 1], width - tracked[:, 2], height - tracked[:, 3]], axis=1
        ).min(axis=1)
        min_gap: float | None = float(gaps.min())
        truncated_frames = int((gaps < p.border_margin_px).sum())
    else:
        height_ratio, min_gap, truncated_frames = 0.0, None, 0

    stats: dict[str, Any] = {
        "num_frames": t_count,
        "image_size": [int(width), int(height)],
        "frames_with_person": frames_with_person,
        "max_people_in_frame": int(people_per_frame.max()),
        "multi_person_frames": multi_frames,
        "multi_person_share": _round(multi_share),
        "num_tracks": num_tracks,
        "track_id": track_id,
        "track_frames": track_frames,
        "track_share": _round(track_share),
        "mean_height_ratio": _round(height_ratio),
        "min_border_gap_px": _round(min_gap),
        "truncated_frames": truncated_frames,
        "max_overlap_iou": _round(max_iou),
        "overlap_frames": overlap_frames,
    }

    def verdict(rule: str | None, detail: str = "") -> PeopleVerdict:
        return PeopleVerdict(rule, detail, track_id, box, score, present, stats)

    if frames_with_person == 0:
        return verdict(NO_PERSON, f"no detection with score >= {p.person_conf} in {t_count} frames")
    if multi_frames > 0 and multi_share >= p.multi_person_share:
        return verdict(
            MULTI_PERSON,
            f"{multi_frames}/{t_count} frames show 2 or more people "
            f"(up to {stats['max_people_in_frame']}; limit share {p.multi_person_share})",
        )
    if track_share < p.consistency_share:
        return verdict(
            INCONSISTENT,
            f"main track present in {track_frames}/{t_count} frames, needs share >= {p.consistency_share} "
            f"({num_tracks} tracks)",
        )
    if not height_ratio > p.min_height_ratio:
        return verdict(SMALL, f"mean box height {height_ratio:.3f} of the image, needs > {p.min_height_ratio}")
    if truncated_frames > 0:
        return verdict(
            TRUNCATED,
            f"box within {p.border_margin_px} px of the border in {truncated_frames} frames (min gap {min_gap:.2f} px)",
        )
    if overlap_frames > 0:
        return verdict(
            OCCLUDED, f"box overlaps another person in {overlap_frames} frames (max IoU {max_iou:.3f})"
        )
    return verdict(None)
