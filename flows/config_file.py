"""`--config FILE`: a command's settings from a TOML or YAML file, under the flags given on the command line.

The file holds a table named after the command (`[curate]`, `[relabel]`, `[infer]`), so one file can configure
several commands; a file without such a table is the command's settings itself.  Keys are the names of the
command's settings (`flows.params.CurateConfig`, `flows.relabel.RelabelConfig`, `flows.infer_cmd.InferConfig`),
with `-` and `_` alike; an unknown key is refused, naming the known ones.  A flag given on the command line wins
over the file; a flag left at its default does not.  JSON is YAML, so the effective configuration a run writes
(`curate.json`, a label version's `version.json`, infer's `summary.json`) is itself a config file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


class ConfigFileError(ValueError):
    """The file cannot be read, or holds what the command does not take (the message names the file)."""


def read_config(path: Path, command: str, known: Iterable[str]) -> dict[str, Any]:
    """The settings for `command` in `path` (TOML by its `.toml` suffix, else YAML), keys checked against `known`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFileError(f"config file {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) if text.strip() else {}
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError: the parser says where
        raise ConfigFileError(f"config file {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'}: "
                              f"{' '.join(str(e).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path}: expected a table of settings, found {type(data).__name__}")
    section = data.get(command)
    if isinstance(section, dict):
        data = section
    settings = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = sorted(known)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ConfigFileError(f"config file {path}: unknown {command} settings: {', '.join(unknown)} "
                              f"(known: {', '.join(known)})")
    return settings


def given_on_command_line(ctx: Any, names: Iterable[str]) -> set[str]:
    """The parameters the user set (command line or environment), as opposed to left at their defaults.
    (By the source's name: Typer carries its own copy of Click, whose enum is not `click`'s.)"""
    given = set()
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return given


def dumps(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True, default=str)
