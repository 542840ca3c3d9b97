"""Loading a copied golden folder (tests/data/goldens/<name>) and the goldens' error measure."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

GOLDENS = Path(__file__).parent / "data" / "goldens"
TOL = 1e-5  # the goldens' README: independent float32 implementations agree to 1e-5 relative


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max(1, max|ref|), as `python -m unish_model.goldens` prints it."""
    return float(np.abs(ours - ref).max() / max(1.0, float(np.abs(ref).max())))


def load_golden(name: str) -> tuple[dict, dict, dict]:
    """(config, official weights, io.npz arrays) of one golden folder."""
    folder = GOLDENS / name
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "io.npz", allow_pickle=False) as io:
        arrays = dict(io)
    return config, load_file(str(folder / "weights.safetensors")), arrays
