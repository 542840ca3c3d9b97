"""Our AlignNet vs the official UniSH AlignNet golden (tiny, random weights), at 6, 2.5 and 0.1 fps."""
from __future__ import annotations

import pytest
import torch

from golden_helpers import TOL, load_golden, rel_err
from unish_model.alignnet import AlignNet, AlignNetConfig, frame_positions, rope_table
from unish_model.golden_calls import alignnet as runner


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict, dict]:
    return load_golden("alignnet")


def test_runner_matches_every_official_output(golden):
    config, weights, io = golden
    result = runner.run(config, weights, io)
    expected = {k[4:] for k in io if k.startswith("out_")}
    assert set(result.outputs) == expected and not result.exempt
    for name in sorted(expected):
        ours, ref = result.outputs[name], io[f"out_{name}"]
        assert ours.shape == ref.shape, name
        assert rel_err(ours, ref) <= TOL, (name, rel_err(ours, ref))


@pytest.mark.parametrize("key", ["decoder_layers.1.cross_k_proj.weight", "register_feature_adapter.1.weight",
                                 "scale_token"])
def test_perturbed_weight_is_detected(golden, key):
    config, weights, io = golden
    bad = dict(weights)
    bad[key] = weights[key] + 0.05 * torch.randn(weights[key].shape, generator=torch.Generator().manual_seed(0))
    result = runner.run(config, bad, io)
    worst = max(rel_err(result.outputs[k], io[f"out_{k}"]) for k in result.outputs)
    assert worst > 1e-4


def test_time_rope_matters_and_frames_are_not_interchangeable(golden):
    # swapping two frames' inputs must not just permute the outputs: time enters through the RoPE
    config, weights, io = golden
    swapped = dict(io)
    order = [1, 0, 2]
    swapped["in_hidden_tokens"] = io["in_hidden_tokens"][:, order]
    swapped["in_cam_token"] = io["in_cam_token"][:, order]
    result = runner.run(config, weights, swapped)
    assert rel_err(result.outputs["trans_cam"][:, order], io["out_trans_cam"]) > 1e-4


def test_frame_positions_and_interpolated_table():
    assert frame_positions(4, 6.0).tolist() == [0, 1, 2, 3]
    assert frame_positions(3, 2.5).tolist() == [0, 2, 5]  # round(2.4), round(4.8)
    cos, sin = rope_table(8, 121, 100.0, 120)
    cos120, sin120 = rope_table(8, 120, 100.0, 120)
    assert cos.shape == (121, 8)
    # the 120-row table is stretched over 121 rows: ends pinned, the middle squeezed
    assert torch.allclose(cos[0], torch.ones(8)) and torch.allclose(sin[0], torch.zeros(8))
    assert torch.allclose(cos[120], cos120[119]) and torch.allclose(sin[120], sin120[119])
    assert not torch.allclose(cos[60], cos120[60])


def test_paper_sizes_and_dropout_only_in_training():
    model = AlignNet(AlignNetConfig.tiny())
    scene, human = torch.randn(1, 2, 9, 96), torch.randn(1, 2, 1024)
    model.eval()
    with torch.no_grad():
        a, b = model(scene, human), model(scene, human)
    assert torch.equal(a.trans_cam, b.trans_cam) and a.scale.shape == (1, 1) and (a.scale > 0).all()
    assert (a.trans_cam[..., 2] > 0).all()
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c = model(scene, human)
    assert not torch.allclose(c.trans_cam, a.trans_cam)
    paper = AlignNetConfig.paper()
    assert (paper.scene_dim, paper.hidden_dim, paper.num_heads, paper.ff_dim) == (2048, 512, 8, 512)
