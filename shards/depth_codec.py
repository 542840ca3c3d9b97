"""Compact storage of per-frame depth maps (numpy and the standard library's zlib only).

Encoding ("log16z", version 1)
------------------------------
Depth is quantised in log space with a fixed step, so the error is relative, the same at 0.5 m and
at 50 m:

    code = 1 + round(ln(d / lo) / step)       for valid pixels, lo = the smallest valid depth
    code = 0                                   for invalid pixels (outside the validity mask,
                                               non-finite, or <= 0)
    d'   = lo * exp((code - 1) * step)

`step = 2 * ln(1 + eps)` for a target bound `eps` (default 1e-3), so |ln d' - ln d| <= step / 2 and

    |d' - d| / d  <=  expm1(step / 2) + 2**-23     (the last term: the float32 the decoder returns;
                                                    depths must lie in float32's normal range)

Codes are uint16: when a clip's depth range needs more than 65534 steps (ln(hi/lo) > 65534 * step,
i.e. a range of more than 65 orders of magnitude at eps = 1e-3) the step grows to fit and the bound
grows with it; the bound actually guaranteed is written next to the data (`max_rel_error`).

The codes are then stored like a 16-bit PNG: each row delta-coded from its left neighbour (PNG's
"Sub" filter, modulo 2**16), split into a high-byte and a low-byte plane, and deflated with zlib.
This is lossless on the codes; all the loss is the quantisation above.

Why not float16: it is as big before compression (2 bytes/px), has a fixed 2**-11 relative error
that cannot be traded for size, overflows at 65504, and has no spare value for "invalid".

Label entries (the `depth` family of a clip's WebDataset sample)
----------------------------------------------------------------
    depth.code_z.npy      uint8 (N,)      the deflated code planes
    depth.codec.json      {name, version, shape [T,H,W], log_lo, step, max_rel_error, ...}
    depth.intrinsics.npy  float32 (T,3,3) pixels, principal point at (W/2, H/2)
    depth.stats.json      what the labeller measured
or, where no depth model ran (the lite profile):
    depth.absent.json     {reason, backend}
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

CODEC_NAME = "log16z"
CODEC_VERSION = 1
INVALID_CODE = 0
MAX_CODE = 65535
DEFAULT_MAX_REL_ERROR = 1e-3
ZLIB_LEVEL = 6
FLOAT32_ROUNDING = 2.0**-23  # the decoder's float32 output adds at most this relative error
_LOOKUP_BLOCK = 1 << 16  # codes looked up per np.take call (see `lookup`)


class DepthAbsent(LookupError):
    """The clip carries no depth (e.g. labelled by the lite profile's `depth:none`)."""


@dataclass(frozen=True)
class EncodedDepth:
    payload: bytes  # deflated code planes
    shape: tuple[int, int, int]  # (T, H, W)
    log_lo: float  # ln of the smallest valid depth
    step: float  # quantisation step in ln(depth)
    max_rel_error: float  # guaranteed bound on |d' - d| / d over valid pixels

    def header(self) -> dict[str, Any]:
        return {
            "name": CODEC_NAME,
            "version": CODEC_VERSION,
            "shape": list(self.shape),
            "log_lo": self.log_lo,
            "step": self.step,
            "max_rel_error": self.max_rel_error,
            "invalid_code": INVALID_CODE,
            "predictor": "left",
            "byte_planes": True,
            "zlib_level": ZLIB_LEVEL,
        }

    @property
    def nbytes(self) -> int:
        return len(self.payload)


def step_for(max_rel_error: float) -> float:
    """The log-space step whose rounding error is exactly `max_rel_error` (before float32 output)."""
    if not 0.0 < max_rel_error < 1.0:
        raise ValueError(f"max_rel_error must be in (0, 1), got {max_rel_error}")
    return 2.0 * math.log1p(max_rel_error)


def error_bound(step: float) -> float:
    """Worst relative error of a decoded valid pixel for a given step (quantisation + float32 output)."""
    return math.expm1(step / 2.0) + FLOAT32_ROUNDING


def valid_pixels(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pixels the codec stores: inside `valid` (if given), finite and > 0."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        if valid.shape != depth.shape:
            raise ValueError(f"valid mask shape {valid.shape} does not match depth {depth.shape}")
        ok &= valid.astype(bool)
    return ok


def quantise(depth: np.ndarray, valid: np.ndarray | None = None,
             max_rel_error: float = DEFAULT_MAX_REL_ERROR) -> tuple[np.ndarray, float, float]:
    """(codes uint16 like depth, log_lo, step) for a depth array of any shape."""
    d = np.asarray(depth, np.float64)
    ok = valid_pixels(d, valid)
    step = step_for(max_rel_error)
    codes = np.zeros(d.shape, np.uint16)
    if not ok.any():
        return codes, 0.0, step
    logs = np.log(d[ok])
    log_lo = float(logs.min())
    span = float(logs.max()) - log_lo
    if span / step > MAX_CODE - 1:  # more steps than uint16 holds: widen the step (and the bound)
        step = span / (MAX_CODE - 1) * (1 + 1e-12)
    codes[ok] = (1 + np.rint((logs - log_lo) / step)).astype(np.uint16)
    return codes, log_lo, step


def code_table(log_lo: float, step: float) -> np.ndarray:
    """(65536,) float32: the depth of every code (0 for the invalid code 0)."""
    with np.errstate(over="ignore"):  # codes past the clip's range are never looked up
        table = np.exp(log_lo + (np.arange(MAX_CODE + 1, dtype=np.float64) - 1.0) * step).astype(np.float32)
    table[INVALID_CODE] = 0.0
    return table


def lookup(table: np.ndarray, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """table[codes] as float32, in blocks: np.take widens the indices to intp, and a block's worth of them
    stays in cache (about twice as fast as one take over a clip)."""
    out = np.empty(codes.shape, np.float32) if out is None else out
    flat_codes, flat_out = codes.reshape(-1), out.reshape(-1)
    for start in range(0, flat_codes.size, _LOOKUP_BLOCK):
        np.take(table, flat_codes[start:start + _LOOKUP_BLOCK], out=flat_out[start:start + _LOOKUP_BLOCK])
    return out


def dequantise(codes: np.ndarray, log_lo: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(depth float32 with 0 where invalid, valid bool) from codes."""
    # One float64 exp per possible code (a table) instead of one per pixel: the same values, a gather
    # instead of a transcendental per pixel.
    return lookup(code_table(log_lo, step), codes), codes != INVALID_CODE


def _filter_and_deflate(codes: np.ndarray) -> bytes:
    # Sub filter along rows (wraps modulo 2**16), then high bytes of every pixel, then low bytes:
    # smooth depth leaves small deltas whose high bytes are almost all 0x00 or 0xFF.
    delta = np.diff(codes.astype(np.int32), axis=-1, prepend=0).astype(np.uint16)
    planes = np.stack([(delta >> 8).astype(np.uint8), (delta & 0xFF).astype(np.uint8)])
    return zlib.compress(planes.tobytes(), ZLIB_LEVEL)


def inflate_planes(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """(2, T, H, W) uint8: the high-byte and low-byte planes of the row-delta codes (the zlib half of
    decoding: what a CPU must do; `unfilter` and the code table are elementwise and can run anywhere)."""
    n = int(np.prod(shape))
    try:
        raw = zlib.decompress(payload)
    except zlib.error as e:
        raise ValueError(f"depth payload is not valid zlib data: {e}") from e
    if len(raw) != 2 * n:
        raise ValueError(f"depth payload holds {len(raw)} bytes, shape {list(shape)} needs {2 * n}")
    return np.frombuffer(raw, np.uint8).reshape((2, *shape))


def unfilter(planes: np.ndarray) -> np.ndarray:
    """Codes (T,H,W) uint16 from the (2,T,H,W) delta planes."""
    delta = (planes[0].astype(np.uint16) << 8) | planes[1]
    return np.cumsum(delta, axis=-1, dtype=np.uint16)  # uint16 sums wrap mod 2**16, which undoes the filter's wrap


def encode(depth: np.ndarray, valid: np.ndarray | None = None,
           max_rel_error: float = DEFAULT_MAX_REL_ERROR) -> EncodedDepth:
    """Encode (T,H,W) depth (any float dtype) and an optional validity mask."""
    if np.ndim(depth) != 3:
        raise ValueError(f"depth must be (T,H,W), got shape {np.shape(depth)}")
    codes, log_lo, step = quantise(depth, valid, max_rel_error)
    shape = tuple(int(s) for s in codes.shape)
    return EncodedDepth(_filter_and_deflate(codes), shape, log_lo, step, error_bound(step))  # type: ignore[arg-type]


def header_shape(header: Mapping[str, Any]) -> tuple[int, int, int]:
    """(T, H, W) of a payload, after checking this reader knows its codec."""
    if header.get("name") != CODEC_NAME or int(header.get("version", -1)) != CODEC_VERSION:
        raise ValueError(f"unknown depth codec {header.get('name')!r} v{header.get('version')}; "
                         f"this reader knows {CODEC_NAME} v{CODEC_VERSION}")
    t, h, w = (int(s) for s in header["shape"])
    return t, h, w


def decode(payload: bytes, header: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(depth float32 (T,H,W), 0 where invalid; valid bool (T,H,W)) from a payload and its header."""
    codes = unfilter(inflate_planes(bytes(payload), header_shape(header)))
    return dequantise(codes, float(header["log_lo"]), float(header["step"]))


# -- label entries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthLabel:
    depth: np.ndarray  # (T,H,W) float32 metres (MoGe-2 metric depth), 0 where invalid
    valid: np.ndarray  # (T,H,W) bool
    intrinsics: np.ndarray  # (T,3,3) float32 pixels
    max_rel_error: float


def to_entries(enc: EncodedDepth, intrinsics: np.ndarray, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `depth` family's label entries (see the module docstring)."""
    k = np.asarray(intrinsics, np.float32)
    if k.shape != (enc.shape[0], 3, 3):
        raise ValueError(f"intrinsics must be ({enc.shape[0]},3,3), got {k.shape}")
    return {
        "code_z": np.frombuffer(enc.payload, np.uint8).copy(),
        "codec": enc.header(),
        "intrinsics": k,
        "stats": dict(stats or {}),
    }


def absent_entries(reason: str, backend: str = "none") -> dict[str, Any]:
    """Entries of a clip that has no depth, with the reason a reader will show."""
    return {"absent": {"reason": reason, "backend": backend}}


def has_depth(entries: Mapping[str, Any] | None) -> bool:
    return bool(entries) and "absent" not in entries and "code_z" in entries  # type: ignore[operator]


def from_entries(entries: Mapping[str, Any] | None, key: str = "", needed_by: str = "") -> DepthLabel:
    """Decode a clip's `depth` entries; raise DepthAbsent (naming the clip and the reason) where there is none."""
    who = f"clip {key!r}" if key else "clip"
    why = f"; {needed_by} needs depth" if needed_by else ""
    if not entries:
        raise DepthAbsent(f"{who} has no depth labels{why}: label it with the depth:moge stage (paper profile)")
    if "absent" in entries:
        info = entries["absent"]
        raise DepthAbsent(f"{who} has no depth ({info.get('backend', 'none')}: {info.get('reason', 'no reason given')})"
                          f"{why}: relabel it with the depth:moge stage (paper profile)")
    header = entries["codec"]
    depth, valid = decode(np.asarray(entries["code_z"], np.uint8).tobytes(), header)
    k = np.asarray(entries["intrinsics"], np.float32)
    return DepthLabel(depth, valid, k, float(header["max_rel_error"]))


__all__ = [
    "CODEC_NAME",
    "CODEC_VERSION",
    "DEFAULT_MAX_REL_ERROR",
    "DepthAbsent",
    "DepthLabel",
    "EncodedDepth",
    "absent_entries",
    "code_table",
    "decode",
    "dequantise",
    "encode",
    "error_bound",
    "from_entries",
    "has_depth",
    "header_shape",
    "inflate_planes",
    "lookup",
    "quantise",
    "step_for",
    "to_entries",
    "unfilter",
    "valid_pixels",
]
