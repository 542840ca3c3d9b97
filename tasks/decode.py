"""decode: one pass over the requested span feeds both the shot detector and the window sampler.

Every frame is decoded once; each is downscaled (swscale, in C) for the cut detector, and the frames
nearest to the windows' 6 fps sample times are also scaled to the model's input size. Windows are
emitted as soon as the detector can no longer report a cut inside them, so memory stays bounded by
one window plus the detector's look-back, whatever the video's length.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import av
import numpy as np

from shards.schema import MODEL_LONG_SIDE, MODEL_SHORT_SIDE, STATUS_ERROR, STATUS_OK, STATUS_REJECTED
from tasks.probe import VideoInfo, stream_start_s
from tasks.shots import ShotParams, StreamingCutDetector, WindowParams, cut_inside, plan_windows


@dataclass(frozen=True)
class FrameGeometry:
    """How a source frame becomes a model frame: rotate upright, scale to cover, centre-crop.

    Portrait sources (taller than wide once upright) keep their orientation: 294x518 (W x H), the
    same 14-px patch grid transposed, rather than a landscape crop that would cut the person off.
    Model pixel (x, y) maps to upright source pixel ((x + crop_x) / scale, (y + crop_y) / scale).
    """

    src_width: int  # upright (display) size
    src_height: int
    rotation: int
    out_width: int
    out_height: int
    scale: float
    crop_x: int
    crop_y: int

    @property
    def scaled_size(self) -> tuple[int, int]:
        return round(self.src_width * self.scale), round(self.src_height * self.scale)

    def to_dict(self) -> dict:
        return asdict(self)


def frame_geometry(info: VideoInfo, long_side: int = MODEL_LONG_SIDE, short_side: int = MODEL_SHORT_SIDE) -> FrameGeometry:
    w, h = info.display_size
    return geometry_for_size(w, h, info.rotation, long_side, short_side)


def geometry_for_size(w: int, h: int, rotation: int = 0, long_side: int = MODEL_LONG_SIDE,
                      short_side: int = MODEL_SHORT_SIDE) -> FrameGeometry:
    """The geometry of an upright source frame of w x h pixels (`rotation`: what turned it upright, recorded)."""
    out_w, out_h = (long_side, short_side) if w >= h else (short_side, long_side)
    scale = max(out_w / w, out_h / h)
    sw, sh = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    return FrameGeometry(w, h, rotation, out_w, out_h, scale, (sw - out_w) // 2, (sh - out_h) // 2)


def to_model_frame(frame: av.VideoFrame, geom: FrameGeometry) -> np.ndarray:
    sw, sh = geom.scaled_size
    sw, sh = max(sw, geom.out_width), max(sh, geom.out_height)
    k = (geom.rotation // 90) % 4
    # Scale before rotating (in the stored orientation), so the resize runs in swscale.
    tw, th = (sh, sw) if k % 2 else (sw, sh)
    rgb = frame.to_ndarray(format="rgb24", width=tw, height=th, interpolation="AREA")
    if k:
        rgb = np.rot90(rgb, k)
    return np.ascontiguousarray(rgb[geom.crop_y : geom.crop_y + geom.out_height, geom.crop_x : geom.crop_x + geom.out_width])


@dataclass
class WindowOutcome:
    start_s: float  # source time
    end_s: float
    status: str
    reason: str = ""
    message: str = ""
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8, only when status is ok
    frame_times_s: np.ndarray | None = None  # source time of each chosen frame
    stats: dict = field(default_factory=dict)


@dataclass
class SegmentReport:
    cuts_s: list[float]
    frames_decoded: int
    n_windows: int
    decode_error: str = ""


@dataclass
class _PendingWindow:
    start_s: float
    end_s: float
    targets: np.ndarray  # source times wanted
    frames: list[np.ndarray | None]
    times: list[float]


def segment_video(
    info: VideoInfo,
    section_start_s: float,
    span_s: tuple[float | None, float | None],
    on_window: Callable[[WindowOutcome], None],
    windows: WindowParams = WindowParams(),
    shots: ShotParams = ShotParams(),
    geometry: FrameGeometry | None = None,
) -> SegmentReport:
    """Decode the span once; call `on_window` for each planned window, in order, as it is decided.

    Times are source times; the file's t=0 is `section_start_s` (a downloaded section).
    """
    geom = geometry or frame_geometry(info)
    file_end_s = section_start_s + info.duration_s
    span_start = section_start_s if span_s[0] is None else span_s[0]
    span_end = file_end_s if span_s[1] is None else min(span_s[1], file_end_s)
    planned = plan_windows(span_start, span_end, windows)
    report = SegmentReport(cuts_s=[], frames_decoded=0, n_windows=len(planned))
    if not planned:
        return report

    offsets = windows.frame_offsets()
    pending = [
        _PendingWindow(s, e, s + offsets, [None] * windows.frames, [float("nan")] * windows.frames)
        for s, e in planned
    ]
    detector = StreamingCutDetector(info.fps, shots)
    detect_w = min(shots.detect_width, info.width)
    detect_h = max(2, round(info.height * detect_w / info.width / 2) * 2)
    half_frame = 0.5 / info.fps
    next_emit = 0

    def emit_ready(now_s: float, final: bool) -> None:
        nonlocal next_emit
        while next_emit < len(pending):
            w = pending[next_emit]
            if not final and now_s < w.end_s + detector.lag_s:
                return
            on_window(_decide(w, detector.cuts_s, report.decode_error, windows.frame_offset_bound_s))
            pending[next_emit] = None  # type: ignore[call-overload]  # free its frames
            next_emit += 1

    container = av.open(info.path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = stream_start_s(stream)
        seek_to = span_start - section_start_s - 1.0
        if seek_to > 0:
            container.seek(int(seek_to / stream.time_base) + (stream.start_time or 0), stream=stream, backward=True)
        prev: tuple[float, av.VideoFrame] | None = None
        cache: dict[int, np.ndarray] = {}  # id of the frame object last converted -> model frame
        first_open = 0  # index of the first window that still wants frames
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = section_start_s + float(frame.pts * stream.time_base) - t0
                if t < span_start - half_frame:
                    prev = (t, frame)
                    continue
                if t > span_end + 1.0 + detector.lag_s:
                    break
                report.frames_decoded += 1
                small = frame.to_ndarray(format="bgr24", width=detect_w, height=detect_h, interpolation="FAST_BILINEAR")
                detector.push(small, t)
                # Fill every target time whose nearest frame is now known (prev or this one).
                for wi in range(first_open, len(pending)):
                    w = pending[wi]
                    if w is None or w.start_s > t + 1.0:
                        break
                    for k, target in enumerate(w.targets):
                        if w.frames[k] is not None or target > t:
                            continue
                        use_prev = prev is not None and abs(prev[0] - target) < abs(t - target)
                        src_t, src = prev if use_prev else (t, frame)  # type: ignore[misc]
                        key = id(src)
                        if key not in cache:
                            cache.clear()
                            cache[key] = to_model_frame(src, geom)
                        w.frames[k] = cache[key]
                        w.times[k] = src_t
                while first_open < len(pending) and (pending[first_open] is None or pending[first_open].frames[-1] is not None):
                    first_open += 1
                prev = (t, frame)
                emit_ready(t, final=False)
        except av.error.FFmpegError as e:
            report.decode_error = f"decoding stopped after {report.frames_decoded} frames: {e}"
        # The last target of a window may sit after the last frame: the last frame is then nearest.
        if prev is not None and not report.decode_error:
            for w in pending[first_open:]:
                if w is None:
                    continue
                for k, target in enumerate(w.targets):
                    if w.frames[k] is None and target - prev[0] <= 1.0 / windows.fps:
                        w.frames[k] = to_model_frame(prev[1], geom)
                        w.times[k] = prev[0]
        detector.finish()
        emit_ready(float("inf"), final=True)
    finally:
        container.close()
    report.cuts_s = list(detector.cuts_s)
    return report


def _decide(w: _PendingWindow, cuts_s: list[float], decode_error: str, max_offset_s: float) -> WindowOutcome:
    cut = cut_inside((w.start_s, w.end_s), cuts_s)
    if cut is not None:
        return WindowOutcome(w.start_s, w.end_s, STATUS_REJECTED, "cut", f"shot cut at {cut:.3f} s", stats={"cut_s": cut})
    missing = sum(f is None for f in w.frames)
    if missing:
        if decode_error:
            return WindowOutcome(w.start_s, w.end_s, STATUS_ERROR, "decode", decode_error)
        return WindowOutcome(
            w.start_s, w.end_s, STATUS_REJECTED, "short", f"{missing} of {len(w.frames)} frames past the end of the video"
        )
    times = np.asarray(w.times)
    offsets = np.abs(times - w.targets)
    jitter = float(np.max(offsets))
    if jitter > max_offset_s:
        worst = int(np.argmax(offsets))
        return WindowOutcome(
            w.start_s, w.end_s, STATUS_REJECTED, "frame_gap",
            f"frame {worst} is {jitter:.3f} s from its sample time {w.targets[worst]:.3f} s (bound {max_offset_s:.3f} s):"
            " the video has a hole there (variable frame rate or dropped frames)",
            stats={"max_sample_offset_s": jitter, "bound_s": max_offset_s})
    return WindowOutcome(
        w.start_s, w.end_s, STATUS_OK, frames=np.stack(w.frames), frame_times_s=times, stats={"max_sample_offset_s": jitter}
    )


def iter_outcomes(*args, **kwargs) -> Iterator[WindowOutcome]:
    """`segment_video` as a list-returning convenience for tests and benchmarks (holds all frames)."""
    out: list[WindowOutcome] = []
    segment_video(*args, on_window=out.append, **kwargs)
    return iter(out)
