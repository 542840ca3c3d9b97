"""fetch: yt-dlp as a library for YouTube IDs and URLs; local paths are used in place.

Only the requested section (padded) is downloaded, cut exactly so that the file's t=0 is
`section_start_s` of the source. Errors are classified permanent (no retry) or transient (retried
by the flow with back-off, and the host is backed off for every worker of the process).
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
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

_PERMANENT = re.compile(
    r"HTTP Error (400|401|403|404|410|451)|Video unavailable|This video is (private|unavailable|no longer)"
    r"|Private video|has been removed|account associated with this video has been terminated"
    r"|copyright|Unsupported URL|is not a valid URL|No video formats found|Requested format is not available"
    r"|members-only|age-restricted|Incomplete YouTube ID",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"HTTP Error (408|425|429|5\d\d)|Too Many Requests|timed? ?out|Connection (reset|refused|aborted)"
    r"|Remote end closed|IncompleteRead|Temporary failure|Name or service not known|Sign in to confirm"
    r"|not a bot|rate.?limit|Network is unreachable|EOF occurred|ConnectionResetError|ssl",
    re.IGNORECASE,
)


class FetchError(Exception):
    reason = "fetch"
    transient = False

    def __init__(self, source: str, message: str):
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class PermanentFetchError(FetchError):
    reason = "unavailable"


class TransientFetchError(FetchError):
    reason = "fetch_transient"
    transient = True


def classify_download_error(source: str, message: str) -> FetchError:
    """Permanent beats transient when both match (a 404 page that mentions a timeout is still a 404)."""
    if _PERMANENT.search(message):
        return PermanentFetchError(source, message)
    if _TRANSIENT.search(message):
        return TransientFetchError(source, message)
    return TransientFetchError(source, message)  # unknown: worth a bounded number of retries


@dataclass(frozen=True)
class Fetched:
    path: str
    section_start_s: float  # source time of the file's t=0
    downloaded: bool


class HostBackoff:
    """Per-host cool-down shared by all workers of this process: one 429 slows every fetch to that host."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        with self._lock:
            until = self._until.get(host, 0.0)
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def penalise(self, host: str, seconds: float) -> None:
        with self._lock:
            self._until[host] = max(self._until.get(host, 0.0), time.monotonic() + seconds)


HOST_BACKOFF = HostBackoff()


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


def fetch_source(
    row: ManifestRow,
    downloads: Path,
    pad_s: float = SECTION_PAD_S,
    backoff_s: float = 30.0,
    cookies: str | None = None,
    proxy: str | None = None,
) -> Fetched:
    """Return the local video for a manifest row, downloading it once."""
    if row.kind == "path":
        if not Path(row.source).is_file():
            raise PermanentFetchError(row.source, "local file does not exist")
        return Fetched(row.source, 0.0, False)

    final = download_path(downloads, row)
    start, end = section_for(row, pad_s)
    if final.exists():
        return Fetched(str(final), start, False)

    import yt_dlp  # heavy import, only where needed
    from yt_dlp.utils import DownloadError, download_range_func

    url = _url_for(row)
    host = urlparse(url).hostname or "local"
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
        "socket_timeout": 20,
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

    HOST_BACKOFF.wait(host)
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            ydl.download([url])
    except DownloadError as e:
        err = classify_download_error(row.source, _clean(str(e)))
        if err.transient:
            HOST_BACKOFF.penalise(host, backoff_s)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise err from None
    produced = sorted(p for p in tmp_dir.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl")))
    if not produced:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise TransientFetchError(row.source, "yt-dlp finished without producing a file")
    os.replace(produced[0], final)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return Fetched(str(final), start if "download_ranges" in opts else 0.0, True)


def _clean(message: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", message).replace("ERROR: ", "").strip()


def fetched_to_dict(f: Fetched) -> dict:
    return asdict(f)
