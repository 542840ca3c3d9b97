"""`unish eval metrics` through Typer's CliRunner on the sub-app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flows.eval_cmd import eval_app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(eval_app, ["metrics", *args])


def test_depth_defaults_to_scale_and_shift(tmp_path: Path) -> None:
    gt = np.random.default_rng(0).uniform(0.5, 5.0, size=(2, 6, 8))
    gt[0, 0, 0] = 0.0
    np.savez(tmp_path / "d.npz", pred=gt.astype(np.float32), gt=gt)
    res = _run("--kind", "depth", str(tmp_path / "d.npz"))
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["align"] == "scale&shift" and out["max_depth"] == 70.0
    # float32 rounding leaves tiny residuals, so Adam wanders by ~lr: near zero, not exactly.
    assert out["abs_rel"] == pytest.approx(0.0, abs=1e-4)
    assert out["delta_1.25"] == 1.0
    assert out["valid_pixels"] == gt.size - 1


def test_depth_align_and_max_depth_come_from_the_file(tmp_path: Path) -> None:
    gt = np.random.default_rng(1).uniform(0.5, 5.0, size=(2, 6, 8))
    gt[1, 2, 3] = 50.0
    np.savez(tmp_path / "d.npz", pred=gt / 4.0, gt=gt, align="median", max_depth=10.0)
    out = json.loads(_run("--kind", "depth", str(tmp_path / "d.npz")).output)
    assert out["align"] == "median" and out["scale"] == pytest.approx(4.0)
    assert out["valid_pixels"] == gt.size - 1
    assert out["abs_rel"] == pytest.approx(0.0, abs=1e-12)


def test_motion_prints_the_sequence_means(tmp_path: Path) -> None:
    t = np.arange(120) / 30.0
    gt = np.random.default_rng(2).normal(scale=0.3, size=(1, 24, 3)) + np.stack(
        [1.0 * t, 0 * t, 0.2 * np.sin(t)], axis=-1
    )[:, None]
    pred = gt + np.array([0.0, 0.0, 0.01])  # a constant 1 cm offset
    np.savez(tmp_path / "m.npz", pred=pred, gt=gt)
    res = _run("--kind", "motion", str(tmp_path / "m.npz"))
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["frames"] == 120
    assert out["wa_mpjpe"] == pytest.approx(0.0, abs=1e-6)
    assert out["w_mpjpe"] == pytest.approx(0.0, abs=1e-6)
    assert out["rte"] == pytest.approx(0.0, abs=1e-6)
    assert "jitter" in out and "fs" not in out


def _fails_with(text: str, *args: str) -> None:
    """The command refuses with a message containing `text`. Read from the exception, not the screen: Rich's
    error panel wraps with the terminal width and the length of the temporary path."""
    res = runner.invoke(eval_app, ["metrics", *args], standalone_mode=False)
    assert isinstance(res.exception, typer.BadParameter), (res.exception, res.output)
    assert text in res.exception.message


def test_bad_inputs_fail_with_a_message(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", pred=np.ones((1, 2, 2)))
    _fails_with("gt", "--kind", "depth", str(tmp_path / "x.npz"))
    np.savez(tmp_path / "y.npz", pred=np.ones((1, 2, 2)), gt=np.ones((1, 2, 2)), align="lstsq")
    _fails_with("align", "--kind", "depth", str(tmp_path / "y.npz"))
    _fails_with("no such file", "--kind", "depth", str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "z.npz", pred=np.ones((5, 3)), gt=np.ones((5, 3)))
    _fails_with("frames, points, 3", "--kind", "motion", str(tmp_path / "z.npz"))
