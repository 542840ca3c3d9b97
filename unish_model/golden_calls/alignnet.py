"""Golden `alignnet`: UniSH's AlignNet(hidden_tokens, cam_token[, fps]) at the default 6 fps and two
alternative frame rates (2.5: rounded time positions; 0.1: positions past 120, interpolated RoPE table)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from unish_model.alignnet import AlignNet, AlignNetConfig
from unish_model.convert.camerahmr import load_converted, unish_alignnet_state
from unish_model.golden_calls import GoldenRun
from unish_model.golden_calls.human_branch import _input, as_tensors

# io.npz output prefix -> fps of that call
CALLS = {"": 6.0, "fps2p5_": 2.5, "fps0p1_": 0.1}


def alignnet_config_from_golden(kwargs: Mapping[str, Any]) -> AlignNetConfig:
    """Our AlignNetConfig from the official constructor kwargs (`ctor_kwargs` / tiny `alignnet_ctor`)."""
    if not kwargs.get("use_rope", True):
        raise ValueError("only the RoPE AlignNet (use_rope=True, UniSH's release) is implemented")
    return AlignNetConfig(scene_dim=kwargs["aggregated_dim"], human_dim=kwargs["cam_dim"],
                          hidden_dim=kwargs["hidden_dim"], num_heads=kwargs["num_heads"], ff_dim=kwargs["ff_dim"],
                          num_layers=kwargs["num_decoder_layers"], dropout=kwargs["dropout"])


def run(config: Mapping[str, Any], weights: Mapping[str, Any] | str | Path, inputs: Mapping[str, Any]) -> GoldenRun:
    model = AlignNet(alignnet_config_from_golden(config["ctor_kwargs"]))
    state = as_tensors(weights)
    load_converted(model, unish_alignnet_state(state, "golden alignnet weights", prefix=""),
                   "golden alignnet weights").eval()
    scene = _input(inputs, "hidden_tokens").float()
    human = _input(inputs, "cam_token").float()
    outputs = {}
    with torch.no_grad():
        for prefix, fps in CALLS.items():
            out = model(scene, human, fps=fps)
            outputs[f"{prefix}scale"] = out.scale.numpy()
            outputs[f"{prefix}trans_cam"] = out.trans_cam.numpy()
    return GoldenRun(outputs=outputs)
