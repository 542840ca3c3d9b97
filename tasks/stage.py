"""The labelling-stage interface and registry.

The curation flow runs, per clip window: decode -> [labelling stages, in profile order] -> pack.
A labelling stage is any object that satisfies `LabelStage`; registering it under a name lets a
profile (or `--stages`) put it between decode and pack without touching the flow.

Shared by every stage: `split_params` (a stage's keyword parameters into its config dataclasses), `pick_device`,
`package_version` (the provenance record of the library a backend ran on) and `BackendUnavailable` (a backend's
library lacks a part it needs).
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np


class ClipRejected(Exception):
    """A filter decided the clip is not usable; `rule` becomes the index reason (`rejected:<rule>`).

    `stats` (scalars: what the rule looked at) go into the index; `evidence` (entry -> np.ndarray | dict: what a
    person needs to see why the rule fired, e.g. every raw detection per frame) is kept beside the staged clip
    in the run's work folder (`tasks.staging.write_evidence`), for `unish report` to draw."""

    def __init__(self, rule: str, detail: str = "", stats: dict[str, Any] | None = None,
                 evidence: dict[str, Any] | None = None):
        super().__init__(f"{rule}: {detail}" if detail else rule)
        self.rule = rule
        self.detail = detail
        self.stats = stats or {}
        self.evidence = evidence or {}


@dataclass
class ClipWindow:
    """One decoded clip window on its way through the labelling stages.

    frames: (T, H, W, 3) uint8 RGB at the model's input size (518x294 landscape, 294x518 portrait).
    labels: label family -> {entry name -> np.ndarray | dict | str}; each entry becomes one member
      of the clip's WebDataset sample (`<family>.<entry>.npy` for arrays, `.json` for dicts).
    provenance: label family -> {backend, weights_sha256, package_version, params, version}.
    """

    key: str
    source_id: str
    start_s: float
    end_s: float
    frames: np.ndarray
    frame_times_s: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)


@runtime_checkable
class LabelStage(Protocol):
    name: str  # label family it writes, e.g. "people", "masks", "depth", "keypoints"
    version: str  # bump when the output changes: part of cache keys and label versions

    def setup(self) -> None:
        """Load weights once per worker; raise before any video is touched if they are missing."""

    def __call__(self, clip: ClipWindow) -> ClipWindow:
        """Add labels to `clip` (or raise ClipRejected)."""


def split_params(stage: str, params: dict[str, Any], *classes: type) -> tuple[Any, ...]:
    """Build one dataclass per class from the keyword parameters a stage was given, each taking the
    fields it declares; a name no class declares is an error naming the stage and what it accepts."""
    names = [{f.name for f in fields(c)} for c in classes]
    known = set().union(*names)
    unknown = set(params) - known
    if unknown:
        raise TypeError(f"unknown {stage} parameters: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return tuple(c(**{k: v for k, v in params.items() if k in n}) for c, n in zip(classes, names))


def pick_device(device: str | None) -> str:
    """The device a stage was asked for, else CUDA when there is one."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class BackendUnavailable(RuntimeError):
    """A backend's library is missing a part it needs (every stage raises this one); the message says what to
    install."""


def package_version(dist: str, *alternatives: str, module: Any = None) -> str:
    """`<name> <version>` for provenance records.

    With `module`: `dist` and the module's `__version__`, the version the import really loaded (OpenCV and
    Ultralytics are installed under several distribution names).  Otherwise the first installed distribution among
    `dist` and `alternatives`, under its own name; when none is, `<last name> (version unknown)`."""
    if module is not None:
        return f"{dist} {getattr(module, '__version__', 'unknown')}"
    names = (dist, *alternatives)
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{names[-1]} (version unknown)"


def weights_needed(stage: Any) -> list[Any]:
    """The weights files a stage (or the backend inside it) will load in setup(), as `tasks.weights.Need`s; a stage
    that says nothing needs none."""
    fn = getattr(stage, "weights_needed", None)
    if callable(fn):
        return list(fn())
    for inner in ("backend", "segmenter"):
        if getattr(stage, inner, None) is not None:
            return weights_needed(getattr(stage, inner))
    return []


def check_stage_weights(names: list[str], params: dict[str, dict[str, Any]] | None = None) -> None:
    """Build the stages (no setup, nothing loaded) and raise `WeightsMissing` listing every missing file at once."""
    from tasks.weights import check_needs

    needs = []
    for name in names:
        needs += weights_needed(build_stage(name, **dict((params or {}).get(name) or {})))
    check_needs(needs)


StageFactory = Callable[..., LabelStage]
_REGISTRY: dict[str, StageFactory] = {}


def register_stage(name: str) -> Callable[[StageFactory], StageFactory]:
    """Register a stage factory under `name` (`"people:hog"`, `"masks:sam2"`, ...)."""

    def wrap(factory: StageFactory) -> StageFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"stage {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered_stages() -> dict[str, StageFactory]:
    _import_builtin_stages()
    return dict(_REGISTRY)


def build_stage(name: str, **params: Any) -> LabelStage:
    stages = registered_stages()
    if name not in stages:
        broken = "".join(f"\n  {m} could not be imported: {err}" for m, err in _IMPORT_ERRORS.items())
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(sorted(stages)) or 'none'}{broken}")
    return stages[name](**params)


_IMPORT_ERRORS: dict[str, str] = {}


def _import_builtin_stages() -> None:
    # Stage modules register themselves on import. A module whose optional dependency is missing only
    # hides its stages; the import error is kept and shown when one of them is asked for.
    import importlib

    for module in BUILTIN_STAGE_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as e:
            _IMPORT_ERRORS[module] = str(e)


BUILTIN_STAGE_MODULES: list[str] = ["tasks.people", "tasks.masks", "tasks.depth", "tasks.keypoints"]
