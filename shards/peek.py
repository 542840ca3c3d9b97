"""Looking into a run's shards without reading them whole: member names, meta.json and small label entries.

A tar is a sequence of headers, each followed by its member's bytes; `tarfile` reads a header and seeks over the
data it does not need, so listing a 500 MB shard, or reading its `meta.json` files and a few small label entries,
reads kilobytes per clip, not the frames.  For reports and inspection only: nothing here checks a sample against
the index (training and `unish view` read clips through `shards.reader`, which does).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from shards.sample import decode_label_member, label_family
from shards.tario import open_tar

__all__ = ["member_names", "read_members", "family_counts", "decode_entries"]


def _split(name: str) -> tuple[str, str]:
    key, _, member = name.partition(".")
    return key, member


def member_names(shard: Path | str) -> dict[str, list[str]]:
    """key -> member names (after `<key>.`) of every sample in a shard, in tar order."""
    out: dict[str, list[str]] = {}
    with open_tar(shard) as tf:
        for info in tf:
            if info.isfile():
                key, member = _split(info.name)
                out.setdefault(key, []).append(member)
    return out


def read_members(shard: Path | str, wanted: Callable[[str, str], bool]) -> dict[str, dict[str, bytes]]:
    """key -> {member name: bytes} for the members `wanted(key, member)` accepts; the others are skipped."""
    out: dict[str, dict[str, bytes]] = {}
    with open_tar(shard) as tf:
        for info in tf:
            if not info.isfile():
                continue
            key, member = _split(info.name)
            if not wanted(key, member):
                continue
            f = tf.extractfile(info)
            if f is not None:
                out.setdefault(key, {})[member] = f.read()
    return out


def decode_entries(members: dict[str, bytes]) -> dict[str, dict[str, object]]:
    """`<family>.<entry>.npy|json` members -> family -> entry -> value (numpy without pickle, or JSON)."""
    labels: dict[str, dict[str, object]] = {}
    for name, data in members.items():
        label = decode_label_member(name, data)
        if label:
            labels.setdefault(label[0], {})[label[1]] = label[2]
    return labels


def family_counts(shards: Iterable[Path | str], keys: set[str] | None = None) -> Counter:
    """Label family -> number of clips (of `keys`, if given) whose sample holds at least one of its entries."""
    counts: Counter = Counter()
    for shard in shards:
        for key, names in member_names(shard).items():
            if keys is not None and key not in keys:
                continue
            counts.update({f for f in map(label_family, names) if f})
    return counts
