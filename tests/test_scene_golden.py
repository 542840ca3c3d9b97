"""Scene branch (pi3) vs the official code's golden outputs, through `python -m unish_model.goldens`."""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unish_model import goldens
from unish_model.golden_calls import GoldenRun
from unish_model.golden_calls.pi3 import scene_config_from_golden
from unish_model.scene import SceneBranch, SceneBranchConfig

GOLDEN = Path(__file__).parent / "data" / "goldens" / "pi3"
TOL = 1e-5


@pytest.fixture(scope="module")
def report() -> goldens.GoldenReport:
    return goldens.check_golden(GOLDEN, TOL)


def test_cli_passes_on_pi3_golden(capsys: pytest.CaptureFixture[str]) -> None:
    assert goldens.main([str(GOLDEN)]) == 0
    printed = capsys.readouterr().out
    assert "ALL PASS" in printed and "out_points" in printed


def test_every_output_and_intermediate_within_tolerance(report: goldens.GoldenReport) -> None:
    compared = {c.name: c for c in report.comparisons}
    expected = {"out_points", "out_local_points", "out_conf", "out_camera_poses", "dbg_encoder_x_norm_patchtokens",
                "dbg_decode_hidden", "dbg_decode_pos", "dbg_point_decoder_out", "dbg_conf_decoder_out",
                "dbg_camera_decoder_out"}
    assert expected <= set(compared)
    for name in expected:
        assert compared[name].passed(TOL), (name, compared[name])
    assert report.exempt == {}


def _perturbed_copy(tmp_path: Path, key: str, delta: float) -> Path:
    folder = tmp_path / "pi3"
    shutil.copytree(GOLDEN, folder)
    weights = load_file(str(folder / "weights.safetensors"))
    weights[key] = weights[key] + delta
    save_file(weights, str(folder / "weights.safetensors"))
    return folder


@pytest.mark.parametrize("key", ["decoder.3.attn.q_norm.weight", "image_std", "camera_head.fc_rot.bias"])
def test_perturbed_weight_fails(tmp_path: Path, key: str) -> None:
    folder = _perturbed_copy(tmp_path, key, 1e-2)
    report = goldens.check_golden(folder, TOL)
    assert not report.passed
    assert goldens.main([str(folder)]) == 1


def test_config_from_golden_official_column_is_paper() -> None:
    config = json.loads((GOLDEN / "config.json").read_text())
    assert scene_config_from_golden(config["tiny_config"], which=1) == SceneBranchConfig.paper()
    assert scene_config_from_golden(config["tiny_config"]) == SceneBranchConfig.tiny()


def _fake_golden(tmp_path: Path, run: object) -> Path:
    """A golden folder whose runner is a fake module, to test the CLI's bookkeeping."""
    module = types.ModuleType("unish_model.golden_calls._fake_for_tests")
    module.run = run  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    folder = tmp_path / "fake"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"golden": "_fake_for_tests"}))
    save_file({"w": torch.zeros(1)}, str(folder / "weights.safetensors"))
    np.savez(folder / "io.npz", in_x=np.ones(3, np.float32), out_a=np.full(3, 100.0, np.float32),
             out_b=np.zeros(2, np.float32), dbg_c=np.zeros(2, np.float32))
    return folder


def test_cli_missing_output_fails_unless_exempt(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def run_missing(config, weights, inputs):  # noqa: ANN001
        seen.update(inputs=inputs, weights=weights)
        return GoldenRun(outputs={"a": np.full(3, 100.0005, np.float32)})

    folder = _fake_golden(tmp_path, run_missing)
    report = goldens.check_golden(folder, TOL)
    assert set(seen["inputs"]) == {"in_x"}  # type: ignore[arg-type]
    assert not report.passed  # out_b missing, not exempt
    assert any(c.name == "out_b" and "missing" in c.problem for c in report.comparisons)
    # relative error uses max(1, max|golden|): 5e-4 / 100 = 5e-6 passes
    assert [c for c in report.comparisons if c.name == "out_a"][0].error == pytest.approx(5e-6, rel=1e-2)

    def run_exempt(config, weights, inputs):  # noqa: ANN001
        return GoldenRun(outputs={"a": np.full(3, 100.0, np.float32), "dbg_c": np.ones(2, np.float32)},
                         exempt={"b": "official quirk"})

    folder = _fake_golden(tmp_path / "2", run_exempt)
    report = goldens.check_golden(folder, TOL)
    assert "  exempt b: official quirk" in report.lines()
    assert not report.passed  # dbg_c provided and wrong -> fails
    del sys.modules["unish_model.golden_calls._fake_for_tests"]


def test_frames_are_permutation_equivariant() -> None:
    """pi3 has no frame-index embedding: permuting the input frames permutes every per-frame output."""
    torch.manual_seed(0)
    model = SceneBranch(SceneBranchConfig.tiny(encoder_depth=1, decoder_depth=2, point_decoder_depth=1,
                                               camera_decoder_depth=1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        images = torch.rand(1, 3, 3, 28, 42)
        order = torch.tensor([2, 0, 1])
        out = model(images)
        out_perm = model(images[:, order])
    assert out.points.shape == (1, 3, 28, 42, 3) and out.hidden.shape == (3, 5 + 6, 96)
    torch.testing.assert_close(out_perm.local_points, out.local_points[:, order], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_perm.camera_poses, out.camera_poses[:, order], rtol=1e-4, atol=1e-5)
    # the frames do interact (odd blocks attend across frames): changing one frame changes another's output
    other = images.clone()
    other[:, 1] = torch.rand_like(other[:, 1])
    with torch.no_grad():
        changed = model(other)
    assert not torch.allclose(changed.local_points[:, 0], out.local_points[:, 0])
