"""Withdrawn videos: the IDs file a takedown reads, and the blocklist a run keeps so that no later curation or
relabel brings a withdrawn video back.

`<run>/blocklist.json` holds sha256 digests of every token that names a withdrawn video (the requested ID or
URL, the source ids and sources it matched), never the tokens themselves: a takedown's own check scans every
file of the run for the videos' ids, and the blocklist must pass it too. A token is blocked when its digest is
listed; `unish curate` records a blocked manifest row as `rejected:withdrawn` without its source or id, and
`unish relabel` skips blocked clips.

IDs file: UTF-8 text, one token per line: a source id (`[A-Za-z0-9_-]`, as in clip keys; an 11-character
YouTube ID is one), an http(s) URL (a YouTube watch/short/youtu.be URL also names its 11-character ID), or a
path relative to a manifest (as runs record local files). Blank lines and `#` comments are ignored.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from shards.atomic import write_bytes_atomic
from shards.schema import STATUS_REJECTED

BLOCKLIST_FILE = "blocklist.json"
WITHDRAWN = "withdrawn"  # the rule of a refused manifest row: rejected:withdrawn
WITHDRAWN_MESSAGE = ("withdrawn by a takedown (unish takedown; the run's blocklist.json): not fetched, and its "
                     "source and id are not recorded")

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_URL = re.compile(r"^https?://[^\s\"'<>\\`]+$", re.IGNORECASE)
_REL_PATH = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9_][A-Za-z0-9_. /-]*$")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_COMMENT = re.compile(r"(?:^|\s)#")
_YOUTUBE_IN_URL = re.compile(
    r"^https?://(?:www\.|m\.)?(?:youtube\.com/(?:watch\?(?:.*&)?v=|shorts/|embed/|live/)|youtu\.be/)"
    r"([A-Za-z0-9_-]{11})(?![A-Za-z0-9_-])", re.IGNORECASE)


class IdsFileError(ValueError):
    """The IDs file is missing, unreadable or has a line that names no video (the message says which)."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def youtube_id_of(token: str) -> str | None:
    """The 11-character ID a YouTube URL names, or None."""
    m = _YOUTUBE_IN_URL.match(token)
    return m.group(1) if m else None


def check_token(token: str) -> str:
    """The token if it can name a video (an id, a URL, a relative path), else ValueError saying why."""
    if _ID.match(token) or _URL.match(token):
        return token
    if _REL_PATH.match(token) and not token.endswith(" ") and ("/" in token or _SUFFIX.search(token)):
        return token
    if token.startswith("/"):
        raise ValueError(f"{token!r} is an absolute path: runs record local files relative to their manifest")
    raise ValueError(f"{token!r} is not a video ID ([A-Za-z0-9_-], at most 64 characters), an http(s) URL "
                     f"or a relative path")


def parse_ids(text: str, where: str = "IDs file") -> list[str]:
    """The tokens of an IDs file's text, in order, without repeats; IdsFileError names the line at fault."""
    tokens: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        token = _COMMENT.split(line, 1)[0].strip()  # a URL's own `#fragment` has no space before it
        if not token:
            continue
        try:
            check_token(token)
        except ValueError as e:
            raise IdsFileError(f"{where} line {lineno}: {e}") from None
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    if not tokens:
        raise IdsFileError(f"{where} lists no video IDs (one ID or URL per line; # starts a comment)")
    return tokens


def read_ids_file(path: Path | str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise IdsFileError(f"IDs file {path} does not exist or is not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise IdsFileError(f"IDs file {path} is not UTF-8 text (byte {e.start}): one ID or URL per line") from None
    except OSError as e:
        raise IdsFileError(f"IDs file {path} cannot be read: {e.strerror or e}") from None
    if "\0" in text:
        raise IdsFileError(f"IDs file {path} is binary, not text: one ID or URL per line")
    return parse_ids(text, f"IDs file {path}")


def expand_tokens(tokens: Iterable[str]) -> list[str]:
    """The tokens plus the YouTube IDs their URLs name (a video listed by URL is also blocked by ID)."""
    out: list[str] = []
    for t in tokens:
        for x in (t, youtube_id_of(t)):
            if x and x not in out:
                out.append(x)
    return out


# ------------------------------------------------------------------------------------------ the blocklist


@dataclass(frozen=True)
class Blocklist:
    digests: frozenset[str] = frozenset()

    def blocks(self, *tokens: str | None) -> bool:
        return any(t and digest(t) in self.digests for t in tokens)

    def with_tokens(self, tokens: Iterable[str]) -> "Blocklist":
        return Blocklist(self.digests | {digest(t) for t in tokens if t})

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "sha256": sorted(self.digests),
                "about": "sha256 of the ids, URLs and sources of withdrawn videos (unish takedown)"}


def read_blocklist(run_dir: Path) -> Blocklist:
    """The run's blocklist (empty when it has none); a damaged file is an error, never an empty list."""
    path = Path(run_dir) / BLOCKLIST_FILE
    if not path.exists():
        return Blocklist()
    try:
        data = json.loads(path.read_text())
        digests = frozenset(str(d) for d in data["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); restore it from a backup or rerun the takedowns") from None
    return Blocklist(digests)


def write_blocklist(run_dir: Path, blocklist: Blocklist) -> bool:
    """Write the blocklist (atomically) if it changed; returns whether it wrote."""
    path = Path(run_dir) / BLOCKLIST_FILE
    data = json.dumps(blocklist.to_json(), sort_keys=True, indent=1).encode()
    if path.exists() and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True


def withdrawn_video_row(row: int) -> dict[str, Any]:
    """The videos-table row of a withdrawn manifest row: its number and fate, nothing that names the video.
    The same row whether a takedown replaced the video's row or a later curation refused the manifest row."""
    return {"source": "", "source_id": "", "row": row, "status": STATUS_REJECTED, "reason": WITHDRAWN,
            "message": WITHDRAWN_MESSAGE, "path": ""}


def skip_withdrawn(run_dir: Path, samples: Iterable[Any]) -> Iterator[Any]:
    """The samples (ClipSample, or anything with `key` and `meta`) whose video is not on the run's blocklist."""
    blocklist = read_blocklist(run_dir)
    for sample in samples:
        meta = getattr(sample, "meta", {}) or {}
        if blocklist.digests and blocklist.blocks(meta.get("source_id"), meta.get("source"), sample.key):
            continue
        yield sample


__all__ = ["BLOCKLIST_FILE", "Blocklist", "IdsFileError", "WITHDRAWN", "WITHDRAWN_MESSAGE", "check_token", "digest",
           "expand_tokens", "parse_ids", "read_blocklist", "read_ids_file", "skip_withdrawn", "withdrawn_video_row",
           "write_blocklist", "youtube_id_of"]
