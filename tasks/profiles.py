"""Profiles: which registered labelling stages run, in order, between decode and pack.

- `paper`: the paper's labellers (GPU): YOLO + ByteTrack, later SAM2.1 masks, MoGe-2 depth, CameraHMR keypoints.
- `lite`: offline CPU labellers whose weights ship inside packages: HOG people, later MediaPipe masks/keypoints.

Only stages that exist are listed; later work appends masks, depth and keypoints here.
"""
from __future__ import annotations

from typing import Any, Mapping

from tasks.stage import LabelStage, build_stage

PROFILES: dict[str, list[str]] = {
    "paper": ["people:yolo"],
    "lite": ["people:hog"],
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
