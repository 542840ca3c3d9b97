"""The per-video work folder between decode and pack: one folder per clip window, written atomically.

<work>/<source_id>/<span>/
  probe.json, segment.json       what probe and segment found (their completion markers)
  clips/<key>/                   meta.json, status.json, frames.NNN.jpg, <family>.<entry>.npy|json,
                                 <family>.done (a label family is complete only with its marker),
                                 rejected.<entry>.npy|json (a rejected clip: the evidence its rule saw)
  rows.json                      the video's final index rows: the video is finished when it exists
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shards.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from shards.sample import decode_jpeg, decode_label_member, encode_jpeg, encode_json, label_members
from shards.schema import STATUS_OK
from tasks.stage import ClipWindow

STATUS_FILE = "status.json"
META_FILE = "meta.json"


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def stage_window(clip_dir: Path, frames: np.ndarray, meta: dict, status: dict, jpeg_quality: int,
                 labels: dict[str, tuple[dict[str, Any], dict]] | None = None) -> None:
    """Write a clip folder under a temp name and rename it: it exists complete or not at all.  `labels`
    (family -> (entries, provenance)) are written inside it, each with its `.done` marker, before the rename."""
    with atomic_path(clip_dir) as tmp:
        tmp.mkdir(parents=True)
        for i, frame in enumerate(frames):
            (tmp / f"frames.{i:03d}.jpg").write_bytes(encode_jpeg(frame, jpeg_quality))
        (tmp / META_FILE).write_bytes(encode_json(meta))
        write_json_atomic(tmp / STATUS_FILE, status, fsync=False)
        for family, (entries, provenance) in (labels or {}).items():
            write_labels(tmp, family, entries, provenance)


def clip_status(clip_dir: Path) -> dict:
    return read_json(clip_dir / STATUS_FILE)


def set_clip_status(clip_dir: Path, status: dict) -> None:
    write_json_atomic(clip_dir / STATUS_FILE, status)


def frame_files(clip_dir: Path) -> list[Path]:
    return sorted(clip_dir.glob("frames.[0-9][0-9][0-9].jpg"))


class StagedClipDamaged(RuntimeError):
    """A staged clip folder lost files since it was written (it is staged again on the next run)."""


def check_complete(clip_dir: Path) -> int:
    """The clip's frame count, after checking it has every frame its meta.json lists."""
    meta = read_json(clip_dir / META_FILE)
    have, want = len(frame_files(clip_dir)), len(meta["frame_times_s"])
    if have != want:
        raise StagedClipDamaged(f"staged clip {clip_dir.name} has {have} of its {want} frames")
    return have


def load_labels(clip_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
    """The label families already finished for this clip (those with a `.done` marker), decoded."""
    labels: dict[str, dict[str, Any]] = {}
    provenance: dict[str, dict] = {}
    for marker in sorted(clip_dir.glob("*.done")):
        family = marker.stem
        provenance[family] = read_json(marker)
        entries: dict[str, Any] = {}
        for p in sorted(clip_dir.glob(f"{family}.*.*")):
            label = decode_label_member(p.name, p.read_bytes()) if p.suffix in (".npy", ".json") else None
            if label:
                entries[label[1]] = label[2]
        labels[family] = entries
    return labels, provenance


def load_clip(clip_dir: Path) -> ClipWindow:
    meta = read_json(clip_dir / META_FILE)
    frames = np.stack([decode_jpeg(p.read_bytes()) for p in frame_files(clip_dir)])
    labels, provenance = load_labels(clip_dir)
    return ClipWindow(
        key=meta["key"],
        source_id=meta["source_id"],
        start_s=meta["start_s"],
        end_s=meta["end_s"],
        frames=frames,
        frame_times_s=np.asarray(meta["frame_times_s"]),
        meta=meta,
        labels=labels,
        provenance=provenance,
    )


def label_done(clip_dir: Path, family: str) -> dict | None:
    marker = clip_dir / f"{family}.done"
    return read_json(marker) if marker.exists() else None


def write_labels(clip_dir: Path, family: str, entries: dict[str, Any], provenance: dict) -> None:
    """Members first, marker last: a crash leaves the family incomplete, never half-marked."""
    for old in clip_dir.glob(f"{family}.*"):
        old.unlink()
    for name, data in label_members({family: entries}).items():
        write_bytes_atomic(clip_dir / name, data, fsync=False)
    write_json_atomic(clip_dir / f"{family}.done", provenance)


def sample_members(clip_dir: Path, families: list[str]) -> dict[str, bytes | str]:
    """The clip's shard members, read as stored (frames are not re-encoded)."""
    meta = read_json(clip_dir / META_FILE)
    meta["labels"] = {f: read_json(clip_dir / f"{f}.done") for f in families}
    members: dict[str, bytes | str] = {"__key__": meta["key"], META_FILE: encode_json(meta)}
    for p in frame_files(clip_dir):
        members[p.name] = p.read_bytes()
    for family in families:
        for p in sorted(clip_dir.glob(f"{family}.*.npy")) + sorted(clip_dir.glob(f"{family}.*.json")):
            members[p.name] = p.read_bytes()
    return members


EVIDENCE = "rejected"  # member prefix of a rejected clip's evidence (never a label family, never packed)


def write_evidence(clip_dir: Path, entries: dict[str, Any]) -> None:
    """Keep what a rejecting rule saw (`ClipRejected.evidence`) beside the staged clip, replacing older evidence."""
    remove_evidence(clip_dir)
    for name, data in label_members({EVIDENCE: entries}).items():
        write_bytes_atomic(clip_dir / name, data, fsync=False)


def remove_evidence(clip_dir: Path) -> None:
    for old in clip_dir.glob(f"{EVIDENCE}.*"):
        old.unlink()


def load_evidence(clip_dir: Path) -> dict[str, Any]:
    """A rejected clip's evidence entries, decoded ({} when none was kept)."""
    entries: dict[str, Any] = {}
    for p in sorted(clip_dir.glob(f"{EVIDENCE}.*.*")):
        label = decode_label_member(p.name, p.read_bytes()) if p.suffix in (".npy", ".json") else None
        if label:
            entries[label[1]] = label[2]
    return entries


def is_ok(clip_dir: Path) -> bool:
    return clip_status(clip_dir)["status"] == STATUS_OK
