"""CameraHMR / UniSH human-branch and AlignNet key conversion at the FULL official sizes.

The CameraHMR checkpoint is written in the official layout (layouts/camerahmr.json: 505 keys, 670,712,053
parameters) with every tensor a view into one small shared storage, so the file is ~26 MB and loading it into
the paper-size model (built on the meta device, tensors assigned) costs no more memory than that."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from unish_model.alignnet import AlignNet, AlignNetConfig
from unish_model.convert import ConversionError, check_state_dict
from unish_model.convert.camerahmr import (
    human_branch_from_camerahmr, load_camerahmr_file, load_converted, unish_alignnet_state, unish_human_state,
)
from unish_model.human import HumanBranch, HumanBranchConfig

LAYOUTS = Path(__file__).parent / "data" / "goldens" / "layouts"


def _layout(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def _write_camerahmr(path: Path, rename: tuple[str, str] | None = None,
                     reshape: str | None = None, extra: dict | None = None) -> dict[str, int]:
    """Official-layout checkpoint whose key i views the shared storage from offset i; returns the offsets."""
    keys = _layout("camerahmr")["keys"]
    numels = [int(torch.Size(k["shape"]).numel()) for k in keys]
    storage = torch.arange(max(numels) + len(keys) + 8192, dtype=torch.float32) / 1e6  # slack for `reshape`
    state, offsets = {}, {}
    for i, (entry, numel) in enumerate(zip(keys, numels)):
        shape = entry["shape"] if entry["key"] != reshape else [entry["shape"][0] + 1, *entry["shape"][1:]]
        name = entry["key"] if rename is None or entry["key"] != rename[0] else rename[1]
        state[name] = storage[i:i + int(torch.Size(shape).numel())].view(shape)
        offsets[name] = i
    torch.save({"state_dict": state, "epoch": 7, **(extra or {})}, path)
    return offsets


def test_full_size_camerahmr_checkpoint_loads_into_paper_model(tmp_path):
    path = tmp_path / "camerahmr_checkpoint_cleaned.ckpt"
    offsets = _write_camerahmr(path)
    model = human_branch_from_camerahmr(path)
    assert isinstance(model, HumanBranch) and model.cfg == HumanBranchConfig.camerahmr()
    layout = _layout("camerahmr")
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    assert params == layout["total_parameters"] == 670_712_053
    assert buffers == layout["total_persistent_buffer_elements"]
    assert not any(t.is_meta for t in model.state_dict().values())
    # spot-check that official names landed on the right modules (each key starts at its own offset)
    checks = {
        "backbone.blocks.31.attn.proj.weight": model.backbone.blocks[31].attn.out.weight,
        "backbone.last_norm.bias": model.backbone.final_norm.bias,
        "smpl_head.transformer.transformer.layers.5.1.fn.to_kv.weight": model.head.layers[5].cross_attn.kv.weight,
        "smpl_head.deccam.weight": model.head.camera_out.weight,
        "smpl_head.deckp.bias": model.head.keypoint_out.bias,
        "smpl_head.init_cam": model.head.mean_camera,
    }
    for official, tensor in checks.items():
        assert tensor.flatten()[0].item() == pytest.approx(offsets[official] / 1e6), official


def test_camerahmr_into_headless_config_needs_explicit_drop(tmp_path):
    path = tmp_path / "camerahmr.ckpt"
    _write_camerahmr(path)
    with pytest.raises(ConversionError, match="deccam"):
        human_branch_from_camerahmr(path, HumanBranchConfig.paper())
    model = human_branch_from_camerahmr(path, HumanBranchConfig.paper(),
                                        ignore_prefixes=("smpl_head.deccam.", "smpl_head.deckp."))
    assert model.head.camera_out is None


def test_renamed_key_names_key_and_file(tmp_path):
    path = tmp_path / "renamed.ckpt"
    _write_camerahmr(path, rename=("smpl_head.decpose.weight", "smpl_head.dec_pose.weight"))
    with pytest.raises(ConversionError) as err:
        human_branch_from_camerahmr(path)
    assert "smpl_head.dec_pose.weight" in str(err.value) and str(path) in str(err.value)


def test_missing_and_misshaped_keys_name_the_key(tmp_path):
    path = tmp_path / "misshaped.ckpt"
    _write_camerahmr(path, reshape="backbone.blocks.3.mlp.fc1.weight")
    pattern = r"misshaped\.ckpt: shape mismatch for .backbone\.blocks\.3\.mlp\.fc1\.weight"
    with pytest.raises(ConversionError, match=pattern):
        human_branch_from_camerahmr(path)
    # a missing key: drop one from a full-size state dict, convert, strict-check against the meta model
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in _layout("camerahmr")["keys"]}
    del state["backbone.blocks.0.norm1.weight"]
    with torch.device("meta"):
        model = HumanBranch(HumanBranchConfig.camerahmr())
    converted = unish_human_state(state, "file.ckpt", head_prefix="smpl_head.")
    # named by the official key the file lacks (ours is blocks.0.attn_norm.weight)
    with pytest.raises(ConversionError, match=r"file\.ckpt: missing key 'backbone\.blocks\.0\.norm1\.weight'"):
        load_converted(model, converted, "file.ckpt")


def test_lightning_yacs_hyper_parameters_load_weights_only(tmp_path):
    # CameraHMR's trainer saves its yacs CfgNode in hyper_parameters; we must not need yacs or full unpickling
    fake_yacs = types.ModuleType("yacs")
    fake_config = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    fake_config.CfgNode = CfgNode
    fake_yacs.config = fake_config
    sys.modules["yacs"], sys.modules["yacs.config"] = fake_yacs, fake_config
    try:
        path = tmp_path / "lightning.ckpt"
        torch.save({"state_dict": {"backbone.pos_embed": torch.ones(1, 2, 3)},
                    "hyper_parameters": {"cfg": CfgNode(MODEL=CfgNode(IMAGE_SIZE=256))}}, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]
    state = load_camerahmr_file(path)
    assert list(state) == ["backbone.pos_embed"]


def test_unish_release_human_and_alignnet_keys_map_at_paper_size():
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in _layout("unish_release")["keys"]}
    human = unish_human_state(state, "unish_release.safetensors")
    align = unish_alignnet_state(state, "unish_release.safetensors")
    with torch.device("meta"):
        human_model = HumanBranch(HumanBranchConfig.paper())
        align_model = AlignNet(AlignNetConfig.paper())
    check_state_dict(human.state, human_model.state_dict(), "unish_release", human.official)
    check_state_dict(align.state, align_model.state_dict(), "unish_release", align.official)
    leftover = {k for k in state if k not in human.consumed | align.consumed}
    assert leftover and all(k.startswith("pi3.") for k in leftover)
    assert {"alignnet.init_betas", "alignnet.init_cam", "alignnet.init_body_pose"} <= align.consumed
