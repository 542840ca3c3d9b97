"""Profiles: which registered labelling stages run, in order, between decode and pack.

- `paper`: the paper's labellers (GPU): YOLO + ByteTrack, SAM2.1 masks, MoGe-2 depth, CameraHMR keypoints.
- `lite`: offline CPU labellers whose weights ship inside packages: HOG people, MediaPipe masks and pose
  keypoints; no depth model ships offline, so `depth:none` records depth as absent (with the reason).

Order matters: masks read the people stage's tracked boxes, keypoints read the boxes and depth's intrinsics.
"""
from __future__ import annotations

from typing import Any, Mapping

from tasks.stage import LabelStage, build_stage

PROFILES: dict[str, list[str]] = {
    "paper": ["people:yolo", "masks:sam2", "depth:moge", "keypoints:camerahmr"],
    "lite": ["people:hog", "masks:mediapipe", "depth:none", "keypoints:mediapipe"],
}


def stages_for_profile(name: str, params: Mapping[str, Mapping[str, Any]] | None = None) -> list[LabelStage]:
    """Build the profile's stages in order; `params` maps a stage name (`"people:hog"`) to its keyword arguments."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}")
    params = params or {}
    unknown = set(params) - set(PROFILES[name])
    if unknown:
        raise KeyError(f"parameters for stages not in profile {name!r}: {', '.join(sorted(unknown))}")
    return [build_stage(stage, **dict(params.get(stage, {}))) for stage in PROFILES[name]]
