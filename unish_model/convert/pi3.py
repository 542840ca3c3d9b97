"""Official pi3 checkpoint (yyfz/Pi3 `model.safetensors`) -> `unish_model.scene.SceneBranch` state dict.

The mapping is a pure function of key names, parameterised by a prefix so that the UniSH release
checkpoint (which stores pi3 under `pi3.`) reuses it. Values are copied as they are (no reshapes): every
official tensor has exactly our shape.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..scene import SceneBranch, SceneBranchConfig
from . import ConversionError, check_state_dict, load_state_dict_file, read_state_dict_layout

__all__ = ["official_to_ours", "ours_to_official", "convert_pi3_state_dict", "load_pi3_weights",
           "check_pi3_checkpoint", "scene_branch_from_pi3"]

# Block-internal renames (DINOv2 / pi3 BlockRope -> our TransformerBlock), both directions.
_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("norm1.", "attn_norm."),
    ("attn.qkv.", "attn.qkv."),
    ("attn.proj.", "attn.out."),
    ("attn.q_norm.", "attn.q_norm."),
    ("attn.k_norm.", "attn.k_norm."),
    ("ls1.gamma", "attn_scale.gamma"),
    ("norm2.", "mlp_norm."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
    ("ls2.gamma", "mlp_scale.gamma"),
)

# Whole-key renames outside the transformer blocks: (official, ours).
_FIXED_RENAMES: tuple[tuple[str, str], ...] = (
    ("register_token", "decoder.registers"),
    ("image_mean", "pixel_mean"),
    ("image_std", "pixel_std"),
    ("encoder.cls_token", "encoder.cls_token"),
    ("encoder.pos_embed", "encoder.pos_embed"),
    ("encoder.register_tokens", "encoder.registers"),
)

# Prefix renames (official prefix, our prefix); the tail (weight/bias) is kept.
_PREFIX_RENAMES: tuple[tuple[str, str], ...] = (
    ("encoder.patch_embed.proj.", "encoder.patch_embed."),
    ("encoder.norm.", "encoder.norm."),
    ("point_head.proj.", "point_head.proj."),
    ("conf_head.proj.", "conf_head.proj."),
    ("camera_head.more_mlps.0.", "camera_head.fc1."),
    ("camera_head.more_mlps.2.", "camera_head.fc2."),
    ("camera_head.fc_t.", "camera_head.translation."),
    ("camera_head.fc_rot.", "camera_head.rotation."),
) + tuple(
    pair for name in ("point_decoder", "conf_decoder", "camera_decoder")
    for pair in ((f"{name}.projects.", f"{name}.in_proj."), (f"{name}.linear_out.", f"{name}.out_proj."))
)

# Indexed containers: (official regex, our format) - the captured index and rest are carried over.
_OFFICIAL_BLOCKS = (
    (re.compile(r"^encoder\.blocks\.(\d+)\.(.+)$"), "encoder.blocks.{}.{}"),
    (re.compile(r"^decoder\.(\d+)\.(.+)$"), "decoder.blocks.{}.{}"),
    (re.compile(r"^point_decoder\.blocks\.(\d+)\.(.+)$"), "point_decoder.blocks.{}.{}"),
    (re.compile(r"^conf_decoder\.blocks\.(\d+)\.(.+)$"), "conf_decoder.blocks.{}.{}"),
    (re.compile(r"^camera_decoder\.blocks\.(\d+)\.(.+)$"), "camera_decoder.blocks.{}.{}"),
)
_OUR_BLOCKS = (
    (re.compile(r"^encoder\.blocks\.(\d+)\.(.+)$"), "encoder.blocks.{}.{}"),
    (re.compile(r"^decoder\.blocks\.(\d+)\.(.+)$"), "decoder.{}.{}"),
    (re.compile(r"^point_decoder\.blocks\.(\d+)\.(.+)$"), "point_decoder.blocks.{}.{}"),
    (re.compile(r"^conf_decoder\.blocks\.(\d+)\.(.+)$"), "conf_decoder.blocks.{}.{}"),
    (re.compile(r"^camera_decoder\.blocks\.(\d+)\.(.+)$"), "camera_decoder.blocks.{}.{}"),
)
_OFFICIAL_CAMERA_RES = re.compile(r"^camera_head\.res_conv\.(\d+)\.res_conv([123])\.(weight|bias)$")
_OUR_CAMERA_RES = re.compile(r"^camera_head\.res_blocks\.(\d+)\.fc([123])\.(weight|bias)$")


def _rename_tail(tail: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    for src, dst in pairs:
        if tail.startswith(src):
            return dst + tail[len(src):]
    return None


def official_to_ours(key: str) -> str | None:
    """Our key for an official pi3 key (without any outer prefix), or None if the key is not pi3's."""
    for official, ours in _FIXED_RENAMES:
        if key == official:
            return ours
    renamed = _rename_tail(key, _PREFIX_RENAMES)
    if renamed is not None:
        return renamed
    for pattern, fmt in _OFFICIAL_BLOCKS:
        match = pattern.match(key)
        if match:
            tail = _rename_tail(match.group(2), _BLOCK_RENAMES)
            return None if tail is None else fmt.format(match.group(1), tail)
    match = _OFFICIAL_CAMERA_RES.match(key)
    if match:
        return f"camera_head.res_blocks.{match.group(1)}.fc{match.group(2)}.{match.group(3)}"
    return None


def ours_to_official(key: str) -> str | None:
    """Inverse of `official_to_ours` (used to name missing keys in the checkpoint's terms)."""
    for official, ours in _FIXED_RENAMES:
        if key == ours:
            return official
    renamed = _rename_tail(key, tuple((dst, src) for src, dst in _PREFIX_RENAMES))
    if renamed is not None:
        return renamed
    for pattern, fmt in _OUR_BLOCKS:
        match = pattern.match(key)
        if match:
            tail = _rename_tail(match.group(2), tuple((dst, src) for src, dst in _BLOCK_RENAMES))
            return None if tail is None else fmt.format(match.group(1), tail)
    match = _OUR_CAMERA_RES.match(key)
    if match:
        return f"camera_head.res_conv.{match.group(1)}.res_conv{match.group(2)}.{match.group(3)}"
    return None


def convert_pi3_state_dict(
    official: Mapping[str, Tensor],
    expected: Mapping[str, Tensor] | None = None,
    *,
    prefix: str = "",
    source: str = "<state dict>",
) -> dict[str, Tensor]:
    """Rename an official pi3 state dict to our SceneBranch keys.

    With `prefix` (e.g. "pi3."), only keys under it are read and the rest are left to the caller (the UniSH
    release holds other modules too); without a prefix every key must be pi3's. With `expected` (our
    model's state_dict, meta tensors are fine) the result is checked strictly: the first missing or
    unexpected key or shape mismatch raises `ConversionError` naming `source` and the official key.
    """
    converted: dict[str, Tensor] = {}
    describe: dict[str, str] = {}
    for key, value in official.items():
        if prefix and not key.startswith(prefix):
            continue
        bare = key[len(prefix):]
        ours = official_to_ours(bare)
        if ours is None:
            raise ConversionError(f"{source}: unexpected key {key!r} (not part of the pi3 layout)")
        if ours in converted:
            raise ConversionError(f"{source}: key {key!r} maps onto {ours!r} twice")
        converted[ours] = value
        describe[ours] = key
    if expected is not None:
        for ours in expected:
            if ours not in describe:
                official_name = ours_to_official(ours)
                describe[ours] = prefix + official_name if official_name else ours
        check_state_dict(converted, expected, source, describe)
    return converted


def load_pi3_weights(model: SceneBranch, path_or_state: str | Path | Mapping[str, Tensor], *,
                     prefix: str = "", source: str | None = None) -> None:
    """Load an official pi3 checkpoint (file or state dict) into `model`, strictly."""
    if isinstance(path_or_state, (str, Path)):
        state = load_state_dict_file(path_or_state)
        source = source or str(path_or_state)
    else:
        state = dict(path_or_state)
        source = source or "<state dict>"
    expected = model.state_dict()
    converted = convert_pi3_state_dict(state, expected, prefix=prefix, source=source)
    # keep the model's dtype (a bf16 model loading a float32 file, or the reverse)
    converted = {k: v.to(expected[k].dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True)


def check_pi3_checkpoint(path: str | Path, config: SceneBranchConfig | None = None, *, prefix: str = "") -> None:
    """Check a checkpoint file's keys and shapes against our model (paper sizes by default) without reading
    its tensors or building real weights; raises `ConversionError` naming the file and the first bad key."""
    with torch.device("meta"):
        model = SceneBranch(config or SceneBranchConfig.paper())
    convert_pi3_state_dict(read_state_dict_layout(path), model.state_dict(), prefix=prefix, source=str(path))


def scene_branch_from_pi3(path: str | Path, config: SceneBranchConfig | None = None, *,
                          device: str | torch.device = "cpu", prefix: str = "") -> SceneBranch:
    """Build a SceneBranch (paper sizes by default) and load an official checkpoint into it."""
    model = SceneBranch(config or SceneBranchConfig.paper())
    load_pi3_weights(model, path, prefix=prefix)
    return model.to(device).eval()
