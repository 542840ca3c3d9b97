"""The paper's person filters on synthetic detection sequences, edges included."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.people_filters import (
    INCONSISTENT,
    MULTI_PERSON,
    NO_PERSON,
    OCCLUDED,
    SMALL,
    TRUNCATED,
    FrameDetections,
    PeopleFilterParams,
    evaluate_people,
)

W, H, T = 518, 294, 30
GOOD = (200.0, 40.0, 300.0, 260.0)  # 220 px tall = 0.75 of H, at least 34 px from every border
FAR = (20.0, 100.0, 60.0, 200.0)  # another person, away from GOOD


def person(box=GOOD, score=0.9, tid=1) -> tuple:
    return (box, score, tid)


def seq(*per_frame: list[tuple]) -> list[FrameDetections]:
    frames = []
    for dets in per_frame:
        if not dets:
            frames.append(FrameDetections.empty())
            continue
        boxes, scores, tids = zip(*dets)
        frames.append(FrameDetections.make(boxes, scores, tids))
    return frames


def clip(n: int = T, **override: list[tuple]) -> list[FrameDetections]:
    """n frames of one good tracked person; override['f<i>'] replaces frame i's detections."""
    return seq(*[override.get(f"f{i}", [person()]) for i in range(n)])


def test_one_good_person_is_kept_with_its_track_per_frame():
    v = evaluate_people(clip(), W, H)
    assert v.kept and v.rule is None
    assert v.track_id == 1
    assert v.present.all() and v.present.dtype == bool
    assert v.box.shape == (T, 4) and v.box.dtype == np.float32
    np.testing.assert_allclose(v.box, np.tile(GOOD, (T, 1)))
    np.testing.assert_allclose(v.score, 0.9, rtol=1e-6)
    s = v.stats
    assert s["track_share"] == 1.0 and s["num_tracks"] == 1
    assert s["mean_height_ratio"] == pytest.approx(220 / 294, abs=1e-6)
    assert s["min_border_gap_px"] == 34.0 and s["truncated_frames"] == 0
    assert s["max_overlap_iou"] == 0.0 and s["multi_person_frames"] == 0
    json.dumps(s)  # the stats go into the clip record as JSON


# ---- no_person


def test_empty_window_is_no_person():
    v = evaluate_people(seq(*[[] for _ in range(T)]), W, H)
    assert v.rule == NO_PERSON
    assert not v.present.any() and np.isnan(v.box).all()
    assert v.stats["frames_with_person"] == 0 and v.track_id == -1


def test_only_low_score_boxes_is_no_person():
    v = evaluate_people(clip(**{f"f{i}": [person(score=0.3)] for i in range(T)}), W, H)
    assert v.rule == NO_PERSON
    # the same boxes count once the threshold admits them
    assert evaluate_people(clip(**{f"f{i}": [person(score=0.3)] for i in range(T)}), W, H,
                           PeopleFilterParams(person_conf=0.3)).kept


# ---- multi_person: counted on raw detections, tracked or not


def test_second_person_in_a_single_frame_is_not_enough_by_default():
    frames = clip(f7=[person(), person(FAR, 0.8, -1)])
    v = evaluate_people(frames, W, H)
    assert v.kept
    assert v.stats["multi_person_frames"] == 1 and v.stats["max_people_in_frame"] == 2


def test_second_person_in_a_single_frame_rejects_when_the_share_allows_it():
    frames = clip(f7=[person(), person(FAR, 0.8, -1)])
    v = evaluate_people(frames, W, H, PeopleFilterParams(multi_person_share=1 / T))
    assert v.rule == MULTI_PERSON
    assert v.stats["multi_person_share"] == pytest.approx(1 / T, abs=1e-6)


def test_second_person_in_three_of_thirty_frames_rejects():
    two = [person(), person(FAR, 0.8, 2)]
    v = evaluate_people(clip(f3=two, f4=two, f5=two), W, H)
    assert v.rule == MULTI_PERSON and v.stats["multi_person_frames"] == 3
    # two frames (share 0.067 < 0.1) pass
    assert evaluate_people(clip(f3=two, f4=two), W, H).kept


def test_untracked_second_person_still_counts():
    two = [person(), person(FAR, 0.8, -1)]  # the tracker never confirmed it
    v = evaluate_people(clip(**{f"f{i}": two for i in range(10)}), W, H)
    assert v.rule == MULTI_PERSON and v.stats["num_tracks"] == 1


def test_low_score_second_box_is_not_a_person():
    two = [person(), person(FAR, 0.49, 2)]
    v = evaluate_people(clip(**{f"f{i}": two for i in range(T)}), W, H)
    assert v.kept and v.stats["max_people_in_frame"] == 1


# ---- consistency


def test_track_lost_for_a_few_frames_is_still_consistent():
    lost = {f"f{i}": [] for i in (10, 11, 12)}  # 27/30 = 0.9 present
    v = evaluate_people(clip(**lost), W, H)
    assert v.kept
    assert v.present.sum() == 27 and not v.present[10:13].any()
    assert np.isnan(v.box[10:13]).all() and np.isnan(v.score[10:13]).all()
    assert v.stats["track_share"] == 0.9


def test_track_lost_for_too_many_frames_is_inconsistent():
    lost = {f"f{i}": [] for i in (10, 11, 12, 13)}  # 26/30 < 0.9
    v = evaluate_people(clip(**lost), W, H)
    assert v.rule == INCONSISTENT and v.stats["track_frames"] == 26


def test_identity_switch_is_inconsistent_even_with_a_box_in_every_frame():
    frames = clip(**{f"f{i}": [person(tid=2)] for i in range(15, T)})
    v = evaluate_people(frames, W, H)
    assert v.rule == INCONSISTENT
    assert v.stats["num_tracks"] == 2 and v.stats["track_share"] == 0.5
    assert v.stats["frames_with_person"] == T


def test_detections_the_tracker_never_kept_are_inconsistent():
    v = evaluate_people(clip(**{f"f{i}": [person(tid=-1)] for i in range(T)}), W, H)
    assert v.rule == INCONSISTENT and v.track_id == -1


# ---- prominence: mean height strictly above 40%


def test_mean_height_exactly_forty_percent_is_small():
    h = 250  # a height where 0.4 * H is exact in binary: 100 px
    box = (200.0, 50.0, 300.0, 150.0)
    v = evaluate_people(seq(*[[person(box)]] * T), W, h)
    assert v.stats["mean_height_ratio"] == 0.4
    assert v.rule == SMALL


def test_mean_height_just_above_forty_percent_passes():
    box = (200.0, 50.0, 300.0, 150.25)
    assert evaluate_people(seq(*[[person(box)]] * T), W, 250).kept


def test_prominence_uses_the_mean_over_frames():
    tall, short = (200.0, 20.0, 300.0, 200.0), (200.0, 20.0, 300.0, 60.0)  # 180 and 40 px
    # mean 110 px of 294 = 0.374 -> small, though half the frames are tall
    frames = seq(*([[person(tall)]] * 15 + [[person(short)]] * 15))
    v = evaluate_people(frames, W, H)
    assert v.rule == SMALL and v.stats["mean_height_ratio"] == pytest.approx(110 / 294, abs=1e-6)


# ---- truncation


@pytest.mark.parametrize(
    "box, truncated",
    [
        ((0.0, 40.0, 100.0, 260.0), True),  # left edge on the border
        ((200.0, 40.0, 518.0, 260.0), True),  # right edge on the border
        ((200.0, 40.0, 300.0, 294.0), True),  # bottom edge on the border
        ((200.0, 0.0, 300.0, 260.0), True),  # top edge on the border
        ((200.0, 40.0, 517.5, 260.0), True),  # half a pixel short of the border
        ((200.0, 40.0, 517.0, 260.0), False),  # one whole pixel away
        ((1.0, 1.0, 517.0, 293.0), False),  # one pixel away on every side
    ],
)
def test_border_margin_edges(box, truncated):
    v = evaluate_people(seq(*[[person(box)]] * T), W, H)
    assert (v.rule == TRUNCATED) is truncated, v.detail


def test_touching_the_border_in_one_frame_truncates():
    v = evaluate_people(clip(f29=[person((200.0, 40.0, 300.0, 294.0))]), W, H)
    assert v.rule == TRUNCATED and v.stats["truncated_frames"] == 1
    assert v.stats["min_border_gap_px"] == 0.0


def test_a_wider_margin_truncates_earlier():
    box = (3.0, 40.0, 100.0, 260.0)
    assert evaluate_people(seq(*[[person(box)]] * T), W, H).kept
    v = evaluate_people(seq(*[[person(box)]] * T), W, H, PeopleFilterParams(border_margin_px=4.0))
    assert v.rule == TRUNCATED


# ---- overlap


def test_overlap_in_one_frame_is_occluded():
    other = (290.0, 40.0, 350.0, 200.0)  # 10 px into GOOD
    v = evaluate_people(clip(f12=[person(), person(other, 0.7, 2)]), W, H)
    assert v.rule == OCCLUDED and v.stats["overlap_frames"] == 1
    assert v.stats["max_overlap_iou"] > 0


def test_boxes_that_only_share_an_edge_do_not_overlap():
    other = (300.0, 40.0, 350.0, 200.0)  # x1 == GOOD's x2: zero-area intersection
    v = evaluate_people(clip(f12=[person(), person(other, 0.7, 2)]), W, H)
    assert v.kept and v.stats["max_overlap_iou"] == 0.0


def test_overlap_with_a_low_score_box_is_ignored():
    other = (250.0, 40.0, 350.0, 200.0)
    v = evaluate_people(clip(f12=[person(), person(other, 0.2, 2)]), W, H)
    assert v.kept


def test_overlap_tolerance_is_a_parameter():
    other = (290.0, 40.0, 350.0, 200.0)
    frames = clip(f12=[person(), person(other, 0.7, 2)])
    assert evaluate_people(frames, W, H, PeopleFilterParams(max_overlap_iou=0.2)).kept


# ---- rule order and misc


def test_rules_are_checked_in_the_documented_order():
    # small and truncated and occluded at once: small is reported (prominence before truncation)
    small_at_border = (0.0, 100.0, 40.0, 150.0)
    v = evaluate_people(seq(*[[person(small_at_border)]] * T), W, H)
    assert v.rule == SMALL
    assert v.stats["truncated_frames"] == T  # still measured


def test_main_track_is_the_most_present_one():
    frames = clip(**{f"f{i}": [person(tid=7)] for i in range(3)})  # id 7 for 3 frames, id 1 for 27
    v = evaluate_people(frames, W, H)
    assert v.track_id == 1 and v.present.sum() == 27 and v.rule is None


def test_frame_detections_checks_lengths():
    with pytest.raises(ValueError):
        FrameDetections.make([[0, 0, 1, 1]], [0.5, 0.6])
