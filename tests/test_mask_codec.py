"""shards.mask_codec: the masks family's on-disk format (packed bits, deflated), through a real sample."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from shards.mask_codec import pack_masks, unpack_masks
from shards.sample import ClipSample, decode_sample, encode_sample


def test_packed_masks_round_trip_through_a_sample():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 21, 294)) > 0.5  # 294 is not a multiple of 8
    entries = pack_masks(masks)
    assert entries["mask_bits"].ndim == 1 and entries["mask_bits"].dtype == np.uint8
    assert entries["format"] == {"encoding": "packbits+zlib", "axis": -1, "bitorder": "big", "shape": [3, 21, 294]}
    np.testing.assert_array_equal(entries["area"], masks.sum(axis=(1, 2)))
    sample = ClipSample("k-000000000-000005000", np.zeros((3, 21, 294, 3), np.uint8), {}, {"masks": entries})
    back = decode_sample(encode_sample(sample)).labels["masks"]
    np.testing.assert_array_equal(unpack_masks(back), masks)
    with pytest.raises(ValueError, match="does not match"):
        unpack_masks({**back, "format": {**back["format"], "shape": [3, 21, 300]}})


def test_person_shaped_masks_compress_far_below_one_bit_per_pixel():
    h, w = 294, 518
    yy, xx = np.mgrid[0:h, 0:w]
    masks = np.stack([((xx - 200 - 3 * t) / 60.0) ** 2 + ((yy - 150) / 120.0) ** 2 < 1 for t in range(30)])
    entries = pack_masks(masks)
    assert entries["mask_bits"].nbytes < masks.size / 8 / 10  # > 10x smaller than the raw bits
    np.testing.assert_array_equal(unpack_masks(entries), masks)


def test_the_first_format_packed_bits_without_zlib_still_reads():
    rng = np.random.default_rng(1)
    masks = rng.random((2, 5, 13)) > 0.5
    entries = pack_masks(masks)
    raw = np.frombuffer(zlib.decompress(entries["mask_bits"].tobytes()), np.uint8).reshape(2, 5, 2)
    old = {"mask_bits": raw, "format": {**entries["format"], "encoding": "packbits"}}
    np.testing.assert_array_equal(unpack_masks(old), masks)
    with pytest.raises(ValueError, match="unknown mask encoding"):
        unpack_masks({**old, "format": {**old["format"], "encoding": "rle"}})
