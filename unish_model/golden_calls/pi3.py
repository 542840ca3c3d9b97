"""Golden runner for `pi3`: official `Pi3.forward(imgs)` vs our SceneBranch loaded through the converter."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..convert.pi3 import load_pi3_weights
from ..scene import SceneBranch, SceneBranchConfig
from . import GoldenRun, input_array, pick_sizes

__all__ = ["scene_config_from_golden", "run"]


def _section(sections: Mapping[str, Any], start: str) -> Mapping[str, Any]:
    for name, values in sections.items():
        if name.startswith(start):
            return values
    raise KeyError(f"golden tiny_config has no section starting with {start!r}: {list(sections)}")


def scene_config_from_golden(tiny_config: Mapping[str, Any], which: int = 0, **overrides: Any) -> SceneBranchConfig:
    """SceneBranchConfig from a golden's `tiny_config` ([tiny, official] pairs; which=1 gives the official sizes).

    Accepts the pi3 golden's sections directly or a config that nests them under "pi3" (unish_pipeline).
    """
    sections = tiny_config.get("pi3", tiny_config)
    sizes = {name: pick_sizes(values, which) for name, values in sections.items()}
    enc = _section(sizes, "encoder (")
    dec = _section(sizes, "decoder (")
    point = _section(sizes, "point_decoder")
    camera = _section(sizes, "camera_decoder")
    point_head = _section(sizes, "point_head")
    camera_head = _section(sizes, "camera_head")
    pos_type = str(dec["pos_type"])
    if not pos_type.startswith("rope"):
        raise ValueError(f"unsupported pi3 pos_type {pos_type!r}")
    if enc["embed_dim"] != dec["dec_embed_dim"]:
        raise ValueError("pi3 needs encoder width == decoder width")
    if point["out_dim"] != point_head["dec_embed_dim"] or camera["out_dim"] != camera_head["dim"]:
        raise ValueError("head widths must match their decoders' out_dim")
    if enc.get("ffn_layer", "mlp") != "mlp" or not enc.get("qkv_bias", True) or not dec.get("qk_norm", True):
        raise ValueError("only the official pi3 variant (mlp FFN, qkv bias, decoder qk-norm) is supported")
    config = SceneBranchConfig(
        patch_size=int(enc["patch_size"]),
        encoder_dim=int(enc["embed_dim"]),
        encoder_depth=int(enc["depth"]),
        encoder_heads=int(enc["num_heads"]),
        encoder_mlp_ratio=float(enc["mlp_ratio"]),
        encoder_registers=int(enc["num_register_tokens"]),
        encoder_layer_scale=float(enc["init_values(layerscale)"]) or None,
        encoder_img_size=int(enc["img_size"]),
        interpolate_antialias=bool(enc["interpolate_antialias"]),
        interpolate_offset=float(enc["interpolate_offset"]),
        decoder_depth=int(dec["dec_depth"]),
        decoder_heads=int(dec["dec_num_heads"]),
        decoder_mlp_ratio=float(dec["mlp_ratio"]),
        decoder_layer_scale=float(dec["init_values(layerscale)"]) or None,
        decoder_registers=int(dec["num_register_tokens(Pi3.register_token)"]),
        rope_base=float(pos_type[len("rope"):]),
        point_decoder_dim=int(point["dec_embed_dim"]),
        point_decoder_heads=int(point["dec_num_heads"]),
        point_decoder_depth=int(point["depth"]),
        point_decoder_out=int(point["out_dim"]),
        camera_decoder_dim=int(camera["dec_embed_dim"]),
        camera_decoder_heads=int(camera["dec_num_heads"]),
        camera_decoder_depth=int(camera["depth"]),
        camera_decoder_out=int(camera["out_dim"]),
    )
    if int(point_head["patch_size"]) != config.patch_size:
        raise ValueError("head patch size must equal the encoder's")
    return SceneBranchConfig(**{**config.__dict__, **overrides})


def run(config: Mapping[str, Any], weights: Mapping[str, Tensor], inputs: Mapping[str, np.ndarray]) -> GoldenRun:
    model = SceneBranch(scene_config_from_golden(config["tiny_config"])).eval()
    load_pi3_weights(model, weights, source="pi3 golden weights.safetensors")
    images = torch.from_numpy(input_array(inputs, "imgs"))
    with torch.no_grad():
        out = model(images, return_debug=True)

    def np32(t: Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).cpu().numpy()

    outputs = {
        "points": np32(out.points),
        "local_points": np32(out.local_points),
        "conf": np32(out.conf),
        "camera_poses": np32(out.camera_poses),
        # intermediates, compared against io.npz's dbg_* arrays of the same name
        "dbg_encoder_x_norm_patchtokens": np32(out.debug["encoder_patch_tokens"]),
        "dbg_decode_hidden": np32(out.hidden),
        "dbg_decode_pos": np32(out.positions),
        "dbg_point_decoder_out": np32(out.debug["point_decoder_out"]),
        "dbg_conf_decoder_out": np32(out.debug["conf_decoder_out"]),
        "dbg_camera_decoder_out": np32(out.debug["camera_decoder_out"]),
    }
    return GoldenRun(outputs=outputs)
