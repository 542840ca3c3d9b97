"""Official human-branch and AlignNet weights -> our `HumanBranch` / `AlignNet` layouts.

Sources and their key prefixes (see shared goldens' layouts/camerahmr.json and unish_release.json):
* CameraHMR `.ckpt` (Lightning, `ckpt["state_dict"]`): `backbone.*` (ViT-H) and `smpl_head.*` (with the
  `deccam` camera head and the `deckp` 88-number head).
* UniSH `unish_release.safetensors`: `backbone.*` (the same ViT-H), `human_head.*` (the same head without
  `deccam`/`deckp`), `alignnet.*` (plus the `pi3.*` scene branch, converted elsewhere).

The per-part functions (`vit_key`, `smpl_head_key`, `alignnet_key`, `extract`) map one prefix each and report
which official keys they consumed, so a whole-file converter can combine them and still be strict.
"""
from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from unish_model.alignnet import AlignNet, AlignNetConfig
from unish_model.convert import ConversionError, check_state_dict, load_state_dict_file
from unish_model.human import HumanBranch, HumanBranchConfig

__all__ = [
    "DROP", "KeyRules", "Converted", "vit_key", "smpl_head_key", "alignnet_key", "extract", "human_branch_state",
    "camerahmr_state", "unish_human_state", "unish_alignnet_state", "load_converted", "load_camerahmr_file",
    "human_branch_from_camerahmr", "alignnet_from_unish",
]

DROP = ""  # mapping target for an official key that is consumed but has no counterpart (unused by forward)

# placeholders usable in the key templates below, each matching one key segment
_SLOTS = {"n": r"\d+", "wb": r"weight|bias", "fc": r"fc1|fc2", "kind": r"self|cross", "p": r"q|k|v|out"}


class KeyRules:
    """Two-way key mapping from (official template, our template) pairs such as
    ("blocks.{n}.norm1.{wb}", "blocks.{n}.attn_norm.{wb}")."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = [(self._compile(a), b, self._compile(b) if b != DROP else None, a) for a, b in pairs]

    @staticmethod
    def _compile(template: str) -> re.Pattern[str]:
        pattern = re.escape(template)
        for slot, regex in _SLOTS.items():
            pattern = pattern.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>{regex})")
        return re.compile(pattern + r"\Z")

    def __call__(self, official: str) -> str | None:
        """Official key -> ours (DROP for consumed-but-unused keys, None for unknown keys)."""
        for pattern, ours, _, _ in self._pairs:
            m = pattern.match(official)
            if m:
                return ours.format(**m.groupdict())
        return None

    def official(self, ours: str) -> str | None:
        """Our key -> the official key it comes from (for error messages)."""
        for _, _, pattern, official in self._pairs:
            m = pattern.match(ours) if pattern is not None else None
            if m:
                return official.format(**m.groupdict())
        return None


vit_key = KeyRules([
    ("pos_embed", "pos_embed"),
    ("patch_embed.proj.{wb}", "patch_embed.{wb}"),
    ("blocks.{n}.norm1.{wb}", "blocks.{n}.attn_norm.{wb}"),
    ("blocks.{n}.attn.qkv.{wb}", "blocks.{n}.attn.qkv.{wb}"),
    ("blocks.{n}.attn.proj.{wb}", "blocks.{n}.attn.out.{wb}"),
    ("blocks.{n}.norm2.{wb}", "blocks.{n}.mlp_norm.{wb}"),
    ("blocks.{n}.mlp.{fc}.{wb}", "blocks.{n}.mlp.{fc}.{wb}"),
    ("last_norm.{wb}", "final_norm.{wb}"),
])
"""Official ViT key (after `backbone.`) -> ours (after `backbone.`)."""

_LAYER = "transformer.transformer.layers.{n}"
smpl_head_key = KeyRules([
    ("init_body_pose", "mean_pose"),
    ("init_betas", "mean_betas"),
    ("init_cam", "mean_camera"),
    ("transformer.pos_embedding", "query_pos"),
    ("transformer.to_token_embedding.{wb}", "query_embed.{wb}"),
    (f"{_LAYER}.0.norm.{{wb}}", "layers.{n}.self_norm.{wb}"),
    (f"{_LAYER}.0.fn.to_qkv.weight", "layers.{n}.self_attn.qkv.weight"),
    (f"{_LAYER}.0.fn.to_out.0.{{wb}}", "layers.{n}.self_attn.out.{wb}"),
    (f"{_LAYER}.1.norm.{{wb}}", "layers.{n}.cross_norm.{wb}"),
    (f"{_LAYER}.1.fn.to_q.weight", "layers.{n}.cross_attn.q.weight"),
    (f"{_LAYER}.1.fn.to_kv.weight", "layers.{n}.cross_attn.kv.weight"),
    (f"{_LAYER}.1.fn.to_out.0.{{wb}}", "layers.{n}.cross_attn.out.{wb}"),
    (f"{_LAYER}.2.norm.{{wb}}", "layers.{n}.ffn_norm.{wb}"),
    (f"{_LAYER}.2.fn.net.0.{{wb}}", "layers.{n}.ffn.fc1.{wb}"),
    (f"{_LAYER}.2.fn.net.3.{{wb}}", "layers.{n}.ffn.fc2.{wb}"),
    ("decpose.{wb}", "pose_out.{wb}"),
    ("decshape.{wb}", "betas_out.{wb}"),
    ("deccam.{wb}", "camera_out.{wb}"),
    ("deckp.{wb}", "keypoint_out.{wb}"),
])
"""Official HumanHeadCliff / SMPLTransformerDecoderHead key -> ours (under `head.`)."""

_ADAPTERS = {"cam": "human", "patch": "patch", "register": "register"}
alignnet_key = KeyRules([
    ("scale_token", "scale_token"),
    *[(f"{k}_feature_adapter.0.{{wb}}", f"{v}_adapter.norm.{{wb}}") for k, v in _ADAPTERS.items()],
    *[(f"{k}_feature_adapter.1.{{wb}}", f"{v}_adapter.proj.{{wb}}") for k, v in _ADAPTERS.items()],
    ("decoder_layers.{n}.{kind}_{p}_proj.{wb}", "layers.{n}.{kind}_attn.{p}.{wb}"),
    ("decoder_layers.{n}.feed_forward.0.{wb}", "layers.{n}.ffn.fc1.{wb}"),
    ("decoder_layers.{n}.feed_forward.3.{wb}", "layers.{n}.ffn.fc2.{wb}"),
    ("decoder_layers.{n}.norm1.{wb}", "layers.{n}.self_norm.{wb}"),
    ("decoder_layers.{n}.norm2.{wb}", "layers.{n}.cross_norm.{wb}"),
    ("decoder_layers.{n}.norm3.{wb}", "layers.{n}.ffn_norm.{wb}"),
    ("trans_head.{wb}", "translation_head.{wb}"),
    ("scale_head.{wb}", "scale_head.{wb}"),
    # SMPL mean parameters the official AlignNet registers but never reads
    ("init_body_pose", DROP),
    ("init_betas", DROP),
    ("init_cam", DROP),
])
"""Official AlignNet key -> ours; DROP for its unused SMPL mean buffers."""


@dataclass
class Converted:
    state: dict[str, Tensor] = field(default_factory=dict)  # our key -> tensor (not copied)
    official: dict[str, str] = field(default_factory=dict)  # our key -> official key (for error messages)
    consumed: set[str] = field(default_factory=set)  # official keys used or deliberately dropped
    # (official prefix, our prefix, rules) of each part, to name keys the checkpoint lacks
    parts: list[tuple[str, str, KeyRules]] = field(default_factory=list)

    def update(self, other: Converted) -> Converted:
        self.state.update(other.state)
        self.official.update(other.official)
        self.consumed |= other.consumed
        self.parts += other.parts
        return self

    def official_name(self, ours: str) -> str:
        """The official key behind one of our keys (also for keys the checkpoint lacks)."""
        if ours in self.official:
            return self.official[ours]
        for prefix, target_prefix, rules in self.parts:
            if ours.startswith(target_prefix):
                name = rules.official(ours[len(target_prefix):])
                if name is not None:
                    return prefix + name
        return ours


def extract(state: Mapping[str, Tensor], prefix: str, rules: KeyRules, target_prefix: str,
            source: str) -> Converted:
    """Map every official key under `prefix` (others are left alone); a key there that `rules` does not
    know raises ConversionError naming the file and the key."""
    out = Converted(parts=[(prefix, target_prefix, rules)])
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        ours = rules(key[len(prefix):])
        if ours is None:
            raise ConversionError(f"{source}: unexpected key {key!r} (not part of the official layout)")
        out.consumed.add(key)
        if ours == DROP:
            continue
        out.state[target_prefix + ours] = tensor
        out.official[target_prefix + ours] = key
    return out


def _reject_leftovers(state: Mapping[str, Tensor], converted: Converted, source: str,
                      ignore_prefixes: Iterable[str] = ()) -> None:
    ignore = tuple(ignore_prefixes)
    for key in state:
        if key not in converted.consumed and not key.startswith(ignore):
            raise ConversionError(f"{source}: unexpected key {key!r} (not part of the official layout)")


def human_branch_state(state: Mapping[str, Tensor], backbone_prefix: str, head_prefix: str,
                       source: str) -> Converted:
    """Official backbone + SMPL head keys under the given prefixes -> our `HumanBranch` keys."""
    return extract(state, backbone_prefix, vit_key, "backbone.", source).update(
        extract(state, head_prefix, smpl_head_key, "head.", source))


def camerahmr_state(state: Mapping[str, Tensor], source: str = "<CameraHMR state dict>",
                    ignore_prefixes: Iterable[str] = ()) -> Converted:
    """A whole CameraHMR state dict (`backbone.*`, `smpl_head.*`); any other key is an error unless it
    starts with one of `ignore_prefixes`."""
    converted = human_branch_state(state, "backbone.", "smpl_head.", source)
    _reject_leftovers(state, converted, source, ignore_prefixes)
    return converted


def unish_human_state(state: Mapping[str, Tensor], source: str = "<UniSH state dict>",
                      backbone_prefix: str = "backbone.", head_prefix: str = "human_head.") -> Converted:
    """The UniSH release's human branch (`backbone.*`, `human_head.*`); other prefixes are left alone."""
    return human_branch_state(state, backbone_prefix, head_prefix, source)


def unish_alignnet_state(state: Mapping[str, Tensor], source: str = "<UniSH state dict>",
                         prefix: str = "alignnet.") -> Converted:
    """The UniSH release's `alignnet.*` keys -> our `AlignNet` keys (prefix "" for a bare AlignNet dict)."""
    return extract(state, prefix, alignnet_key, "", source)


def load_converted(model: nn.Module, converted: Converted, source: str) -> nn.Module:
    """Strict load: every model key present with the right shape, nothing extra.  A model built on the meta
    device takes the tensors as they are (no copy unless the dtype differs from the model's)."""
    expected = model.state_dict()
    describe = {**converted.official, **{k: converted.official_name(k) for k in expected}}
    check_state_dict(converted.state, expected, source, describe=describe)
    on_meta = any(t.is_meta for t in expected.values())
    state = {k: v if v.dtype == expected[k].dtype else v.to(expected[k].dtype) for k, v in converted.state.items()}
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model


def load_camerahmr_file(path: str | Path) -> dict[str, Tensor]:
    """CameraHMR's `.ckpt` -> its flat state dict, with `torch.load(weights_only=True)`.

    Lightning checkpoints written by CameraHMR's trainer keep the yacs config in `hyper_parameters`; it is
    unpickled as a plain OrderedDict stand-in (no code runs), the rest of the file stays weights-only."""
    with torch.serialization.safe_globals([(collections.OrderedDict, "yacs.config.CfgNode")]):
        return load_state_dict_file(path)


def human_branch_from_camerahmr(path: str | Path, cfg: HumanBranchConfig | None = None,
                                device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                                ignore_prefixes: Iterable[str] = ()) -> HumanBranch:
    """Build our human branch (CameraHMR sizes, with `deccam`/`deckp` unless `cfg` says otherwise) and load
    the official checkpoint into it.  With `cfg` lacking the optional heads, pass
    ignore_prefixes=("smpl_head.deccam.", "smpl_head.deckp.") to drop them knowingly."""
    cfg = cfg or HumanBranchConfig.camerahmr()
    ignore = tuple(ignore_prefixes)
    state = {k: v for k, v in load_camerahmr_file(path).items() if not k.startswith(ignore)}
    converted = camerahmr_state(state, str(path))
    with torch.device("meta"):
        model = HumanBranch(cfg)
    if dtype is not None:
        model = model.to(dtype)
    load_converted(model, converted, str(path))
    return model.to(device).eval()


def alignnet_from_unish(state: Mapping[str, Tensor], cfg: AlignNetConfig | None = None, prefix: str = "alignnet.",
                        source: str = "<UniSH state dict>") -> AlignNet:
    """Build our AlignNet and load the release's `alignnet.*` keys into it (strict within that prefix)."""
    with torch.device("meta"):
        model = AlignNet(cfg or AlignNetConfig.paper())
    load_converted(model, unish_alignnet_state(state, source, prefix), source)
    return model.eval()
