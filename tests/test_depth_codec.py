"""The compact depth encoding: round trips within the stated bound, validity, size, absent depth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shards import depth_codec as dc
from shards.sample import ClipSample, decode_sample, encode_sample


def rel_err(decoded: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.abs(decoded.astype(np.float64) - truth.astype(np.float64)) / truth.astype(np.float64)


def smooth_scene(t_count: int = 6, h: int = 294, w: int = 518) -> np.ndarray:
    """A tilted floor, a back wall and a person-sized ellipsoid: depth as a camera sees a room."""
    v, u = np.mgrid[0:h, 0:w] + 0.5
    f = 0.9 * w
    dx, dy = (u - w / 2) / f, (v - h / 2) / f
    out = []
    for t in range(t_count):
        pitch = 0.15 + 0.01 * t
        ray_y = dy * math.cos(pitch) + math.sin(pitch)  # downward component after the camera's pitch
        with np.errstate(divide="ignore"):
            floor = np.where(ray_y > 1e-6, 1.6 / ray_y, np.inf)
        d = np.minimum(floor, 7.0 + 0.05 * t)
        pz = 3.0 + 0.03 * t
        body = ((dx * pz - 0.05 * t) / 0.35) ** 2 + ((dy * pz - 0.2) / 0.9) ** 2 < 1
        d = np.where(body, np.minimum(d, pz - 0.15), d)
        out.append(d * (1 + 0.002 * np.sin(u / 13 + t) * np.cos(v / 29)))
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("eps", [1e-3, 2.5e-4, 1e-2])
def test_round_trip_within_stated_bound(eps):
    rng = np.random.default_rng(0)
    depth = np.exp(rng.uniform(np.log(0.05), np.log(200.0), (3, 40, 57))).astype(np.float32)
    enc = dc.encode(depth, max_rel_error=eps)
    assert enc.max_rel_error == pytest.approx(eps, rel=1e-3)  # the stated bound is the requested one
    out, valid = dc.decode(enc.payload, enc.header())
    assert out.dtype == np.float32 and out.shape == depth.shape and valid.all()
    err = rel_err(out, depth)
    assert err.max() <= enc.max_rel_error
    # the quantisation really uses the budget: uniform log-depths reach most of it (a bound far above
    # the real error would hide a codec that silently stores more bits than it says)
    assert err.max() > 0.8 * eps


def test_invalid_pixels_round_trip_as_invalid_zero():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 10, (2, 16, 20)).astype(np.float32)
    mask = rng.random(depth.shape) > 0.3
    depth[0, 0, :4] = [np.nan, np.inf, -1.0, 0.0]  # never valid, whatever the mask says
    mask[0, 0, :4] = True
    enc = dc.encode(depth, mask)
    out, valid = dc.decode(enc.payload, enc.header())
    expected = mask.copy()
    expected[0, 0, :4] = False
    np.testing.assert_array_equal(valid, expected)
    assert (out[~valid] == 0).all()
    assert rel_err(out[valid], depth[valid]).max() <= enc.max_rel_error


def test_huge_range_widens_the_step_and_the_bound_still_holds():
    # 1e-30 .. 1e30 m at eps 1e-4 needs ~345k steps > 65534: the step must grow, and say so
    depth = np.logspace(-30, 30, 5000).reshape(1, 50, 100).astype(np.float64)
    enc = dc.encode(depth, max_rel_error=1e-4)
    assert enc.max_rel_error > 1e-4
    assert enc.max_rel_error == pytest.approx(math.expm1(math.log(1e60) / 65534 / 2), rel=1e-3)
    out, valid = dc.decode(enc.payload, enc.header())
    assert valid.all()
    assert rel_err(out, depth).max() <= enc.max_rel_error


def test_constant_and_empty_depth():
    const = np.full((2, 5, 7), 3.25, np.float32)
    enc = dc.encode(const)
    out, valid = dc.decode(enc.payload, enc.header())
    assert valid.all() and np.allclose(out, 3.25, rtol=1e-6)

    nothing = dc.encode(np.zeros((2, 5, 7), np.float32))
    out, valid = dc.decode(nothing.payload, nothing.header())
    assert not valid.any() and (out == 0).all()


def test_codes_survive_the_row_filter_wrap():
    # neighbouring codes 1 and 65535 make the Sub filter wrap modulo 2**16
    depth = np.array([[[1.0, 1e6, 1.0, 1e6, 2.0]]], np.float64)
    codes, log_lo, step = dc.quantise(depth, max_rel_error=1e-4)
    assert codes.max() == 65535 and codes.min() == 1
    enc = dc.encode(depth, max_rel_error=1e-4)
    out, _ = dc.decode(enc.payload, enc.header())
    assert rel_err(out, depth).max() <= enc.max_rel_error


def test_compact_on_a_smooth_scene():
    depth = smooth_scene()
    enc = dc.encode(depth)
    float16_bytes = depth.size * 2
    # 16-bit codes deflated after the row filter: far below raw float16 on smooth surfaces
    assert enc.nbytes < 0.35 * float16_bytes, (enc.nbytes, float16_bytes)
    out, valid = dc.decode(enc.payload, enc.header())
    assert valid.all() and rel_err(out, depth).max() <= enc.max_rel_error


def test_corrupt_or_mismatched_payload_is_refused():
    enc = dc.encode(np.ones((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="zlib"):
        dc.decode(b"not zlib", enc.header())
    with pytest.raises(ValueError, match="needs"):
        dc.decode(enc.payload, {**enc.header(), "shape": [1, 4, 5]})
    with pytest.raises(ValueError, match="unknown depth codec"):
        dc.decode(enc.payload, {**enc.header(), "version": 99})
    with pytest.raises(ValueError):
        dc.encode(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError):
        dc.step_for(0.0)


def test_entries_round_trip_through_a_webdataset_sample():
    depth = smooth_scene(t_count=2, h=30, w=40)
    valid = depth < 6.0
    k = np.tile(np.array([[40.0, 0, 20], [0, 40.0, 15], [0, 0, 1]], np.float32), (2, 1, 1))
    enc = dc.encode(depth, valid)
    entries = dc.to_entries(enc, k, {"frames": 2})
    sample = ClipSample("src-000000000-000005000", np.zeros((2, 30, 40, 3), np.uint8), {}, {"depth": entries})
    members = encode_sample(sample)
    assert set(m for m in members if m.startswith("depth.")) == {
        "depth.code_z.npy", "depth.codec.json", "depth.intrinsics.npy", "depth.stats.json"}
    back = decode_sample(members).labels["depth"]
    assert dc.has_depth(back)
    label = dc.from_entries(back, key=sample.key)
    np.testing.assert_array_equal(label.valid, valid)
    np.testing.assert_array_equal(label.intrinsics, k)
    assert rel_err(label.depth[valid], depth[valid]).max() <= label.max_rel_error == enc.max_rel_error


def test_absent_depth_is_refused_with_the_reason():
    entries = dc.absent_entries("no offline depth model", backend="none")
    assert not dc.has_depth(entries)
    with pytest.raises(dc.DepthAbsent, match=r"clip 'k-1'.*no offline depth model.*stage 1 needs depth.*depth:moge"):
        dc.from_entries(entries, key="k-1", needed_by="stage 1")
    with pytest.raises(dc.DepthAbsent, match="no depth labels"):
        dc.from_entries(None, key="k-2")


def test_dequantise_equals_the_per_pixel_formula_bit_for_bit():
    from shards.depth_codec import dequantise

    codes = np.random.default_rng(3).integers(0, 4000, (3, 17, 23)).astype(np.uint16)
    depth, valid = dequantise(codes, log_lo=-0.7, step=2 * np.log1p(1e-3))
    want = np.where(codes > 0, np.exp(-0.7 + (codes.astype(np.float64) - 1.0) * 2 * np.log1p(1e-3)), 0).astype(np.float32)
    assert np.array_equal(depth, want) and np.array_equal(valid, codes > 0) and depth.dtype == np.float32
