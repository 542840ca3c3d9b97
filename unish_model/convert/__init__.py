"""Checkpoint conversion: official checkpoints (pi3, CameraHMR, UniSH release) -> our module layouts.

Common helpers shared by the per-model converters:
* `load_state_dict_file(path)`: safetensors, or `torch.load(weights_only=True)` for `.pt/.pth/.ckpt/.bin`
  (never a plain unpickle).
* `read_state_dict_layout(path)`: names, shapes and dtypes only, as meta tensors (nothing materialised), to
  check a multi-GB checkpoint against a model before loading it.
* `check_state_dict(converted, expected, source)`: strict key/shape check with an error naming the file.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ConversionError", "load_state_dict_file", "read_state_dict_layout", "check_state_dict"]

_TORCH_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}
# Wrappers used by training frameworks around the actual state dict (Lightning: "state_dict").
_WRAPPER_KEYS = ("state_dict", "model", "module")


class ConversionError(ValueError):
    """A checkpoint does not match the layout a converter expects (names the file and the key)."""


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a flat `name -> tensor` dict from a checkpoint file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses arbitrary pickled objects: say which file
            raise ConversionError(f"{path}: cannot load with torch.load(weights_only=True): {exc}") from exc
        return _unwrap_state_dict(obj, path)
    raise ConversionError(f"{path}: unsupported checkpoint type {suffix!r} (expected .safetensors, .pt, .pth, .ckpt)")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_state_dict_layout(path: str | Path) -> dict[str, Tensor]:
    """`name -> meta tensor` (shape and dtype, no data) of a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        layout: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), torch.float32)
                layout[key] = torch.empty(tensor_slice.get_shape(), dtype=dtype, device="meta")
        return layout
    if suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="meta", weights_only=True)
        except Exception as exc:
            raise ConversionError(f"{path}: cannot load with torch.load(weights_only=True): {exc}") from exc
        return _unwrap_state_dict(obj, path)
    raise ConversionError(f"{path}: unsupported checkpoint type {suffix!r} (expected .safetensors, .pt, .pth, .ckpt)")


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors and len(tensors) == len(obj):
            return dict(tensors)
    raise ConversionError(f"{path}: no flat state dict of tensors found in the checkpoint")


def check_state_dict(
    converted: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    source: str,
    describe: Mapping[str, str] | None = None,
) -> None:
    """Raise `ConversionError` on the first missing key, unexpected key or shape mismatch.

    `expected` may hold meta tensors (only names and shapes are read). `describe` maps our key to the
    checkpoint's key so errors name what the user can find in the file.
    """
    describe = describe or {}
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing key {_name(missing[0], describe)} ({len(missing)} missing in all)")
    if unexpected:
        problems.append(f"unexpected key {_name(unexpected[0], describe)} ({len(unexpected)} unexpected in all)")
    if problems:
        # both at once: a renamed key shows up as one missing and one unexpected name
        raise ConversionError(f"{source}: " + "; ".join(problems))
    for key, tensor in converted.items():
        want = tuple(expected[key].shape)
        if tuple(tensor.shape) != want:
            raise ConversionError(f"{source}: shape mismatch for {_name(key, describe)}: "
                                  f"checkpoint {tuple(tensor.shape)}, model expects {want}")


def _name(key: str, describe: Mapping[str, str]) -> str:
    official = describe.get(key)
    if official is None or official == key:
        return repr(key)
    return f"{official!r} (ours: {key!r})"
