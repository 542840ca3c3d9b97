"""Person boxes: the one home of the box arithmetic that the labelling stages (`tasks/`) and the model side
(`unish_model`, the evaluation, `unish infer`) share.  numpy only, so the lite CPU stages need no torch.

Conventions: a box is (x1, y1, x2, y2) in pixels, x right and y down; an image of H x W pixels spans [0, W] x
[0, H], and pixel (row i, column j) is the unit square centred on (j + 0.5, i + 0.5).

A box is *usable* when it is finite, has a positive width and height, and (where per-frame flags are given) is
flagged valid.  Missing boxes, one stated behaviour (`fill_boxes`): a frame without a usable box takes the box
interpolated linearly over time between the nearest frames that have one, held at the ends.  When no frame at
all has a usable box there is nothing to interpolate from, and `fill_boxes` raises `NoUsableBox`, unless the
caller names a fallback box (`fallback=whole_frame(h, w)` where the person is taken to fill the frame when none
was found).  It never invents a box on its own.

A box covers the pixels whose centre lies strictly inside it (`box_pixels`, `box_mask`, `box_masks`): a centre
exactly on an edge is out, so a box with integer corners covers exactly the pixels inside its corners.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "NoUsableBox", "usable_boxes", "whole_frame", "fill_boxes", "grow_box", "box_pixels", "box_mask", "box_masks",
    "box_iou", "clip_boxes",
]

Array = NDArray[np.float64]


class NoUsableBox(ValueError):
    """No frame has a usable box and the caller gave no fallback: nothing to fill the frames with."""


def usable_boxes(boxes: ArrayLike, valid: ArrayLike | None = None) -> NDArray[np.bool_]:
    """(T,) which of the (T, 4) boxes are usable: finite, positive width and height, and flagged in `valid`."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    ok = np.isfinite(b).all(axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if valid is not None:
        flags = np.asarray(valid, bool).reshape(-1)
        if len(flags) != len(b):
            raise ValueError(f"{len(b)} boxes but {len(flags)} validity flags")
        ok &= flags
    return ok


def whole_frame(height: int, width: int) -> Array:
    """The box of the whole image: (0, 0, width, height)."""
    return np.array([0.0, 0.0, width, height])


def fill_boxes(boxes: ArrayLike, valid: ArrayLike | None = None, fallback: ArrayLike | None = None
               ) -> tuple[Array, NDArray[np.bool_]]:
    """(T, 4) boxes -> (every frame with a box (T, 4) float64, which frames had a usable one (T,)).

    Frames without a usable box (see `usable_boxes`) take the box interpolated linearly over time from the usable
    ones and held at the ends.  No usable box in any frame: `fallback` (one box) in every frame when given, else
    `NoUsableBox`."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    ok = usable_boxes(b, valid)
    if not ok.any():
        if fallback is None:
            raise NoUsableBox(f"no usable box in any of {len(b)} frames (each is missing, empty or flagged invalid)")
        return np.tile(np.asarray(fallback, np.float64).reshape(4), (len(b), 1)), ok
    t = np.arange(len(b))
    filled = np.stack([np.interp(t, t[ok], b[ok, k]) for k in range(4)], axis=1)
    return filled, ok


def grow_box(box: ArrayLike, share: float, width: int, height: int) -> Array:
    """Boxes (..., 4) grown by `share` of their size on every side (shrunk when negative), clipped to the image."""
    b = np.asarray(box, np.float64)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    out = np.stack([b[..., 0] - share * w, b[..., 1] - share * h, b[..., 2] + share * w, b[..., 3] + share * h], -1)
    return np.clip(out, 0, [width, height, width, height])


def box_pixels(box: ArrayLike) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1), end exclusive, of the pixels whose centre lies strictly inside a
    float box."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
    return int(np.floor(x0 + 0.5)), int(np.floor(y0 + 0.5)), int(np.ceil(x1 - 0.5)), int(np.ceil(y1 - 0.5))


def box_mask(box: ArrayLike, height: int, width: int) -> NDArray[np.bool_]:
    """(H, W) bool: the pixels the box covers."""
    x0, y0, x1, y1 = box_pixels(box)
    m = np.zeros((height, width), bool)
    m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return m


def box_masks(boxes: ArrayLike, height: int, width: int) -> NDArray[np.bool_]:
    """(T, 4) boxes -> (T, H, W) bool masks, each as `box_mask`."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.zeros((len(b), height, width), bool)
    for i, box in enumerate(b):
        out[i] = box_mask(box, height, width)
    return out


def box_iou(a: ArrayLike, b: ArrayLike) -> Array:
    """IoU between every box in a (N, 4) and b (M, 4): (N, M); 0 where the union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def clip_boxes(boxes: ArrayLike, width: int, height: int) -> tuple[Array, NDArray[np.bool_]]:
    """(boxes clipped to the image, which of them keep a positive area).  A person partly outside keeps a box on
    the border (the truncation filter sees it); one entirely outside is not in the image."""
    b = np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), 0, [width, height, width, height])
    return b, (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
