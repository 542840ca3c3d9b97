"""UniSH release checkpoint (`unish_release.safetensors`) -> `unish_model.pipeline.UniSH`.

The release holds four modules under their official prefixes (layouts/unish_release.json: 1783 keys,
1,637,210,554 parameters); each goes through the converter of its part:

| official prefix | converter                                  | our prefix        |
|-----------------|--------------------------------------------|-------------------|
| `pi3.`          | `convert.pi3.convert_pi3_state_dict`       | `scene.`          |
| `backbone.`     | `convert.camerahmr.vit_key`                | `human.backbone.` |
| `human_head.`   | `convert.camerahmr.smpl_head_key`          | `human.head.`     |
| `alignnet.`     | `convert.camerahmr.alignnet_key`           | `align.`          |

Strict: a key under no prefix, a key a part does not know, a missing key or a shape mismatch raises
`ConversionError` naming the file and the (official) key. `alignnet.init_*` (SMPL means the official AlignNet
registers but never reads) are consumed and dropped.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..pipeline import UniSH, UniSHConfig
from . import ConversionError, check_state_dict, load_state_dict_file, read_state_dict_layout
from .camerahmr import Converted, alignnet_key, smpl_head_key, unish_alignnet_state, unish_human_state, vit_key
from .pi3 import convert_pi3_state_dict, official_to_ours, ours_to_official

__all__ = ["RELEASE_PREFIXES", "convert_unish_state_dict", "export_unish_state_dict", "load_unish_state", "load_unish_file",
           "check_unish_checkpoint", "mmap_safetensors"]

# official prefix -> our prefix
RELEASE_PREFIXES = {"pi3.": "scene.", "backbone.": "human.backbone.", "human_head.": "human.head.",
                    "alignnet.": "align."}


def convert_unish_state_dict(official: Mapping[str, Tensor], expected: Mapping[str, Tensor] | None = None, *,
                             source: str = "<UniSH state dict>") -> dict[str, Tensor]:
    """Rename a release state dict to our UniSH keys (tensors are not copied). With `expected` (our model's
    state_dict; meta tensors are fine) the result is checked strictly against it."""
    for key in official:
        if not key.startswith(tuple(RELEASE_PREFIXES)):
            raise ConversionError(f"{source}: unexpected key {key!r} (the UniSH release has only "
                                  f"{', '.join(p + '*' for p in RELEASE_PREFIXES)})")
    scene = convert_pi3_state_dict(official, prefix="pi3.", source=source)
    human: Converted = unish_human_state(official, source)
    align: Converted = unish_alignnet_state(official, source)

    converted: dict[str, Tensor] = {}
    describe: dict[str, str] = {}  # our key -> official key, for error messages
    for key, tensor in scene.items():
        converted["scene." + key] = tensor
    for key, tensor in human.state.items():
        converted["human." + key] = tensor
        describe["human." + key] = human.official[key]
    for key, tensor in align.state.items():
        converted["align." + key] = tensor
        describe["align." + key] = align.official[key]
    for key in official:
        if key.startswith("pi3."):
            describe[f"scene.{official_to_ours(key[len('pi3.'):])}"] = key
    if expected is not None:
        for key in expected:
            if key in describe:
                continue
            if key.startswith("scene."):
                name = ours_to_official(key[len("scene."):])
                describe[key] = "pi3." + name if name else key
            elif key.startswith("human."):
                describe[key] = human.official_name(key[len("human."):])
            elif key.startswith("align."):
                describe[key] = align.official_name(key[len("align."):])
        check_state_dict(converted, expected, source, describe)
    return converted


# The official AlignNet also registers the SMPL mean parameters it never reads (dropped on loading); they are
# the same mean parameters as the SMPL head's, so an export fills them from there.
_ALIGNNET_MEAN_BUFFERS = {"alignnet.init_body_pose": "human_head.init_body_pose",
                          "alignnet.init_betas": "human_head.init_betas", "alignnet.init_cam": "human_head.init_cam"}


def export_unish_state_dict(ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our UniSH state dict -> the official release's key names (the inverse of `convert_unish_state_dict`:
    every tensor kept as it is, renamed)."""
    rules = {"human.backbone.": ("backbone.", vit_key), "human.head.": ("human_head.", smpl_head_key),
             "align.": ("alignnet.", alignnet_key)}
    official: dict[str, Tensor] = {}
    for key, tensor in ours.items():
        if key.startswith("scene."):
            name = ours_to_official(key[len("scene."):])
            name = "pi3." + name if name else None
        else:
            prefix = next((p for p in rules if key.startswith(p)), None)
            name = None
            if prefix is not None:
                target, rule = rules[prefix]
                inner = rule.official(key[len(prefix):])
                name = target + inner if inner else None
        if name is None:
            raise ConversionError(f"no official name for our key {key!r}")
        official[name] = tensor
    for dropped, source in _ALIGNNET_MEAN_BUFFERS.items():
        if source in official:
            official[dropped] = official[source].clone()  # its own storage: a file cannot hold two names for one
    return official


def load_unish_state(model: UniSH, official: Mapping[str, Tensor], source: str = "<UniSH state dict>") -> UniSH:
    """Strict load of a release state dict into `model`. A model on the meta device takes the tensors as they
    are (no copy unless the dtype differs from the model's)."""
    expected = model.state_dict()
    converted = convert_unish_state_dict(official, expected, source=source)
    on_meta = any(t.is_meta for t in expected.values())
    state = {k: v if v.dtype == expected[k].dtype else v.to(expected[k].dtype) for k, v in converted.items()}
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model


def load_unish_file(path: str | Path, config: UniSHConfig | None = None, *, mmap: bool = True) -> UniSH:
    """Build UniSH on the meta device (paper sizes by default) and load a release file into it (on the CPU)."""
    path = Path(path)
    if mmap and path.suffix.lower() == ".safetensors":
        state = mmap_safetensors(path)
    else:
        state = load_state_dict_file(path)
    with torch.device("meta"):
        model = UniSH(config or UniSHConfig.paper())
    return load_unish_state(model, state, str(path)).eval()


def check_unish_checkpoint(path: str | Path, config: UniSHConfig | None = None) -> None:
    """Check a checkpoint's keys and shapes against our model without reading its tensors; raises
    `ConversionError` naming the file and the first bad key."""
    with torch.device("meta"):
        model = UniSH(config or UniSHConfig.paper())
    convert_unish_state_dict(read_state_dict_layout(path), model.state_dict(), source=str(path))


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def mmap_safetensors(path: str | Path) -> dict[str, Tensor]:
    """name -> CPU tensor backed by a private (copy-on-write) memory map of the file: nothing is read until used,
    so a multi-GB checkpoint loads into a meta-built model without holding it in RAM."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint file not found")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ConversionError(f"{path}: not a safetensors file (too short)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8:
            raise ConversionError(f"{path}: not a safetensors file (header length {header_len} > file size)")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError as exc:
            raise ConversionError(f"{path}: not a safetensors file (bad header: {exc})") from exc
    storage = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    start = 8 + header_len
    state: dict[str, Tensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ConversionError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
        begin, end = (start + int(o) for o in info["data_offsets"])
        shape = [int(s) for s in info["shape"]]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end > size or end - begin != itemsize * torch.Size(shape).numel():
            raise ConversionError(f"{path}: tensor {key!r} has inconsistent data offsets")
        raw = storage[begin:end]
        if begin % itemsize:  # unaligned (the format does not promise alignment): copy this one
            raw = raw.clone()
        state[key] = raw.view(dtype).view(shape)
    return state
