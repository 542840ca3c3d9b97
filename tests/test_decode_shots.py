import numpy as np
import pytest

from tasks.decode import frame_geometry, segment_video
from tasks.probe import TruncatedVideo, UnreadableVideo, probe_video
from tasks.shots import WindowParams, cut_inside, plan_windows


def outcomes(path, span=(None, None), section_start=0.0, **kw):
    info = probe_video(path)
    out = []
    report = segment_video(info, section_start, span, out.append, **kw)
    return info, report, out


def test_plan_windows_back_to_back_and_strided():
    assert plan_windows(0, 12, WindowParams()) == [(0, 5), (5, 10)]
    assert plan_windows(1.0, 8.0, WindowParams(stride_s=1.0)) == [(1, 6), (2, 7), (3, 8)]
    assert plan_windows(0, 4.99, WindowParams()) == []


def test_cut_inside_is_strict_at_the_edges():
    assert cut_inside((0, 5), [5.0]) is None
    assert cut_inside((5, 10), [5.0]) is None
    assert cut_inside((0, 5), [4.0]) == 4.0


def test_real_cut_rejects_the_window_that_crosses_it(synthetic_videos):
    info, report, out = outcomes(synthetic_videos["cut"])
    assert len(report.cuts_s) == 1 and abs(report.cuts_s[0] - 4.0) < 0.05
    assert [(o.start_s, o.status, o.reason) for o in out] == [(0.0, "rejected", "cut"), (5.0, "ok", "")]
    ok = out[1]
    assert ok.frames.shape == (30, 294, 518, 3) and ok.frames.dtype == np.uint8
    # 6 fps sampling from a 30 fps source: every chosen frame within half a source frame of its target.
    np.testing.assert_allclose(ok.frame_times_s, 5.0 + np.arange(30) / 6, atol=0.5 / 30 + 1e-6)


def test_frames_are_the_content_at_their_time(synthetic_videos):
    # Before the cut the picture is testsrc2, after it the Mandelbrot set: very different mean colour.
    _, _, out = outcomes(synthetic_videos["cut"], windows=WindowParams(seconds=2.0, frames=12))
    by_start = {o.start_s: o for o in out}
    assert by_start[4.0].status == "ok" and by_start[2.0].status == "ok"
    a, b = by_start[2.0].frames.mean(), by_start[6.0].frames.mean()
    assert abs(a - b) > 10


def test_requested_span_and_section_offset(synthetic_videos):
    # The file starts at source time 100 s (a downloaded section); ask for 105..110.
    _, _, out = outcomes(synthetic_videos["cut"], span=(105.0, 110.0), section_start=100.0)
    assert [(o.start_s, o.end_s, o.status) for o in out] == [(105.0, 110.0, "ok")]
    assert out[0].frame_times_s[0] == pytest.approx(105.0, abs=0.02)


def test_rotation_gives_upright_portrait_frames(synthetic_videos):
    info, _, out = outcomes(synthetic_videos["rotated"])
    assert info.rotation in (90, 270)
    geom = frame_geometry(info)
    assert (geom.out_width, geom.out_height) == (294, 518)
    assert out[1].frames.shape == (30, 518, 294, 3)


def test_geometry_maps_model_pixels_back_to_source():
    from tasks.probe import VideoInfo

    info = VideoInfo("x", 10, 30, 1920, 1080, "h264", 0, 300)
    g = frame_geometry(info)
    assert (g.out_width, g.out_height) == (518, 294)
    # Model (0, 0) is source ((0 + crop_x) / scale, (0 + crop_y) / scale); the crop keeps the centre.
    cx = (g.out_width / 2 + g.crop_x) / g.scale
    cy = (g.out_height / 2 + g.crop_y) / g.scale
    assert cx == pytest.approx(960, abs=2) and cy == pytest.approx(540, abs=2)


@pytest.mark.parametrize("name,needle", [
    ("zero_bytes", "empty file"), ("truncated", ""), ("text", "cannot open"), ("audio_only", "no video stream"),
])
def test_bad_files_are_unreadable_with_the_decoders_message(bad_videos, name, needle):
    with pytest.raises(UnreadableVideo) as e:
        probe_video(bad_videos[name])
    assert str(bad_videos[name]) in str(e.value)
    assert needle in e.value.message


def test_a_hole_in_the_video_rejects_the_windows_it_falls_in(synthetic_videos):
    _, _, out = outcomes(synthetic_videos["gap"])
    assert [(o.start_s, o.status, o.reason) for o in out] == [(0.0, "rejected", "frame_gap"),
                                                             (5.0, "rejected", "frame_gap")]
    assert out[0].stats["max_sample_offset_s"] > 1.0 and out[0].stats["bound_s"] == pytest.approx(0.5 / 6)
    assert "hole" in out[0].message
    # After the hole the frames are back at 25 fps: the window is fine, every frame near its time.
    _, _, after = outcomes(synthetic_videos["gap"], span=(6.5, None))
    assert [o.status for o in after] == ["ok"] and after[0].stats["max_sample_offset_s"] <= 0.5 / 25 + 1e-6
    # The bound is a parameter: a loose one lets the repeated frames through.
    _, _, loose = outcomes(synthetic_videos["gap"], windows=WindowParams(max_frame_offset_s=2.0))
    assert [o.status for o in loose] == ["ok", "ok"]


def test_a_file_cut_short_behind_its_index_is_truncated(bad_videos):
    with pytest.raises(TruncatedVideo) as e:
        probe_video(bad_videos["truncated_front_index"])
    assert e.value.reason == "truncated" and e.value.stated_s == pytest.approx(20.0)
    assert 3.0 < e.value.data_end_s < 15.0  # 40% of the bytes: well inside the stated 20 s
    assert "container states" in e.value.message
