"""shots: streaming shot-cut detection (PySceneDetect's ContentDetector) and clip-window planning."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import ContentDetector

from shards.schema import WINDOW_FPS, WINDOW_FRAMES, WINDOW_SECONDS

# Shot detection runs on frames downscaled to this width: cuts are global changes, and it makes the
# detector's cost independent of the source resolution (PySceneDetect's own auto-downscale does the same).
DETECT_WIDTH = 256


@dataclass(frozen=True)
class ShotParams:
    threshold: float = 27.0  # ContentDetector's default
    min_scene_len_s: float = 0.5
    detect_width: int = DETECT_WIDTH


@dataclass(frozen=True)
class WindowParams:
    seconds: float = WINDOW_SECONDS
    fps: float = WINDOW_FPS
    frames: int = WINDOW_FRAMES
    stride_s: float | None = None  # None: back-to-back windows
    # Farthest a sampled frame may lie from its target time. The default, half the sampling interval,
    # means each frame is nearer its own target than any neighbour's: a hole in the video (variable frame
    # rate, dropped frames) or a source slower than `fps` repeats frames and is rejected as `frame_gap`.
    max_frame_offset_s: float | None = None

    @property
    def stride(self) -> float:
        return self.stride_s if self.stride_s is not None else self.seconds

    @property
    def frame_offset_bound_s(self) -> float:
        return self.max_frame_offset_s if self.max_frame_offset_s is not None else 0.5 / self.fps

    def frame_offsets(self) -> np.ndarray:
        return np.arange(self.frames, dtype=np.float64) / self.fps


def plan_windows(span_start_s: float, span_end_s: float, params: WindowParams) -> list[tuple[float, float]]:
    """Windows [start, start + seconds) inside the span, `stride` apart; a partial tail is dropped."""
    if params.stride <= 0:
        raise ValueError("window stride must be positive")
    windows = []
    # Work in integer milliseconds so keys and window edges never drift by float error.
    start_ms, end_ms = round(span_start_s * 1000), round(span_end_s * 1000)
    length_ms, stride_ms = round(params.seconds * 1000), round(params.stride * 1000)
    t = start_ms
    while t + length_ms <= end_ms:
        windows.append((t / 1000, (t + length_ms) / 1000))
        t += stride_ms
    return windows


def cut_inside(window: tuple[float, float], cuts_s: list[float], tolerance_s: float = 1e-3) -> float | None:
    """The first cut strictly inside the window (a cut on an edge starts or ends it cleanly)."""
    start, end = window
    for c in cuts_s:
        if start + tolerance_s < c < end - tolerance_s:
            return c
    return None


class StreamingCutDetector:
    """Feed frames in order; cut times (seconds, the first frame of the new shot) come out as they are
    decided. `lag_s` bounds how late a cut can be reported after its frame (PySceneDetect's merge filter)."""

    def __init__(self, fps: float, params: ShotParams = ShotParams()):
        self.fps = fps
        self.params = params
        self._detector = ContentDetector(threshold=params.threshold, min_scene_len=params.min_scene_len_s)
        self._times: dict[int, float] = {}
        self._n = 0
        self.cuts_s: list[float] = []
        self.lag_s = params.min_scene_len_s + 2.0 / max(fps, 1.0)

    def push(self, frame_bgr_small: np.ndarray, time_s: float) -> list[float]:
        tc = FrameTimecode(self._n, fps=self.fps)
        self._times[self._n] = time_s
        self._n += 1
        found = [self._time_of(c) for c in self._detector.process_frame(tc, frame_bgr_small)]
        self._forget_old()
        self.cuts_s.extend(found)
        return found

    def finish(self) -> list[float]:
        if self._n == 0:
            return []
        found = [self._time_of(c) for c in self._detector.post_process(FrameTimecode(self._n - 1, fps=self.fps))]
        self.cuts_s.extend(found)
        return found

    def _time_of(self, tc: FrameTimecode) -> float:
        n = tc.frame_num
        return self._times.get(n, n / self.fps)

    def _forget_old(self) -> None:
        keep = int(self._detector.event_buffer_length) + 4
        old = self._n - keep - 1
        if old in self._times:
            del self._times[old]
