"""The on-disk format of the `masks` label family: binary person masks as packed bits, deflated.

Entries of a clip's `masks` family (`masks.<entry>` members of its sample):

    mask_bits  uint8 (N,)   a zlib stream of np.packbits(mask, axis=-1, bitorder="big"): the (T, H, W) bool
                            mask as T*H*ceil(W/8) bytes once inflated
    format     json         {"encoding": "packbits+zlib", "axis": -1, "bitorder": "big", "shape": [T, H, W]}
    area       int32 (T,)   mask pixels per frame

A person mask is long runs, so deflating the bits takes a 30-frame 518x294 clip from ~575 KB to ~20 KB.  Readers
also accept the first format, `"encoding": "packbits"`, whose `mask_bits` are the packed bits as they are,
(T, H, ceil(W/8)) uint8.  numpy and zlib only.
"""
from __future__ import annotations

import zlib
from typing import Any, Mapping

import numpy as np

__all__ = ["ENCODING", "pack_masks", "packed_bits", "unpack_masks"]

ENCODING = "packbits+zlib"
_READABLE = ("packbits", ENCODING)


def pack_masks(masks: np.ndarray) -> dict[str, Any]:
    """(T,H,W) bool -> the `mask_bits`, `format` and `area` entries."""
    m = np.asarray(masks)
    if m.ndim != 3 or m.dtype != bool:
        raise ValueError(f"masks must be (T,H,W) bool, got {m.shape} {m.dtype}")
    packed = np.packbits(m, axis=-1, bitorder="big")
    return {
        "mask_bits": np.frombuffer(zlib.compress(packed.tobytes(), 6), np.uint8),
        "format": {"encoding": ENCODING, "axis": -1, "bitorder": "big", "shape": [int(s) for s in m.shape]},
        "area": m.sum(axis=(1, 2)).astype(np.int32),
    }


def packed_bits(entries: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """((T, H, ceil(W/8)) uint8 big-endian bit rows, W) from a clip's `masks` entries (either encoding):
    the inflating half of unpacking; the bits expand anywhere (`np.unpackbits`, or shifts on a GPU)."""
    fmt = entries["format"]
    if fmt.get("encoding") not in _READABLE or fmt.get("axis") != -1 or fmt.get("bitorder", "big") != "big":
        raise ValueError(f"unknown mask encoding {fmt}")
    t, h, w = (int(s) for s in fmt["shape"])
    bits = np.asarray(entries["mask_bits"], np.uint8)
    if fmt["encoding"] == ENCODING:
        bits = np.frombuffer(zlib.decompress(bits.tobytes()), np.uint8)
        if bits.size != t * h * ((w + 7) // 8):
            raise ValueError(f"mask_bits hold {bits.size} bytes, which does not match the recorded shape {[t, h, w]}")
        bits = bits.reshape(t, h, (w + 7) // 8)
    if bits.shape != (t, h, (w + 7) // 8):
        raise ValueError(f"mask_bits shape {bits.shape} does not match the recorded shape {[t, h, w]}")
    return bits, w


def unpack_masks(entries: Mapping[str, Any]) -> np.ndarray:
    """The (T,H,W) bool mask from a clip's `masks` entries (either encoding)."""
    bits, w = packed_bits(entries)
    return np.unpackbits(bits, axis=-1, count=w, bitorder="big").astype(bool)
