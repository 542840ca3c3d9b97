"""Golden `human_branch`: UniSH's `get_human_prediction` = ViT backbone on the central 256x192 of each 256x256
patch, then the SMPL head with the CLIFF bbox info; betas averaged over the views."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unish_model.convert.camerahmr import load_converted, unish_human_state
from unish_model.golden_calls import GoldenRun
from unish_model.human import HumanBranch, HumanBranchConfig, backbone_columns


def _tiny_section(config: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    for name, section in config["tiny_config"].items():
        if name.startswith(prefix):
            return {k: v[0] for k, v in section.items()}  # entries are [tiny, official]
    raise KeyError(f"golden config has no tiny_config section starting with {prefix!r}")


def human_config_from_golden(config: Mapping[str, Any], **overrides: Any) -> HumanBranchConfig:
    """Our HumanBranchConfig at a golden's tiny sizes (human_branch and unish_pipeline configs)."""
    vit = _tiny_section(config, "human_backbone")
    head = _tiny_section(config, "human_head")
    if vit.get("ratio", 1) != 1:
        raise ValueError(f"unsupported ViT patch ratio {vit['ratio']}")
    return HumanBranchConfig(
        image_size=tuple(vit["img_size"]), patch_size=vit["patch_size"], vit_width=vit["embed_dim"],
        vit_depth=vit["depth"], vit_heads=vit["num_heads"], vit_mlp_ratio=vit["mlp_ratio"],
        head_width=head["dim"], head_depth=head["depth"], head_heads=head["heads"],
        head_dim_head=head["dim_head"], head_mlp_dim=head["mlp_dim"], **overrides)


def as_tensors(weights: Mapping[str, Any] | str | Path) -> dict[str, Tensor]:
    """Golden weights as a name -> float tensor dict (accepts a safetensors path or numpy arrays)."""
    if isinstance(weights, (str, Path)):
        from safetensors.torch import load_file

        return dict(load_file(str(weights)))
    return {k: v if isinstance(v, Tensor) else torch.from_numpy(np.asarray(v)) for k, v in weights.items()}


def _input(inputs: Mapping[str, Any], name: str) -> Tensor:
    value = inputs[f"in_{name}"] if f"in_{name}" in inputs else inputs[name]
    return value if isinstance(value, Tensor) else torch.from_numpy(np.asarray(value))


def run(config: Mapping[str, Any], weights: Mapping[str, Any] | str | Path, inputs: Mapping[str, Any]) -> GoldenRun:
    model = HumanBranch(human_config_from_golden(config))
    state = as_tensors(weights)
    converted = unish_human_state(state, "golden human_branch weights")
    leftover = sorted(set(state) - converted.consumed)
    if leftover:
        raise ValueError(f"golden human_branch weights: unexpected key {leftover[0]!r}")
    load_converted(model, converted, "golden human_branch weights").eval()

    patches = _input(inputs, "human_patches").float()
    bbox_info = _input(inputs, "bbox_info").float()
    with torch.no_grad():
        out = model(backbone_columns(patches, model.cfg.image_size[1]), bbox_info)
    b, n = bbox_info.shape[:2]
    return GoldenRun(outputs={
        "pose_cam": out.rotmats.reshape(b, n, -1).numpy(),
        "token_out": out.token.numpy(),
        "betas": out.betas.mean(dim=1).numpy(),  # UniSH averages the shape over the clip's frames
    })
