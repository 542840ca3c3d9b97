"""UniSH release checkpoint (`unish_release.safetensors`) -> our UniSH, at the FULL official size.

The full-size file is written sparse (a valid safetensors file whose 6.5 GB of float32 zeros take no disk blocks),
with a few distinct values poked in; `load_unish` memory-maps it into the paper-size model built on the meta
device, so nothing close to 1.6 B parameters is ever held in memory."""
from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unish_model.convert import ConversionError
from unish_model.convert.unish import (check_unish_checkpoint, convert_unish_state_dict, load_unish_file,
                                       mmap_safetensors)
from unish_model.pipeline import UniSH, UniSHConfig, load_unish

DATA = Path(__file__).parent / "data" / "goldens"
LAYOUT = json.loads((DATA / "layouts" / "unish_release.json").read_text())
TINY_WEIGHTS = DATA / "unish_pipeline" / "weights.safetensors"
DROPPED = {"alignnet.init_body_pose", "alignnet.init_betas", "alignnet.init_cam"}  # never read by AlignNet


def _entries() -> list[tuple[str, list[int]]]:
    return [(e["key"], e["shape"]) for e in LAYOUT["keys"]]


def _write_sparse_safetensors(path: Path, entries: list[tuple[str, list[int]]],
                              values: dict[str, float] | None = None) -> dict[str, int]:
    """Float32 zeros in the given layout, sparse on disk; `values` sets the first element of some tensors.
    Returns each key's absolute byte offset."""
    header: dict[str, object] = {}
    offsets: dict[str, int] = {}
    offset = 0
    for key, shape in entries:
        size = 4 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offsets[key] = offset
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    start = 8 + len(blob)
    with open(path, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little"))
        handle.write(blob)
        handle.truncate(start + offset)
        for key, value in (values or {}).items():
            handle.seek(start + offsets[key])
            handle.write(np.float32(value).tobytes())
    return {k: start + v for k, v in offsets.items()}


def _paper_meta() -> UniSH:
    with torch.device("meta"):
        return UniSH(UniSHConfig.paper())


def test_full_layout_maps_onto_the_paper_model_without_missing_or_unexpected_keys():
    expected = _paper_meta().state_dict()
    official = {key: torch.empty(shape, device="meta") for key, shape in _entries()}
    converted = convert_unish_state_dict(official, expected, source="layouts/unish_release.json")
    assert set(converted) == set(expected)
    assert len(official) == LAYOUT["num_keys"] == 1783 and len(converted) == 1783 - len(DROPPED)
    dropped = sum(int(torch.Size(s).numel()) for k, s in _entries() if k in DROPPED)
    total = LAYOUT["total_parameters"] + LAYOUT["total_persistent_buffer_elements"]
    assert sum(t.numel() for t in expected.values()) == total - dropped


# official key -> (our module path, value poked into the file)
SPOTS = {
    "pi3.decoder.35.attn.k_norm.bias": ("scene.decoder.blocks.35.attn.k_norm.bias", 1.5),
    "pi3.encoder.register_tokens": ("scene.encoder.registers", 2.5),
    "pi3.camera_head.res_conv.1.res_conv3.weight": ("scene.camera_head.res_blocks.1.fc3.weight", 3.5),
    "backbone.blocks.31.attn.proj.weight": ("human.backbone.blocks.31.attn.out.weight", 4.5),
    "human_head.transformer.transformer.layers.5.1.fn.to_kv.weight": ("human.head.layers.5.cross_attn.kv.weight", 5.5),
    "human_head.init_body_pose": ("human.head.mean_pose", 6.5),
    "alignnet.cam_feature_adapter.1.bias": ("align.human_adapter.proj.bias", 7.5),
    "alignnet.decoder_layers.1.norm3.weight": ("align.layers.1.ffn_norm.weight", 8.5),
}


def test_full_size_release_file_loads_into_the_paper_model(tmp_path):
    path = tmp_path / "unish_release.safetensors"
    _write_sparse_safetensors(path, _entries(), {k: v for k, (_, v) in SPOTS.items()})
    assert path.stat().st_size > 6.5e9  # the full official layout in float32 ...
    assert path.stat().st_blocks * 512 < 64e6  # ... sparse on disk
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    model = load_unish(path)
    rss_growth_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    assert rss_growth_gib < 1.0, rss_growth_gib  # memory-mapped, never materialised
    assert isinstance(model, UniSH) and model.config == UniSHConfig.paper() and not model.training
    state = model.state_dict()
    assert not any(t.is_meta for t in state.values())
    assert sum(p.numel() for p in model.parameters()) == LAYOUT["total_parameters"]
    for official, (ours, value) in SPOTS.items():
        assert state[ours].flatten()[0].item() == value, official
        assert state[ours].flatten()[-1].item() == 0.0, official


def test_renamed_key_names_the_key_and_the_file(tmp_path):
    for old, new in [("pi3.decoder.7.attn.q_norm.weight", "pi3.decoder.7.attn.q_norm.gamma"),
                     ("human_head.decpose.weight", "human_head.dec_pose.weight"),
                     ("alignnet.scale_token", "alignnet.scale_tokens"),
                     ("backbone.last_norm.bias", "vit.last_norm.bias")]:
        path = tmp_path / f"renamed_{old.split('.')[0]}.safetensors"
        _write_sparse_safetensors(path, [(new if k == old else k, s) for k, s in _entries()])
        for load in (load_unish, check_unish_checkpoint):
            with pytest.raises(ConversionError) as err:
                load(path)
            assert str(path) in str(err.value) and repr(new) in str(err.value), (load, str(err.value))


def test_missing_and_misshaped_keys_are_named_in_the_files_terms(tmp_path):
    path = tmp_path / "missing.safetensors"
    _write_sparse_safetensors(path, [(k, s) for k, s in _entries() if k != "pi3.conf_decoder.blocks.2.norm2.bias"])
    pattern = r"missing\.safetensors: missing key 'pi3\.conf_decoder\.blocks\.2\.norm2\.bias'"
    with pytest.raises(ConversionError, match=pattern):
        check_unish_checkpoint(path)
    path = tmp_path / "misshaped.safetensors"
    _write_sparse_safetensors(path, [(k, [7] if k == "alignnet.trans_head.bias" else s) for k, s in _entries()])
    with pytest.raises(ConversionError, match=r"shape mismatch for 'alignnet\.trans_head\.bias'"):
        load_unish(path)


def test_tiny_release_file_round_trip_and_pt_format(tmp_path):
    weights = load_file(str(TINY_WEIGHTS))
    model = load_unish_file(TINY_WEIGHTS, UniSHConfig.tiny())
    assert torch.equal(model.scene.decoder.registers, weights["pi3.register_token"])
    assert torch.equal(model.human.head.mean_betas, weights["human_head.init_betas"])
    assert torch.equal(model.align.scale_token, weights["alignnet.scale_token"])
    pt_path = tmp_path / "unish.pt"
    torch.save(weights, pt_path)
    from_pt = load_unish(pt_path, UniSHConfig.tiny())
    for (name, a), b in zip(model.state_dict().items(), from_pt.state_dict().values()):
        assert torch.equal(a, b), name


def test_mmap_reader_matches_safetensors_and_handles_unaligned_tensors(tmp_path):
    weights = load_file(str(TINY_WEIGHTS))
    mapped = mmap_safetensors(TINY_WEIGHTS)
    assert mapped.keys() == weights.keys()
    assert all(torch.equal(mapped[k], weights[k]) for k in weights)
    # a bf16 tensor of odd length leaves the next float32 tensor unaligned: it is copied, values intact
    path = tmp_path / "unaligned.safetensors"
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    b = torch.tensor([[4.0, 5.0]], dtype=torch.float32)
    header = {"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
              "b": {"dtype": "F32", "shape": [1, 2], "data_offsets": [6, 14]}, "__metadata__": {"x": "y"}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + a.view(torch.uint8).numpy().tobytes()
                     + b.numpy().tobytes())
    out = mmap_safetensors(path)
    assert torch.equal(out["a"], a) and torch.equal(out["b"], b)
    path.write_bytes(b"\x10\x00")
    with pytest.raises(ConversionError, match="not a safetensors file"):
        mmap_safetensors(path)


def test_unknown_prefix_in_a_state_dict_is_rejected():
    state = load_file(str(TINY_WEIGHTS))
    state["smpl.v_template"] = torch.zeros(3)
    with torch.device("meta"):
        model = UniSH(UniSHConfig.tiny())
    with pytest.raises(ConversionError, match=r"my\.ckpt: unexpected key 'smpl\.v_template'"):
        convert_unish_state_dict(state, model.state_dict(), source="my.ckpt")
