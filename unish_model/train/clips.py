"""One training clip from its shard members to tensors, in two halves.

In the DataLoader worker (CPU): only what needs a CPU, the entropy decoding: JPEG frames to uint8 pixels,
zlib to the depth codec's delta planes (plus the clip's code table) and to packed mask bits. Batches cross
the process boundary in these compact forms (1 byte per pixel for frames, 2 for depth, 1/8 for masks).

At the point of use (`expand`, on the training device; in the worker itself when training runs on the
CPU, where depth and masks then go through the codecs' numpy decoders): the elementwise rest: frames to float in [0,1]
(T,3,H,W), the depth planes un-filtered and looked up in the table (bit-for-bit `shards.depth_codec.decode`),
the mask bits expanded (bit-for-bit `shards.mask_codec.unpack_masks`).

What a batch holds after `expand` (B clips of T frames, H x W):
  frames        (B,T,3,H,W) float32 in [0,1] (uint8 with `frames_dtype="uint8"`)
  masks         (B,T,H,W) bool                 person mask (masks family: SAM2, or the BEDLAM ground truth)
  depth         (B,T,H,W) float32 metres       MoGe-2 depth, 0 where invalid (depth family)
  depth_valid   (B,T,H,W) bool
  intrinsics    (B,T,3,3) float32 pixels       MoGe-2's (depth family)
  keypoints     (B,T,24,2) float32 pixels      CameraHMR 2D joints, SMPL order (keypoints family)
  keypoint_conf (B,T,24) float32               0 = missing
  boxes         (B,T,4) float32, box_present (B,T) bool    the tracked person box (people family), if present
  frame_times   (B,T) float64 seconds          source time of each frame
and for synthetic clips (the gt and gt_depth families, written by `unish bedlam`):
  gt_pose       (B,T,72) float32 axis-angle    SMPL pose, root in the camera frame (OpenCV: x right, y down, z ahead)
  gt_betas      (B,T,10) float32               SMPL shape
  gt_trans      (B,T,3) float32 metres         SMPL translation in the camera frame
  gt_intrinsics (B,T,3,3) pixels, gt_extrinsics (B,T,4,4) world-to-camera
  gt_depth      (B,T,H,W) float32 metres, gt_depth_valid (B,T,H,W) bool
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from shards import depth_codec
from shards.mask_codec import packed_bits
from shards.sample import decode_label_member
from shards.schema import DEPTH, GT, GT_DEPTH, KEYPOINTS, MASKS, PEOPLE
from unish_model.train.batch import ClipBatch

_GT_ENTRIES = ("pose", "betas", "trans", "intrinsics", "extrinsics")


def family_entries(members: Mapping[str, Any], family: str) -> dict[str, Any]:
    """A family's entries of one sample, decoded (npy arrays, json dicts)."""
    prefix = family + "."
    entries = {}
    for name, value in members.items():
        if name.startswith(prefix):
            decoded = decode_label_member(name, value)
            if decoded is not None:
                entries[decoded[1]] = decoded[2]
    return entries


def decode_jpeg(data: bytes, height: int, width: int, what: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None or rgb.shape != (height, width, 3):
        raise ValueError(f"{what} does not decode to {width}x{height} RGB")
    return rgb


def _put_frame(rgb: np.ndarray, out: np.ndarray) -> None:
    """One decoded frame into its slot: (H,W,3) as is, or (3,H,W) uint8 / float32 in [0,1]."""
    if out.shape[-1] == 3:
        out[...] = rgb
    elif out.dtype == np.uint8:
        np.copyto(out, rgb.transpose(2, 0, 1))
    else:  # numpy's strided divide: one pass (torch's permute-convert-copy takes five times longer), and
        # k / 255 correctly rounded, as `expand` computes it on a device
        np.divide(rgb.transpose(2, 0, 1), np.float32(255.0), out=out)


def _depth_half(members: Mapping[str, Any], family: str, key: str, shape: tuple[int, int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(delta planes (2,T,H,W) uint8, code table (65536,) float32) of a clip's depth-codec family."""
    entries = family_entries(members, family)
    label_shape = depth_codec.header_shape(entries["codec"])
    if label_shape != shape:
        raise ValueError(f"clip {key}: {family} is {list(label_shape)}, its frames {list(shape)}")
    planes = depth_codec.inflate_planes(np.asarray(entries["code_z"], np.uint8).tobytes(), label_shape)
    return planes, depth_codec.code_table(float(entries["codec"]["log_lo"]), float(entries["codec"]["step"]))


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64, np.dtype(bool): torch.bool}


def _empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An array to decode into. In a DataLoader worker it lives in shared memory from the start, so the batch
    crosses to the training process without the copy torch would otherwise make when sending it."""
    dtype = np.dtype(dtype)
    if get_worker_info() is None:
        return np.empty(shape, dtype)
    count = int(np.prod(shape))
    try:
        storage = torch.UntypedStorage._new_shared(count * dtype.itemsize)  # what torch's own sending uses
        tensor = torch.empty(0, dtype=_TORCH_DTYPES[dtype]).set_(storage, 0, (count,))
    except (AttributeError, RuntimeError):  # a torch without it: the copy happens when sending instead
        return np.empty(shape, dtype)
    return tensor.numpy().reshape(shape)


def compact_batch(samples: Sequence[Mapping[str, Any]], needs: Sequence[str], shape: tuple[int, int, int],
                  decode_all: bool = False, frames_dtype: str = "float32") -> ClipBatch:
    """The worker's half for B same-shape clips (see the module docstring), decoded straight into the
    batch's arrays. With `decode_all` (training on the CPU: no device to hand the rest to) everything is
    decoded here, depth and masks with the codecs' own numpy code: the batch needs no `expand`."""
    b, (t, h, w) = len(samples), shape
    if decode_all:
        frames = _empty((b, t, 3, h, w), np.float32 if frames_dtype == "float32" else np.uint8)
    else:
        frames = _empty((b, t, h, w, 3), np.uint8)
    arrays: dict[str, np.ndarray] = {"frames" if decode_all else "frames_rgb": frames,
                                     "frame_times": _empty((b, t), np.float64)}
    for family, name in ((DEPTH, "depth"), (GT_DEPTH, "gt_depth")):
        if family in needs and not decode_all:
            arrays[f"{name}_planes"] = _empty((b, 2, t, h, w), np.uint8)
            arrays[f"{name}_table"] = _empty((b, depth_codec.MAX_CODE + 1), np.float32)
        elif family in needs:
            arrays[name], arrays[f"{name}_valid"] = _empty((b, t, h, w), np.float32), _empty((b, t, h, w), bool)
    if MASKS in needs:
        arrays["mask_bits" if not decode_all else "masks"] = (
            _empty((b, t, h, (w + 7) // 8), np.uint8) if not decode_all else _empty((b, t, h, w), bool))
    has_people = all(f"{PEOPLE}.box.npy" in s for s in samples)
    keys, metas = [], []
    for i, members in enumerate(samples):
        key = str(members["__key__"])
        keys.append(key)
        meta = json.loads(members["meta.json"])
        metas.append(meta)
        arrays["frame_times"][i] = meta["frame_times_s"]
        for k in range(t):
            _put_frame(decode_jpeg(members[f"frames.{k:03d}.jpg"], h, w, f"clip {key} frame {k}"), frames[i, k])
        for family, name in ((DEPTH, "depth"), (GT_DEPTH, "gt_depth")):
            if family in needs:
                planes, table = _depth_half(members, family, key, (t, h, w))
                if decode_all:
                    codes = depth_codec.unfilter(planes)
                    depth_codec.lookup(table, codes, out=arrays[name][i])
                    np.not_equal(codes, depth_codec.INVALID_CODE, out=arrays[f"{name}_valid"][i])
                else:
                    arrays[f"{name}_planes"][i], arrays[f"{name}_table"][i] = planes, table
        if DEPTH in needs:
            _put(arrays, "intrinsics", i, b, family_entries(members, DEPTH)["intrinsics"], np.float32)
        if MASKS in needs:
            bits, width = packed_bits(family_entries(members, MASKS))
            if bits.shape != (t, h, (w + 7) // 8) or width != w:
                raise ValueError(f"clip {key}: masks are {list(bits.shape)}, its frames need {[t, h, w]}")
            if decode_all:
                arrays["masks"][i] = np.unpackbits(bits, axis=-1, count=w, bitorder="big").view(bool)
            else:
                arrays["mask_bits"][i] = bits
        if KEYPOINTS in needs:
            kp = family_entries(members, KEYPOINTS)
            _put(arrays, "keypoints", i, b, kp["joints2d"], np.float32)
            _put(arrays, "keypoint_conf", i, b, kp["confidence"], np.float32)
        if GT in needs:
            gt = family_entries(members, GT)
            for name in _GT_ENTRIES:
                _put(arrays, f"gt_{name}", i, b, gt[name], np.float32)
        if has_people:
            people = family_entries(members, PEOPLE)
            box = np.asarray(people["box"], np.float32)
            _put(arrays, "boxes", i, b, box, np.float32)
            _put(arrays, "box_present", i, b, people.get("present", np.isfinite(box).all(-1)), bool)
    return ClipBatch({k: torch.from_numpy(v) for k, v in arrays.items()}, keys, metas)


def _put(arrays: dict[str, np.ndarray], name: str, i: int, b: int, value: Any, dtype: Any) -> None:
    value = np.asarray(value, dtype)
    if name not in arrays:
        arrays[name] = np.empty((b, *value.shape), dtype)
    arrays[name][i] = value


# --------------------------------------------------------------------------------- the device half


def depth_from_planes(planes: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth float32 (B,T,H,W), valid bool) from delta planes (B,2,T,H,W) uint8 and tables (B,65536)."""
    delta = (planes[:, 0].to(torch.int32) << 8) | planes[:, 1].to(torch.int32)
    codes = torch.cumsum(delta, dim=-1, dtype=torch.int32) & 0xFFFF  # < 2**31 for rows under 32768 px
    depth = torch.gather(table, 1, codes.flatten(1).to(torch.int64)).view(codes.shape)
    return depth, codes != depth_codec.INVALID_CODE


def masks_from_bits(bits: torch.Tensor, width: int) -> torch.Tensor:
    """(..., W) bool from big-endian packed bit rows (..., ceil(W/8)) uint8."""
    shifts = torch.arange(7, -1, -1, device=bits.device, dtype=torch.uint8)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1
    return unpacked.flatten(-2)[..., :width].bool()


def expand(batch: ClipBatch, device: torch.device | str = "cpu", frames_dtype: str = "float32") -> ClipBatch:
    """The device half: a compact batch moved to `device` and expanded to the tensors of the module docstring."""
    moved = batch.to(device)
    t = dict(moved.tensors)
    if "frames_rgb" in t:
        frames = t.pop("frames_rgb").permute(0, 1, 4, 2, 3)
        t["frames"] = (frames.float().div_(255.0) if frames_dtype == "float32" else frames).contiguous()
    for name in ("depth", "gt_depth"):
        if f"{name}_planes" in t:
            t[name], t[f"{name}_valid"] = depth_from_planes(t.pop(f"{name}_planes"), t.pop(f"{name}_table"))
    if "mask_bits" in t:
        t["masks"] = masks_from_bits(t.pop("mask_bits"), t["frames"].shape[-1])
    return ClipBatch(t, moved.keys, moved.meta, moved.stats)


__all__ = ["ClipBatch", "compact_batch", "decode_jpeg", "depth_from_planes", "expand", "family_entries",
           "masks_from_bits"]
