"""unish_model.boxes: the box helpers every stage and the model side share, missing boxes above all."""
from __future__ import annotations

import numpy as np
import pytest

from unish_model.boxes import (
    NoUsableBox,
    box_iou,
    box_mask,
    box_masks,
    box_pixels,
    clip_boxes,
    fill_boxes,
    grow_box,
    usable_boxes,
    whole_frame,
)


def test_fill_boxes_interpolates_and_holds():
    box = np.array([[0, 0, 10, 10], [np.nan] * 4, [20, 0, 30, 10], [np.nan] * 4], np.float32)
    filled, usable = fill_boxes(box, np.array([True, False, True, False]))
    np.testing.assert_allclose(filled[1], [10, 0, 20, 10])  # interpolated
    np.testing.assert_allclose(filled[3], [20, 0, 30, 10])  # held
    assert usable.tolist() == [True, False, True, False]
    # the same without flags: the NaN rows are what is missing
    filled, usable = fill_boxes(box)
    np.testing.assert_allclose(filled[1], [10, 0, 20, 10])
    assert usable.tolist() == [True, False, True, False]


def test_unusable_boxes_are_the_missing_ones():
    """Flagged off, non-finite and empty boxes count as missing; the rest are kept as they are."""
    box = np.array([[0, 0, 10, 10], [5, 5, 5, 9], [1, 1, 2, np.inf], [9, 0, 3, 10], [20, 0, 30, 10], [2, 2, 4, 4]])
    usable = usable_boxes(box, [True, True, True, True, True, False])
    assert usable.tolist() == [True, False, False, False, True, False]
    filled, _ = fill_boxes(box, [True, True, True, True, True, False])
    np.testing.assert_allclose(filled[:5, 0], [0, 5, 10, 15, 20])  # interpolated over the four missing
    np.testing.assert_allclose(filled[5], [20, 0, 30, 10])  # held after the last usable box
    with pytest.raises(ValueError, match="6 boxes but 2 validity flags"):
        usable_boxes(box, [True, False])


def test_no_usable_box_raises_unless_a_fallback_is_named():
    """The one behaviour for a track that is absent everywhere: no box is invented without the caller's say."""
    missing = np.array([[np.nan] * 4, [3, 3, 3, 3]])
    with pytest.raises(NoUsableBox, match="no usable box in any of 2 frames"):
        fill_boxes(missing)
    with pytest.raises(NoUsableBox):
        fill_boxes(np.array([[0, 0, 10, 10]] * 2), np.zeros(2, bool))
    assert issubclass(NoUsableBox, ValueError)
    whole, usable = fill_boxes(missing, fallback=whole_frame(48, 64))
    np.testing.assert_allclose(whole, [[0, 0, 64, 48]] * 2)
    assert whole.dtype == np.float64 and not usable.any()
    empty, usable = fill_boxes(np.zeros((0, 4)), fallback=whole_frame(48, 64))
    assert empty.shape == (0, 4) and usable.shape == (0,)


def test_box_masks_cover_the_pixels_whose_centre_is_inside():
    m = box_masks(np.array([[2.0, 1.0, 5.0, 3.0]]), 6, 8)
    assert m.shape == (1, 6, 8) and m.sum() == 3 * 2 and m[0, 1:3, 2:5].all()
    # a centre exactly on an edge is out, on every side
    assert box_pixels([1.5, 0.5, 3.5, 2.5]) == (2, 1, 3, 2)
    np.testing.assert_array_equal(np.flatnonzero(box_mask([1.5, 0, 3.6, 1], 1, 6)[0]), [2, 3])
    assert box_mask([0.5, 0.5, 2.5, 2.5], 4, 4).sum() == 1  # only pixel (1, 1) has its centre strictly inside
    # clipped to the image; one box and a stack of them agree
    np.testing.assert_array_equal(box_mask([-3, -2, 2, 9], 4, 5), box_masks([[-3, -2, 2, 9]], 4, 5)[0])
    assert box_mask([-3, -2, 2, 9], 4, 5).sum() == 2 * 4


def test_grow_box_grows_and_clips():
    np.testing.assert_allclose(grow_box([10, 10, 20, 30], 0.1, 100, 100), [9, 8, 21, 32])
    np.testing.assert_allclose(grow_box([1, 1, 11, 11], 0.5, 12, 100), [0, 0, 12, 16])
    np.testing.assert_allclose(grow_box([10, 10, 20, 30], -0.2, 100, 100), [12, 14, 18, 26])


def test_box_iou_values():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]])


def test_clip_boxes_keeps_partly_visible_boxes_on_the_border():
    boxes, keep = clip_boxes(np.array([[-10, 5, 50, 100], [300, 10, 320, 50], [10, 10, 20, 20]]), 294, 518)
    assert keep.tolist() == [True, False, True]
    np.testing.assert_allclose(boxes[0], [0, 5, 50, 100])
