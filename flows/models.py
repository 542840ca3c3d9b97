"""The models a command runs with, from the weights folder or the files given: UniSH (official weights, or a tiny
random model for smoke tests) and the SMPL body model.  Shared by `unish infer` and `unish eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(stderr=True)


def load_model(weights: Path | None, tiny_random: bool, device: str, seed: int = 0) -> Any:
    """UniSH from the official weights (a file, or the registry's `unish_release`), from a `unish train` run or
    checkpoint (its folder or model.safetensors: the size its model.json records), or a tiny random model (smoke
    tests)."""
    import torch

    from unish_model.pipeline import UniSH, UniSHConfig, load_unish

    if tiny_random:
        torch.manual_seed(seed)
        return UniSH(UniSHConfig.tiny()).to(device).eval()
    if weights is None:
        from tasks.weights import require

        weights = require("unish_release")
    if Path(weights).is_dir() or Path(weights).suffix == ".safetensors":
        from unish_model.train.checkpoint import load_model as load_checkpoint

        return load_checkpoint(weights)[0].to(device).eval()  # ours or an official file (its exported size)
    return load_unish(weights, device=device)


def weights_file(weights: Path) -> Path:
    """The file `load_model` reads for `weights` (a training run or checkpoint folder holds model.safetensors)."""
    from unish_model.train.checkpoint import MODEL_FILE

    return Path(weights) / MODEL_FILE if Path(weights).is_dir() else Path(weights)


def model_needs(weights: Path | None, tiny_random: bool, needed_by: str) -> list[Any]:
    """The UniSH weights `load_model` will read, as `tasks.weights.Need`s (none for the tiny random model)."""
    from tasks.weights import Need, how_to_get, need, spec

    if tiny_random:
        return []
    if weights is None:
        return [need("unish_release", needed_by)]
    path = weights_file(Path(weights))
    return [Need(needed_by, path, None, how_to_get(spec("unish_release"), path))]


def body_needs(path: Path | None, tiny_random: bool, needed_by: str) -> list[Any]:
    """The SMPL file `load_body_model` will read (none for `none`, or for --tiny-random without one: synthetic)."""
    from tasks.weights import Need, need, weights_path

    if path is not None and str(path).lower() == "none":
        return []
    if path is not None:
        return [Need(needed_by, Path(path), None, "an .npz in SMPL's layout (see unish_model.body), or "
                     "--body-model none for no meshes")]
    if tiny_random and not weights_path("smpl_neutral").is_file():
        return []
    return [need("smpl_neutral", needed_by)]


def load_body_model(path: Path | None, tiny_random: bool, scratch: Path) -> Any:
    """The SMPL body model for meshes and world joints: --body-model, else the weights folder's SMPL_NEUTRAL.npz
    (the registry's `smpl_neutral`, converted once from the official pickle: see tasks.weights), else with
    --tiny-random a synthetic model in SMPL's layout; None when the user passes `none`."""
    from unish_model.body import BodyModel, write_synthetic_body_model

    if path is not None and str(path).lower() == "none":
        return None
    if path is not None:
        return BodyModel.from_file(path)
    from tasks.weights import WeightsMissing, how_to_get, spec, weights_path

    npz = weights_path("smpl_neutral")
    if npz.is_file():
        return BodyModel.from_file(npz)
    if tiny_random:
        return BodyModel.from_file(write_synthetic_body_model(scratch / "synthetic_smpl.npz"))
    raise WeightsMissing(f"no SMPL body model: {npz} not found; {how_to_get(spec('smpl_neutral'), npz)}; or pass "
                         f"--body-model FILE.npz (SMPL's layout), or --body-model none for no meshes")
