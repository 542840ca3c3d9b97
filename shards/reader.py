"""Reading clips back through WebDataset (no automatic decoders: we decode jpg/npy/json ourselves)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import webdataset as wds

from shards.sample import ClipSample, decode_sample


def shard_urls(folder: Path) -> list[str]:
    """Complete shards in a folder (temp files of an interrupted write are never listed)."""
    return sorted(str(p) for p in Path(folder).glob("*.tar"))


def iter_clips(urls: Sequence[str] | str, shuffle: bool = False) -> Iterator[ClipSample]:
    """Yield every clip of the given shards, decoded to arrays."""
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        return
    dataset = wds.WebDataset(list(urls), shardshuffle=False, empty_check=False)
    if shuffle:
        dataset = dataset.shuffle(100)
    for members in dataset:
        members = {k: v for k, v in members.items() if k != "__url__" and k != "__local_path__"}
        yield decode_sample(members)
