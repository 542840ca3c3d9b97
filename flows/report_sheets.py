"""Contact sheets of `unish report`: a few frames of a clip with its labels drawn on them, and its depth as a colour
map beside each frame; JPEG thumbnails, embedded in the page as data URIs.

Drawn on a frame (OpenCV, in the clip's model pixels, before the thumbnail is made):
- the people stage's tracked box (green), every other detection the filters counted as a person (red: what makes
  `multi_person` and `occluded` fire, and the other tracks of an `inconsistent` clip), detections below the
  person score (grey);
- `truncated`: the image border the box touches (a thick red edge); `small`: the box in yellow, with a bar of the
  minimum height (40% of the image, the paper's rule) beside it to compare;
- the mask's outline (cyan), the 2D keypoints coloured by confidence (red 0 -> green 1) and SMPL's skeleton.
Depth is coloured with matplotlib's `turbo` over the clip's 2nd..98th percentile (near = blue), invalid pixels black.
A rejected clip's sheet shows the frames where its rule's evidence is (detections, lost masks) when there are any.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from shards.sample import encode_jpeg

__all__ = ["Overlay", "draw_frame", "depth_colours", "data_uri", "thumbnail", "frame_picks"]

GREEN, RED, GREY, YELLOW, CYAN = (40, 200, 80), (230, 40, 40), (150, 150, 150), (250, 210, 0), (0, 230, 230)
THUMB_WIDTH = 240
JPEG_QUALITY = 75


@dataclass
class Overlay:
    """What to draw on one frame; every field optional."""

    box: np.ndarray | None = None  # (4,) the tracked person, xyxy
    others: list[np.ndarray] = field(default_factory=list)  # other confident person boxes
    weak: list[np.ndarray] = field(default_factory=list)  # detections below the person score
    mask: np.ndarray | None = None  # (H, W) bool
    joints: np.ndarray | None = None  # (J, 2)
    confidence: np.ndarray | None = None  # (J,)
    parents: tuple[int, ...] = ()
    border_margin: float | None = None  # truncated: mark the borders the box comes within this many pixels of
    min_height_ratio: float | None = None  # small: draw the box yellow with a reference bar of this share of H


def _xyxy(b: Any) -> tuple[int, int, int, int] | None:
    b = np.asarray(b, float).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        return None
    return int(round(b[0])), int(round(b[1])), int(round(b[2])) - 1, int(round(b[3])) - 1


def draw_frame(frame: np.ndarray, o: Overlay) -> np.ndarray:
    """A copy of the (H, W, 3) RGB frame with the overlay drawn."""
    img = np.ascontiguousarray(frame.copy())
    h, w = img.shape[:2]
    if o.mask is not None and o.mask.any():
        contours, _ = cv2.findContours(o.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, CYAN, 2)
    for b in o.weak:
        if (r := _xyxy(b)) is not None:
            cv2.rectangle(img, r[:2], r[2:], GREY, 2)
    for b in o.others:
        if (r := _xyxy(b)) is not None:
            cv2.rectangle(img, r[:2], r[2:], RED, 3)
    r = _xyxy(o.box) if o.box is not None else None
    if r is not None:
        small = o.min_height_ratio is not None
        cv2.rectangle(img, r[:2], r[2:], YELLOW if small else GREEN, 3 if small else 2)
        if small:
            need = int(round(o.min_height_ratio * h))
            x = min(w - 4, r[2] + 8)
            top = max(0, r[3] - need)
            cv2.line(img, (x, top), (x, r[3]), YELLOW, 3)
            cv2.line(img, (x - 5, top), (x + 5, top), YELLOW, 3)
        if o.border_margin is not None:
            b = np.asarray(o.box, float)
            for gap, p0, p1 in ((b[0], (0, 0), (0, h - 1)), (b[1], (0, 0), (w - 1, 0)),
                                (w - b[2], (w - 1, 0), (w - 1, h - 1)), (h - b[3], (0, h - 1), (w - 1, h - 1))):
                if gap < o.border_margin:
                    cv2.line(img, p0, p1, RED, 6)
    if o.joints is not None:
        j = np.asarray(o.joints, float)
        c = np.ones(len(j)) if o.confidence is None else np.asarray(o.confidence, float)
        seen = (c > 0) & np.isfinite(j).all(1)
        for k, parent in enumerate(o.parents):
            if parent >= 0 and k < len(j) and seen[k] and seen[parent]:
                cv2.line(img, tuple(int(v) for v in j[k].round()), tuple(int(v) for v in j[parent].round()),
                         (255, 255, 255), 1, cv2.LINE_AA)
        for k in np.flatnonzero(seen):
            t = float(np.clip(c[k], 0, 1))
            cv2.circle(img, tuple(int(v) for v in j[k].round()), 3, (int(255 * (1 - t)), int(220 * t), 40), -1,
                       cv2.LINE_AA)
    return img


def depth_colours(depth: np.ndarray, valid: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 RGB with `turbo` between lo and hi; invalid pixels black."""
    from matplotlib import colormaps

    t = np.clip((depth - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = (colormaps["turbo"](t)[..., :3] * 255).round().astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def depth_range(depth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    v = depth[valid]
    if not v.size:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [2, 98])
    return float(lo), float(max(hi, lo + 1e-6))


def thumbnail(rgb: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w <= width:
        return rgb
    return cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def data_uri(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """A JPEG data URI of the (thumbnailed) RGB image."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(thumbnail(rgb), quality)).decode("ascii")


def frame_picks(n_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over a clip (all of them when it has fewer)."""
    if n_frames <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, min(count, n_frames))})
