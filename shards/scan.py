"""The byte scan that proves a takedown: no file under a folder holds a key, an id, a source or a byte sequence
of the withdrawn videos, in its content or in its name.

Needles:
  key     a clip key (`{source_id}-{start_ms:09d}-{end_ms:09d}`): any occurrence
  source  a URL or relative path a video was recorded by: any occurrence
  bytes   a slice of the video's own bytes (the middle of a frame JPEG, of a downloaded file): any occurrence
  id      a source id, as a token: not inside a longer id (`vid` does not match `vid2` or `xvid`), but followed
          by `/`, a quote, the end, or the rest of a key or shard file name of that id (`-<span>-NNNN.`).
          Ids shorter than SHORT_ID characters match only as a whole path component or inside a key or shard
          name (a short id such as `cut` is also an ordinary word).
Parquet files are also scanned decoded (their pages may be compressed).

Many needles at once: a needle of LONG bytes or more holds, wherever it lies, a whole 8-byte word at a position
that is a multiple of 8, at one of 8 offsets inside it. So the data's aligned 8-byte words (one numpy pass) go
through a multiplicative hash into a table of every such word of every needle; the few that hit are checked
against the exact words, and only then is the needle compared in full at the start each one implies. The cost
does not grow with the number of needles. Shorter needles are found with `bytes.find`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

SHORT_ID = 6
CHUNK_BYTES = 32 * 2**20
LONG = 15  # needles at least this long go through the word table
_TABLE_BITS = 20
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_KEY_TAIL = rb"-\d{9}-\d{9}"
_SHARD_TAIL = rb"-(?:full|\d+-(?:\d+|end))-\d{4}(?![0-9])"  # a shard (or sidecar rows) name: <id>-<span>-NNNN.
_ID_CHAR = rb"A-Za-z0-9_-"
KINDS = ("key", "id", "source", "bytes")


@dataclass(frozen=True)
class Needle:
    kind: str  # key | id | source | bytes
    value: bytes
    label: str  # what it stands for, for the report (e.g. "frame 12 of <key>")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"needle kind {self.kind!r} is not one of {KINDS}")
        if not self.value:
            raise ValueError("empty needle")


def needle_to_json(n: Needle) -> dict[str, str]:
    return {"kind": n.kind, "hex": n.value.hex(), "label": n.label}


def needle_from_json(d: dict[str, str]) -> Needle:
    return Needle(d["kind"], bytes.fromhex(d["hex"]), d["label"])


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the scanned root
    where: str  # content | decoded | name
    offset: int  # byte offset in the content (-1 for names and decoded tables)
    needle: Needle

    def __str__(self) -> str:
        at = f" at byte {self.offset}" if self.offset >= 0 else ""
        return f"{self.path}: {self.needle.kind} of {self.needle.label} in its {self.where}{at}"


def text_needles(keys: Iterable[str] = (), ids: Iterable[str] = (), sources: Iterable[str] = ()) -> list[Needle]:
    out = [Needle("key", k.encode(), k) for k in keys if k]
    out += [Needle("id", i.encode(), i) for i in ids if i]
    out += [Needle("source", s.encode(), s) for s in sources if s and len(s) >= SHORT_ID]
    return out


class Matcher:
    """Finds needles in buffers (see the module docstring for what counts as a match)."""

    def __init__(self, needles: Sequence[Needle]):
        firsts: dict[tuple[str, bytes], Needle] = {}
        for n in needles:  # the same bytes twice (a frame staged and in a shard) are one needle
            firsts.setdefault((n.kind, n.value), n)
        self.needles = list(firsts.values())
        self.max_len = max((len(n.value) for n in self.needles), default=0)
        self._id_re = {n.value: _id_pattern(n.value) for n in self.needles if n.kind == "id"}
        self._short = [n for n in self.needles if len(n.value) < LONG]
        # word -> (needle, offset of the word in it) for the 8 words at offsets 0..7 of every long needle
        self._by_word: dict[bytes, list[tuple[Needle, int]]] = {}
        for n in self.needles:
            if len(n.value) >= LONG:
                for j in range(8):
                    self._by_word.setdefault(n.value[j:j + 8], []).append((n, j))
        self._table = np.zeros(1 << _TABLE_BITS, dtype=bool)
        self._words = np.zeros(0, dtype="<u8")
        if self._by_word:
            self._words = np.unique(np.frombuffer(b"".join(self._by_word), dtype="<u8"))
            self._table[_hash(self._words)] = True

    def find(self, buf: bytes | memoryview, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, Needle]]:
        """(offset, needle) of every match starting in [lo, hi) (default: anywhere); the bytes around that
        range are context (an id's neighbours)."""
        data = bytes(buf)
        hi = len(data) if hi is None else min(hi, len(data))
        hits: set[tuple[int, Needle]] = set()
        for q in self._word_hits(data).tolist():
            for n, j in self._by_word.get(data[q:q + 8], ()):
                start = q - j
                if lo <= start < hi and data.startswith(n.value, start) and self._accept(data, start, n):
                    hits.add((start, n))  # a needle holds several aligned words: one hit each
        yield from sorted(hits, key=lambda h: (h[0], h[1].kind, h[1].value))
        for n in self._short:
            start = data.find(n.value, lo)
            while 0 <= start < hi:
                if self._accept(data, start, n):
                    yield start, n
                start = data.find(n.value, start + 1)

    def find_in_name(self, relpath: str) -> list[Needle]:
        found = [n for _, n in self.find(relpath.encode())]
        parts = set(Path(relpath).parts)
        found += [n for n in self.needles if n.kind == "id" and n.value.decode(errors="replace") in parts
                  and n not in found]
        return found

    def _word_hits(self, data: bytes) -> np.ndarray:
        """Positions (multiples of 8) of the data's 8-byte words that are words of some long needle."""
        if not self._by_word or len(data) < 8:
            return np.zeros(0, dtype=np.int64)
        words = np.frombuffer(data, dtype="<u8", count=len(data) // 8)
        idx = np.flatnonzero(self._table[_hash(words)])
        if idx.size:
            idx = idx[np.isin(words[idx], self._words)]
        return idx.astype(np.int64) * 8

    def _accept(self, data: bytes, pos: int, needle: Needle) -> bool:
        return needle.kind != "id" or _id_at(self._id_re[needle.value], data, pos)


def _id_pattern(value: bytes) -> re.Pattern[bytes]:
    ident = re.escape(value)
    tail = rb"(?=" + _KEY_TAIL + rb"|" + _SHARD_TAIL + rb")"
    if len(value) < SHORT_ID:
        return re.compile(ident + tail)
    return re.compile(ident + rb"(?:(?![" + _ID_CHAR + rb"])|" + tail + rb")")


def _id_at(pattern: re.Pattern[bytes], data: bytes, pos: int) -> bool:
    if pos > 0 and re.match(rb"[" + _ID_CHAR + rb"]", data[pos - 1:pos]):
        return False  # inside a longer id
    return pattern.match(data, pos) is not None


def _hash(words: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return ((words * _HASH_MUL) >> np.uint64(64 - _TABLE_BITS)).astype(np.int64)


def scan_file(path: Path, matcher: Matcher, relpath: str, chunk_bytes: int = CHUNK_BYTES) -> list[Finding]:
    """Findings in one file's name, content (read in overlapping chunks) and, for Parquet, its decoded cells."""
    findings = [Finding(relpath, "name", -1, n) for n in matcher.find_in_name(relpath)]
    overlap = matcher.max_len + 64
    with open(path, "rb") as f:
        context, base, lo = b"", 0, 0  # buf[lo:] is new; buf[:lo] is one byte of context from before
        while True:
            block = f.read(chunk_bytes)
            buf = context + block
            last = not block
            # A match starting in the last `overlap` bytes is left to the next round, which sees it whole.
            hi = len(buf) if last else max(lo, len(buf) - overlap)
            findings += [Finding(relpath, "content", base + off, n) for off, n in matcher.find(buf, lo, hi)]
            if last:
                break
            keep = max(0, hi - 1)
            context, base, lo = buf[keep:], base + keep, hi - keep
    if path.suffix == ".parquet":
        findings += _scan_parquet(path, matcher, relpath)
    return findings


def _scan_parquet(path: Path, matcher: Matcher, relpath: str) -> list[Finding]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - an unreadable table is reported, never skipped silently
        raise ValueError(f"{path}: cannot decode the table to scan it ({e})") from None
    text = json.dumps(rows, default=str, ensure_ascii=False).encode()
    return [Finding(relpath, "decoded", -1, n) for n in {n for _, n in matcher.find(text)}]


@dataclass
class ScanReport:
    root: Path
    needles: int = 0
    files: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings


def scan_tree(root: Path, needles: Sequence[Needle] | Matcher, exclude: Iterable[str] = ()) -> ScanReport:
    """Every finding under `root` (file contents, and the names of files and folders), skipping the top-level
    entries named in `exclude` (e.g. a takedown's own journal)."""
    root = Path(root)
    matcher = needles if isinstance(needles, Matcher) else Matcher(needles)
    skip = set(exclude)
    report = ScanReport(root, len(matcher.needles))
    if not matcher.needles or not root.exists():
        return report
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] in skip:
            continue
        if path.is_dir() or path.is_symlink():
            report.findings += [Finding(str(rel), "name", -1, n) for n in matcher.find_in_name(str(rel))]
            continue
        report.findings += scan_file(path, matcher, str(rel))
        report.files += 1
        report.bytes += path.stat().st_size
    return report


def middle_slice(data: bytes, length: int = 64, at: float = 0.5) -> bytes | None:
    """`length` bytes from a point inside `data` (None if it is too short to give a distinctive slice)."""
    if len(data) < 4 * length:
        return None
    start = min(len(data) - length, max(0, int(len(data) * at) - length // 2))
    return data[start:start + length]


__all__ = ["Finding", "Matcher", "Needle", "SHORT_ID", "ScanReport", "middle_slice", "needle_from_json",
           "needle_to_json", "scan_file", "scan_tree", "text_needles"]
