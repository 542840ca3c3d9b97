"""The models a command runs with, from the weights folder or the files given: UniSH (official weights, or a tiny
random model for smoke tests) and the SMPL body model.  Shared by `unish infer` and `unish eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(stderr=True)


def load_model(weights: Path | None, tiny_random: bool, device: str, seed: int = 0) -> Any:
    """The official weights (a file, or the registry's `unish_release`), or a tiny random model (smoke tests)."""
    import torch

    from unish_model.pipeline import UniSH, UniSHConfig, load_unish

    if tiny_random:
        torch.manual_seed(seed)
        return UniSH(UniSHConfig.tiny()).to(device).eval()
    if weights is None:
        from tasks.weights import require

        weights = require("unish_release")
    return load_unish(weights, device=device)


def load_body_model(path: Path | None, tiny_random: bool, scratch: Path) -> Any:
    """The SMPL body model for meshes and world joints: --body-model, else the weights folder's
    SMPL_NEUTRAL.npz (the registry's `smpl_neutral`; converted from a SMPL_NEUTRAL.pkl beside it on first use),
    else with --tiny-random a synthetic model in SMPL's layout; None when the user passes `none`."""
    from unish_model.body import BodyModel, write_synthetic_body_model

    if path is not None and str(path).lower() == "none":
        return None
    if path is not None:
        return BodyModel.from_file(path)
    from tasks.weights import weights_path

    npz = weights_path("smpl_neutral")  # SMPL_NEUTRAL.npz in the weights folder
    pkl = npz.with_suffix(".pkl")
    if npz.is_file():
        return BodyModel.from_file(npz)
    if pkl.is_file():
        from unish_model.body import convert_smpl_pickle

        console.print(f"converting {pkl} to {npz} (restricted reader, once)", markup=False, highlight=False)
        return BodyModel.from_file(convert_smpl_pickle(pkl, npz))
    if tiny_random:
        return BodyModel.from_file(write_synthetic_body_model(scratch / "synthetic_smpl.npz"))
    raise FileNotFoundError(
        f"no SMPL body model: pass --body-model FILE.npz (SMPL's layout, see unish_model.body), or put the "
        f"official SMPL neutral .pkl (register at https://smpl.is.tue.mpg.de) at {pkl} (converted on first use), "
        f"or pass --body-model none for no meshes")
