"""Encoding of one clip as a WebDataset sample, and back. No pickle anywhere.

Members of a sample (after the `<key>.` prefix):
  meta.json              clip metadata (times, sizes, crop/scale, frame times, label versions)
  frames.NNN.jpg         the window's frames at the model's input size, RGB, JPEG
  <family>.<entry>.npy   array labels (np.save, allow_pickle=False)
  <family>.<entry>.json  dict labels
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

JPEG_QUALITY = 92
_FRAME_MEMBER = re.compile(r"^frames\.(\d{3})\.jpg$")
_LABEL_MEMBER = re.compile(r"^([a-z][a-z0-9_]*)\.([A-Za-z0-9_]+)\.(npy|json)$")


@dataclass
class ClipSample:
    key: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    meta: dict[str, Any]
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable JPEG")
    return bgr[..., ::-1].copy()


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def label_family(name: str) -> str | None:
    """The label family of a `<family>.<entry>.npy|json` member name; None for any other member."""
    m = _LABEL_MEMBER.match(name)
    return m.group(1) if m else None


def decode_label_member(name: str, data: bytes) -> tuple[str, str, Any] | None:
    """`<family>.<entry>.npy|json` member -> (family, entry, decoded value); None for any other member."""
    m = _LABEL_MEMBER.match(name)
    if not m:
        return None
    family, entry, ext = m.groups()
    return family, entry, decode_npy(data) if ext == "npy" else json.loads(data)


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def label_members(labels: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for family, entries in labels.items():
        for entry, value in entries.items():
            name = f"{family}.{entry}"
            if isinstance(value, np.ndarray):
                members[name + ".npy"] = encode_npy(value)
            else:
                members[name + ".json"] = encode_json(value)
            if not _LABEL_MEMBER.match(name + (".npy" if isinstance(value, np.ndarray) else ".json")):
                raise ValueError(f"label member name {name!r} is not [a-z][a-z0-9_]*.[A-Za-z0-9_]+")
    return members


def encode_sample(sample: ClipSample, frame_jpegs: list[bytes] | None = None) -> dict[str, bytes | str]:
    """The sample as WebDataset members; pass `frame_jpegs` to reuse frames already encoded."""
    if frame_jpegs is None:
        frame_jpegs = [encode_jpeg(f) for f in sample.frames]
    members: dict[str, bytes | str] = {"__key__": sample.key, "meta.json": encode_json(sample.meta)}
    for i, jpg in enumerate(frame_jpegs):
        members[f"frames.{i:03d}.jpg"] = jpg
    members.update(label_members(sample.labels))
    return members


@dataclass(frozen=True)
class SampleDigest:
    """What the index records of a sample, to check it against its shard: its member count and a sha256."""

    members: int
    sha256: str


def sample_digest(members: dict[str, Any]) -> SampleDigest:
    """Count and sha256 of a sample's members (name, length and bytes of each, in name order, and the key),
    as the writer wrote them or a reader got them back; WebDataset's `__url__`-style entries are not members."""
    h = hashlib.sha256(str(members["__key__"]).encode() + b"\0")
    names = sorted(k for k in members if not k.startswith("__"))
    for name in names:
        value = members[name]
        data = value.encode() if isinstance(value, str) else bytes(value)
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return SampleDigest(len(names), h.hexdigest())


def decode_sample(members: dict[str, Any]) -> ClipSample:
    """Members as WebDataset yields them (bytes values, no decoding) -> ClipSample."""
    key = members["__key__"]
    if "meta.json" not in members:
        raise ValueError(f"sample {key!r} has no meta.json")
    meta = json.loads(members["meta.json"])
    frames: dict[int, np.ndarray] = {}
    labels: dict[str, dict[str, Any]] = {}
    for name, value in members.items():
        if name.startswith("__") or name == "meta.json":
            continue
        m = _FRAME_MEMBER.match(name)
        if m:
            frames[int(m.group(1))] = decode_jpeg(value)
            continue
        label = decode_label_member(name, value)
        if label:
            family, entry, decoded = label
            labels.setdefault(family, {})[entry] = decoded
    if not frames:
        raise ValueError(f"sample {key!r} has no frames")
    stacked = np.stack([frames[i] for i in sorted(frames)])
    return ClipSample(key=key, frames=stacked, meta=meta, labels=labels)
