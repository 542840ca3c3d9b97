"""probe: what a video file is, or a clear `unreadable` error with the decoder's message."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import av


class UnreadableVideo(Exception):
    reason = "unreadable"

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class TruncatedVideo(UnreadableVideo):
    """The container promises more than the file holds (a cut copy or download with its index in front)."""

    reason = "truncated"

    def __init__(self, path: str, data_end_s: float, stated_s: float):
        super().__init__(path, f"the file's data ends at {data_end_s:.2f} s of the {stated_s:.2f} s its container "
                               f"states (cut short: an interrupted copy or download)")
        self.data_end_s = data_end_s
        self.stated_s = stated_s


# A file counts as truncated when its packets end this much before the duration its container states:
# more than container rounding and a missing last frame or two, far less than a lost window.
TRUNCATION_SLACK_S = 0.5


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration_s: float
    fps: float
    width: int  # stored (coded) size, before rotation
    height: int
    codec: str
    rotation: int  # degrees; np.rot90(frame, rotation // 90) shows it upright
    n_frames: int  # as the container states (0 if unknown)

    @property
    def display_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)

    def to_dict(self) -> dict:
        return asdict(self)


def stream_start_s(stream: av.video.stream.VideoStream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def packets_end_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                  check_from_s: float) -> float:
    """The end time of the last packet the file really holds, relative to the stream's start. Reads only
    from a seek near `check_from_s` when the data is there (demuxing, no decoding), else the whole file."""
    t0 = stream_start_s(stream)
    base = stream.start_time or 0

    def scan() -> float:
        end = float("-inf")
        try:
            for packet in container.demux(stream):
                if packet.pts is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * stream.time_base) - t0)
        except (av.error.FFmpegError, EOFError):
            pass  # the data stops: what was read is what the file holds
        return end

    if check_from_s > 0:
        try:
            container.seek(int(check_from_s / stream.time_base) + base, stream=stream, backward=True)
            end = scan()
            if end > check_from_s:
                return end
        except av.error.FFmpegError:
            pass
    container.seek(base, stream=stream, backward=True)
    return max(scan(), 0.0)


def probe_video(path: str | Path) -> VideoInfo:
    path = str(path)
    if not Path(path).is_file():
        raise UnreadableVideo(path, "no such file")
    if Path(path).stat().st_size == 0:
        raise UnreadableVideo(path, "empty file (0 bytes)")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise UnreadableVideo(path, f"cannot open container: {e}") from None
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise UnreadableVideo(path, f"no video stream (streams: {kinds})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as e:
            raise UnreadableVideo(path, f"first frame does not decode: {e}") from None
        if first is None:
            raise UnreadableVideo(path, "no decodable video frame")
        rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
        if fps <= 0 or duration <= 0:
            raise UnreadableVideo(path, f"no usable frame rate or duration (fps={fps}, duration={duration})")
        data_end = packets_end_s(container, stream, duration - 2.0)
        if data_end < duration - TRUNCATION_SLACK_S - 2.0 / fps:
            raise TruncatedVideo(path, data_end, duration)
        return VideoInfo(
            path=path,
            duration_s=duration,
            fps=fps,
            width=first.width,
            height=first.height,
            codec=stream.codec_context.name,
            rotation=rotation,
            n_frames=int(stream.frames or 0),
        )
