"""Reading clips back through WebDataset (no automatic decoders: we decode jpg/npy/json ourselves).

Shards of a curated run (`<run>/shards/*.tar` beside `<run>/index.parquet`) are checked against the index
as they are read: a missing, partial or altered clip, or a sample the index does not list, raises
`ShardDamaged` naming the shard and the clip, instead of being skipped or returned. Shards without an
index next to them are read as they are.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

from shards.sample import ClipSample, decode_sample
from shards.verify import ShardDamaged, iter_checked_samples, raise_problem, shard_urls_checked

SHUFFLE_BUFFER = 100


def shard_urls(folder: Path) -> list[str]:
    """Complete shards in a folder (temp files of an interrupted write are never listed)."""
    return sorted(str(p) for p in Path(folder).glob("*.tar"))


def iter_members(urls: Sequence[str] | str, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Every sample's raw members (bytes), shard by shard; checked against the run's index where there is
    one and `verify` is set."""
    if isinstance(urls, str):
        urls = [urls]
    pairs = shard_urls_checked(list(urls)) if verify else [(u, None) for u in urls]
    for url, expected in pairs:
        yield from iter_checked_samples(url, expected, raise_problem(url))


def iter_clips(urls: Sequence[str] | str, shuffle: bool = False, verify: bool = True,
               seed: int | None = None) -> Iterator[ClipSample]:
    """Yield every clip of the given shards, decoded to arrays (see the module docstring for `verify`).
    `shuffle` mixes clips within a buffer of SHUFFLE_BUFFER samples."""
    members = iter_members(urls, verify)
    if shuffle:
        members = shuffle_buffer(members, SHUFFLE_BUFFER, random.Random(seed))
    for sample in members:
        yield decode_sample(sample)


T = TypeVar("T")


def shuffle_buffer(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Items in a random order drawn from a buffer of `size` (WebDataset's sample shuffle): memory stays at
    `size` items whatever the stream's length."""
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


__all__ = ["SHUFFLE_BUFFER", "ShardDamaged", "iter_clips", "iter_members", "shard_urls", "shuffle_buffer"]
