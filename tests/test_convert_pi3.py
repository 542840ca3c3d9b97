"""Official pi3 checkpoint layout -> our SceneBranch: full-size key/shape compatibility and strict errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unish_model.convert import ConversionError, load_state_dict_file
from unish_model.convert.pi3 import (check_pi3_checkpoint, convert_pi3_state_dict, load_pi3_weights, official_to_ours,
                                     ours_to_official)
from unish_model.scene import SceneBranch, SceneBranchConfig

DATA = Path(__file__).parent / "data" / "goldens"
LAYOUT = json.loads((DATA / "layouts" / "pi3.json").read_text())
TINY_WEIGHTS = DATA / "pi3" / "weights.safetensors"


def _paper_model_meta() -> SceneBranch:
    # ~1B parameters: built on the meta device, only names and shapes exist
    with torch.device("meta"):
        return SceneBranch(SceneBranchConfig.paper())


def _layout_state(device: str = "meta") -> dict[str, torch.Tensor]:
    return {entry["key"]: torch.empty(entry["shape"], device=device) for entry in LAYOUT["keys"]}


def test_full_size_official_layout_converts_without_missing_or_unexpected_keys() -> None:
    expected = _paper_model_meta().state_dict()
    official = _layout_state()
    converted = convert_pi3_state_dict(official, expected, source="layouts/pi3.json")
    assert set(converted) == set(expected)
    assert len(converted) == LAYOUT["num_keys"] == 1210
    n_buffer = LAYOUT["total_persistent_buffer_elements"]
    assert sum(t.numel() for t in expected.values()) == LAYOUT["total_parameters"] + n_buffer


def test_key_mapping_is_a_bijection_on_the_full_layout() -> None:
    ours = [official_to_ours(entry["key"]) for entry in LAYOUT["keys"]]
    assert None not in ours and len(set(ours)) == len(ours)
    assert [ours_to_official(k) for k in ours] == [entry["key"] for entry in LAYOUT["keys"]]


def _write_sparse_safetensors(path: Path, entries: list[tuple[str, list[int]]], dtype: str = "BF16") -> None:
    """A valid safetensors file of zeros in the given layout, written sparse: the ~1.9 GB of bf16 data of the
    full pi3 layout takes no disk blocks and is never held in memory."""
    itemsize = {"BF16": 2, "F32": 4}[dtype]
    header: dict[str, object] = {}
    offset = 0
    for key, shape in entries:
        size = itemsize * int(torch.Size(shape).numel())
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little"))
        handle.write(blob)
        handle.truncate(8 + len(blob) + offset)


def test_full_size_checkpoint_file_in_official_layout(tmp_path: Path) -> None:
    entries = [(entry["key"], entry["shape"]) for entry in LAYOUT["keys"]]
    path = tmp_path / "model.safetensors"
    _write_sparse_safetensors(path, entries)
    assert path.stat().st_size > 1.9e9  # the full-size official layout, in bf16
    check_pi3_checkpoint(path)  # keys and shapes match the paper-size SceneBranch
    with safe_open(str(path), framework="pt") as handle:  # and the file is a real, readable checkpoint
        assert torch.equal(handle.get_tensor("image_mean"), torch.zeros(1, 3, 1, 1, dtype=torch.bfloat16))

    renamed = [("decoder.7.attn.q_norm.gamma" if k == "decoder.7.attn.q_norm.weight" else k, shape)
               for k, shape in entries]
    bad_path = tmp_path / "renamed.safetensors"
    _write_sparse_safetensors(bad_path, renamed)
    with pytest.raises(ConversionError) as err:
        check_pi3_checkpoint(bad_path)
    assert str(bad_path) in str(err.value) and "decoder.7.attn.q_norm.gamma" in str(err.value)

    resized = [(k, [2048] if k == "encoder.norm.bias" else shape) for k, shape in entries]
    _write_sparse_safetensors(bad_path, resized)
    with pytest.raises(ConversionError, match=r"shape mismatch for 'encoder\.norm\.bias'"):
        check_pi3_checkpoint(bad_path)


def test_tiny_checkpoint_round_trip_and_strict_errors(tmp_path: Path) -> None:
    config = SceneBranchConfig.tiny()
    weights = load_file(str(TINY_WEIGHTS))
    model = SceneBranch(config)
    load_pi3_weights(model, TINY_WEIGHTS)
    assert torch.equal(model.decoder.registers, weights["register_token"])
    assert torch.equal(model.camera_head.res_blocks[1].fc3.weight, weights["camera_head.res_conv.1.res_conv3.weight"])
    assert torch.equal(model.pixel_std, weights["image_std"])

    # the same weights through torch.save / torch.load(weights_only=True)
    pt_path = tmp_path / "pi3.pt"
    torch.save(weights, pt_path)
    model_pt = SceneBranch(config)
    load_pi3_weights(model_pt, pt_path)
    for (name, a), b in zip(model.state_dict().items(), model_pt.state_dict().values()):
        assert torch.equal(a, b), name

    # renamed key: unexpected key named, with the file
    bad = dict(weights)
    bad["encoder.blocks.1.ls1.scale"] = bad.pop("encoder.blocks.1.ls1.gamma")
    bad_path = tmp_path / "renamed.safetensors"
    save_file(bad, str(bad_path))
    with pytest.raises(ConversionError, match=r"renamed\.safetensors.*encoder\.blocks\.1\.ls1\.scale"):
        load_pi3_weights(SceneBranch(config), bad_path)

    # missing key: named in the checkpoint's own terms
    missing = {k: v for k, v in weights.items() if k != "conf_decoder.blocks.2.norm2.bias"}
    with pytest.raises(ConversionError, match=r"missing key 'conf_decoder\.blocks\.2\.norm2\.bias'"):
        load_pi3_weights(SceneBranch(config), missing, source="dict")

    # shape mismatch
    wrong = dict(weights)
    wrong["point_head.proj.bias"] = torch.zeros(5)
    with pytest.raises(ConversionError, match=r"shape mismatch for 'point_head\.proj\.bias'"):
        load_pi3_weights(SceneBranch(config), wrong)

    # an encoder-only DINOv2 key (mask_token) is not part of pi3 (pi3 deletes it)
    extra = dict(weights, **{"encoder.mask_token": torch.zeros(1, 48)})
    with pytest.raises(ConversionError, match="encoder.mask_token"):
        load_pi3_weights(SceneBranch(config), extra)


def test_prefix_reads_only_its_keys() -> None:
    weights = load_file(str(TINY_WEIGHTS))
    release = {f"pi3.{k}": v for k, v in weights.items()}
    release["alignnet.scale_token"] = torch.zeros(1, 1, 8)  # another module of the UniSH release
    model = SceneBranch(SceneBranchConfig.tiny())
    load_pi3_weights(model, release, prefix="pi3.")
    assert torch.equal(model.encoder.registers, weights["encoder.register_tokens"])
    release.pop("pi3.decoder.0.ls2.gamma")
    with pytest.raises(ConversionError, match=r"'pi3\.decoder\.0\.ls2\.gamma'"):
        load_pi3_weights(SceneBranch(SceneBranchConfig.tiny()), release, prefix="pi3.")


def test_load_state_dict_file_rejects_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="weights.npz"):
        load_state_dict_file(path)
    with pytest.raises(ConversionError, match="not found"):
        load_state_dict_file(tmp_path / "absent.safetensors")
