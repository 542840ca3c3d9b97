"""Per-golden runners for `python -m unish_model.goldens`.

A golden folder holds `config.json` (with `"golden": NAME` and the tiny sizes), `weights.safetensors` in the
official key layout and `io.npz` (`in_*` inputs, `out_*` official outputs, `dbg_*` intermediates).
`unish_model.golden_calls.NAME` builds our model at the golden's sizes from `config`, converts the official
weights through our converter, runs the official call's equivalent and returns our outputs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class GoldenRun:
    # name without the `out_` prefix -> our output, compared against io.npz's `out_<name>`
    outputs: dict[str, np.ndarray]
    # name -> why it is not compared (an official quirk we deliberately do not reproduce)
    exempt: dict[str, str] = field(default_factory=dict)
    # optional extra io.npz file for goldens with a second call (e.g. `io_inference.npz`)
    extra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Conventions used by `python -m unish_model.goldens` (helpers; the contract above is unchanged):
# * `run(config, weights, inputs)`: `config` = the parsed config.json, `weights` = weights.safetensors as a
#   `name -> torch.Tensor` dict (official key names), `inputs` = io.npz's `in_*` arrays under their own names
#   (e.g. "in_imgs"); inputs of an extra io file are added as "<file stem>/<name>" (e.g. "io_inference/in_x").
# * An `outputs` name that starts with `DEBUG_PREFIX` ("dbg_") is compared against the io.npz array of that same
#   name (optional intermediates); every other name `x` against `out_x`.
# * `exempt` names are `out_*` names without the prefix (or "<file stem>/<name>" for an extra io file).

DEBUG_PREFIX = "dbg_"


def input_array(inputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """The golden input `name`, given with or without its `in_` prefix."""
    key = name if name.startswith("in_") else f"in_{name}"
    if key not in inputs:
        raise KeyError(f"golden input {key!r} not found; have {sorted(inputs)}")
    return inputs[key]


def pick_sizes(section: dict, which: int = 0) -> dict:
    """Flatten one tiny_config section of `[tiny, official]` pairs: which=0 tiny values, which=1 official."""
    return {key: (value[which] if isinstance(value, list) and len(value) == 2 else value)
            for key, value in section.items()}
