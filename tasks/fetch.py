"""fetch: yt-dlp as a library for YouTube IDs and URLs; local paths are used in place.

Only the requested section (padded) is downloaded, cut exactly so that the file's t=0 is
`section_start_s` of the source. Errors are classified from what they say (`ERROR_CLASSES`): permanent
ones are recorded, transient ones go back to the flow's queue, which retries them later with back-off per
host and port while other videos proceed (`flows/video_queue.py`).
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from tasks.manifest import ManifestRow

SECTION_PAD_S = 2.0
# <= 720p, h264 mp4 preferred; video only (the model needs no audio); fall back to anything <= 720p.
FORMAT = (
    "bv*[height<=720][ext=mp4][vcodec^=avc1]/bv*[height<=720][ext=mp4]/bv*[height<=720]"
    "/b[height<=720]/b"
)


@dataclass(frozen=True)
class ErrorClass:
    reason: str  # the video's `reason` in videos.parquet
    transient: bool  # worth retrying later in the same run (with back-off); permanent ones are not
    pattern: re.Pattern[str]


def _rx(text: str) -> re.Pattern[str]:
    return re.compile(text, re.IGNORECASE)


# First match wins, permanent classes first: a 404 page that mentions a time-out is still a 404.
ERROR_CLASSES: tuple[ErrorClass, ...] = (
    ErrorClass("unavailable", False, _rx(
        r"HTTP Error (404|410)|Video unavailable|This video is (unavailable|no longer available)|has been removed"
        r"|account associated with this video has been terminated|no longer available")),
    ErrorClass("private", False, _rx(r"Private video|This video is private|members-only|Join this channel")),
    ErrorClass("forbidden", False, _rx(
        r"HTTP Error (401|403|451)|age-restricted|confirm your age|copyright|not available in your country"
        r"|blocked it in your country")),
    ErrorClass("unsupported", False, _rx(
        r"Unsupported URL|is not a valid URL|No video formats found|Requested format is not available"
        r"|Incomplete YouTube ID|HTTP Error 400")),
    ErrorClass("rate_limited", True, _rx(r"HTTP Error 429|Too Many Requests|rate.?limit")),
    ErrorClass("bot_check", True, _rx(r"Sign in to confirm you.?re not a bot|not a bot")),
    ErrorClass("server_error", True, _rx(r"HTTP Error (5\d\d|408|425)")),
    ErrorClass("timeout", True, _rx(r"timed? ?out")),
    ErrorClass("network", True, _rx(
        r"Connection (reset|refused|aborted)|Remote end closed|IncompleteRead|Temporary failure in name resolution"
        r"|Name or service not known|Network is unreachable|No route to host|EOF occurred|ConnectionResetError"
        r"|SSL|getaddrinfo failed")),
)
# Nothing matched: not retried in this run (retrying blind only holds up the queue); a rerun tries again.
UNKNOWN_ERROR = ErrorClass("fetch_failed", False, _rx(r"$^"))


class FetchError(Exception):
    reason = "fetch"
    transient = False

    def __init__(self, source: str, message: str, reason: str | None = None, host: str = ""):
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message
        self.host = host  # host:port the error came from (back-off is per host and port)
        if reason:
            self.reason = reason


class PermanentFetchError(FetchError):
    reason = "unavailable"


class TransientFetchError(FetchError):
    reason = "fetch_transient"
    transient = True


def classify_message(message: str) -> ErrorClass:
    return next((c for c in ERROR_CLASSES if c.pattern.search(message)), UNKNOWN_ERROR)


def classify_download_error(source: str, message: str, host: str = "") -> FetchError:
    cls = classify_message(message)
    kind = TransientFetchError if cls.transient else PermanentFetchError
    return kind(source, message, cls.reason, host)


@dataclass(frozen=True)
class Fetched:
    path: str
    section_start_s: float  # source time of the file's t=0
    downloaded: bool


def host_key(url: str) -> str:
    """`host:port` of a URL: the unit of back-off (two servers on one machine are two hosts)."""
    parsed = urlparse(url)
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 0)
    return f"{parsed.hostname or 'local'}:{port}"


def _url_for(row: ManifestRow) -> str:
    if row.kind == "youtube":
        return f"https://www.youtube.com/watch?v={row.source}"
    return row.source


def section_for(row: ManifestRow, pad_s: float = SECTION_PAD_S) -> tuple[float, float | None]:
    start = max(0.0, (row.start_s or 0.0) - pad_s)
    end = None if row.end_s is None else row.end_s + pad_s
    return start, end


def download_path(downloads: Path, row: ManifestRow) -> Path:
    return Path(downloads) / row.source_id / f"{row.span_tag}.mp4"


class _QuietLogger:
    """yt-dlp prints errors itself even when quiet; we raise them classified instead."""

    def debug(self, msg: str) -> None:
        pass

    info = warning = error = debug


def source_host(row: ManifestRow) -> str:
    """The host:port a row downloads from ("" for a local file)."""
    return "" if row.kind == "path" else host_key(_url_for(row))


def fetch_source(
    row: ManifestRow,
    downloads: Path,
    pad_s: float = SECTION_PAD_S,
    timeout_s: float = 20.0,
    cookies: str | None = None,
    proxy: str | None = None,
) -> Fetched:
    """Return the local video for a manifest row, downloading it once. Errors are raised classified, at
    once: retries and back-off belong to the caller's queue, so a failing source never holds a worker."""
    if row.kind == "path":
        path = Path(row.source)
        if path.is_dir():
            raise PermanentFetchError(row.source, "is a folder, not a video file", "not_a_file")
        if not path.is_file():
            raise PermanentFetchError(row.source, "local file does not exist", "missing_file")
        return Fetched(row.source, 0.0, False)

    final = download_path(downloads, row)
    start, end = section_for(row, pad_s)
    if final.exists():
        return Fetched(str(final), start, False)

    import yt_dlp  # heavy import, only where needed
    from yt_dlp.utils import DownloadError, download_range_func

    url = _url_for(row)
    host = host_key(url)
    tmp_dir = final.parent / (final.stem + ".part.d")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    opts: dict = {
        "format": FORMAT,
        "outtmpl": {"default": str(tmp_dir / "video.%(ext)s")},
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": True,
        "retries": 0,  # the flow retries with back-off; yt-dlp's own retries would hide the error class
        "fragment_retries": 0,
        "socket_timeout": timeout_s,
        "merge_output_format": "mp4",
        "overwrites": True,
        "cachedir": False,
        "logger": _QuietLogger(),
    }
    if row.start_s is not None or row.end_s is not None:
        opts["download_ranges"] = download_range_func(None, [(start, end if end is not None else float("inf"))])
        # Re-encode at the cut so the file's first frame is exactly `start` (timestamps stay exact).
        opts["force_keyframes_at_cuts"] = True
    if cookies:
        opts["cookiefile"] = cookies
    if proxy:
        opts["proxy"] = proxy

    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            ydl.download([url])
    except DownloadError as e:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise classify_download_error(row.source, _clean(str(e)), host) from None
    produced = sorted(p for p in tmp_dir.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl")))
    if not produced:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise TransientFetchError(row.source, "yt-dlp finished without producing a file", "fetch_failed", host)
    os.replace(produced[0], final)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return Fetched(str(final), start if "download_ranges" in opts else 0.0, True)


def _clean(message: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", message).replace("ERROR: ", "").strip()


def fetched_to_dict(f: Fetched) -> dict:
    return asdict(f)
