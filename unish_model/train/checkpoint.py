"""Training checkpoints: written whole or not at all, the last K kept, resumed exactly, and exported.

    RUN/checkpoints/step-00000120/
        model.safetensors   the whole model, our parameter names (loads with `load_model`, in infer and eval)
        model.json          the model's configuration (UniSHConfig) and what produced the weights
        trainer.pt          optimiser, LR schedule, step, epoch, skipped-step count, RNG states
                            (tensors, numbers and lists only: loaded with torch.load(weights_only=True))
        loader.json         the data loader's position (epoch, batches consumed)
    RUN/model.safetensors, RUN/model.json   the latest model, for `unish infer --checkpoint RUN`

A checkpoint folder is written under a temporary name and renamed (shards.atomic), so a folder named
`step-*` is complete; a run killed while writing one leaves only a temporary folder, which the next save
removes. `export_official` writes the official `unish_release` layout (safetensors, the release's key names).
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
import typing
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shards.atomic import atomic_path, remove_temp_files, write_json_atomic
from unish_model.convert.unish import export_unish_state_dict, load_unish_file
from unish_model.pipeline import UniSH, UniSHConfig

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
MODEL_CONFIG = "model.json"
TRAINER_FILE = "trainer.pt"
LOADER_FILE = "loader.json"
EXPORT_CONFIG_KEY = "unish_config"  # safetensors metadata of an export: the model's sizes
_STEP_PREFIX = "step-"


# ------------------------------------------------------------------------------------------ model config


def config_to_dict(config: UniSHConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)  # JSON has no tuples
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> UniSHConfig:
    return _from_dict(UniSHConfig, data)


MODEL_PRESETS = {"paper": UniSHConfig.paper, "small": UniSHConfig.small, "tiny": UniSHConfig.tiny}


# ------------------------------------------------------------------------------------------ model files


def is_official_release(path: Path) -> bool:
    """Whether a safetensors file holds the official release's names (`pi3.*`, ...) rather than ours."""
    with safe_open(str(path), framework="pt") as f:
        first = next(iter(f.keys()), "")
    return first.startswith(("pi3.", "backbone.", "human_head.", "alignnet."))


def model_file(source: Path) -> Path:
    """The model weights of a run folder, a checkpoint folder or a file."""
    source = Path(source)
    return source / MODEL_FILE if source.is_dir() else source


def load_model(source: str | Path, config: UniSHConfig | None = None) -> tuple[UniSH, dict[str, Any]]:
    """UniSH (float32, CPU, eval mode) from our checkpoint (a run or checkpoint folder, or its model.safetensors
    with model.json beside it) or from the official `unish_release.safetensors` (paper sizes unless `config`
    says otherwise). Returns the model and what model.json records (empty for an official file)."""
    path = model_file(Path(source))
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path}")
    if is_official_release(path):
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get(EXPORT_CONFIG_KEY)  # set by `export_official` (any model size)
        if config is None and recorded:
            config = config_from_dict(json.loads(recorded))
        return load_unish_file(path, config, mmap=False).float(), {}
    info_path = path.with_name(MODEL_CONFIG)
    if not info_path.is_file():
        raise FileNotFoundError(f"{path} has no {MODEL_CONFIG} beside it (its model configuration)")
    info = json.loads(info_path.read_text())
    model = UniSH(config or config_from_dict(info["config"]))
    state = load_file(str(path), device="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval(), info


def save_model(model: UniSH, folder: Path, info: Mapping[str, Any]) -> None:
    """model.safetensors + model.json in `folder` (each written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MODEL_FILE) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    write_json_atomic(folder / MODEL_CONFIG, {**info, "config": config_to_dict(model.config)})


def export_official(source: str | Path, out: str | Path) -> Path:
    """Write our checkpoint in the official `unish_release` layout (safetensors, the release's key names), for
    anyone with the official code; `load_model` (and our converter) read it back."""
    model, _ = load_model(source)
    official = export_unish_state_dict(model.state_dict())
    with atomic_path(Path(out)) as tmp:
        save_file({k: v.detach().contiguous() for k, v in official.items()}, str(tmp),
                  metadata={"format": "pt", "exported_by": "unish",
                            EXPORT_CONFIG_KEY: json.dumps(config_to_dict(model.config))})
    return Path(out)


# ------------------------------------------------------------------------------------------ trainer state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
                             "numpy": _numpy_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_folder(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"{_STEP_PREFIX}{step:08d}"


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_STEP_PREFIX) and "." not in p.name
            and (p / TRAINER_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(_STEP_PREFIX):]))


def save_checkpoint(run: Path, step: int, model: UniSH, trainer: Mapping[str, Any], loader: Mapping[str, Any],
                    info: Mapping[str, Any], keep: int) -> Path:
    """One checkpoint folder (atomically), the run's latest model beside it, and only the newest `keep` kept."""
    run = Path(run)
    target = step_folder(run, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(target.parent)  # a save killed half-way
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_model(model, tmp, {**info, "step": step})
        torch.save(dict(trainer), tmp / TRAINER_FILE)
        write_json_atomic(tmp / LOADER_FILE, dict(loader))
    save_model(model, run, {**info, "step": step})
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return target


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model state, trainer state, loader state, model.json) of a checkpoint folder."""
    folder = Path(folder)
    state = load_file(str(folder / MODEL_FILE), device="cpu")
    trainer = torch.load(folder / TRAINER_FILE, map_location="cpu", weights_only=True)
    loader = json.loads((folder / LOADER_FILE).read_text())
    info = json.loads((folder / MODEL_CONFIG).read_text())
    return state, trainer, loader, info


__all__ = ["CHECKPOINTS", "MODEL_FILE", "MODEL_PRESETS", "config_from_dict", "config_to_dict", "export_official",
           "is_official_release", "list_checkpoints", "load_checkpoint", "load_model", "model_file", "rng_state",
           "save_checkpoint", "save_model", "set_rng_state", "step_folder"]
