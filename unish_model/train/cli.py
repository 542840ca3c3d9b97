"""The training command line, generated from TrainConfig's fields (one place for every default).

    python -m unish_model.train --stage 1 --data RUN --out OUT --init unish_release.safetensors
    python -m unish_model.train --config stage1.yaml --max-steps 100       (flags override the file)
    torchrun --nproc-per-node 8 -m unish_model.train --config stage2.toml     (one process per GPU)

`unish train` takes the same flags. Lists take several values (`--data a b`), mappings repeat `KEY=VALUE`
(`--labels depth=latest`, `--loss tau=0.25`, values read as JSON where they parse).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any, NoReturn, Sequence

from unish_model.train.loop import TrainConfig, read_config_file, train

_HELP = {
    "stage": "1 human surface refinement (point decoder), 2 coarse alignment (human branch + AlignNet, BEDLAM), "
             "3 fine alignment (AlignNet)",
    "data": "run folders, shard patterns (a/shard-{0000..0099}.tar) or fsspec URLs (s3://...)",
    "out": "the run folder: checkpoints, metrics.jsonl, tensorboard/, model.safetensors; rerun to resume",
    "init": "the official unish_release.safetensors, or a previous stage's run folder or checkpoint",
    "original": "stage 1: the pre-trained model the point regulariser keeps to (default: --init)",
    "labels": "label version per family: FAMILY=main|latest|VERSION (repeatable)",
    "loss": "a stage loss setting, KEY=VALUE (repeatable; see unish_model/losses/config.py)",
    "body_model": "SMPL_NEUTRAL.npz for stages 2 and 3 (python -m unish_model.body SMPL_NEUTRAL.pkl ... converts "
                  "the official file)",
}


def _pairs(items: Sequence[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unish train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    ap.add_argument("--config", help="a TOML or YAML file of these settings (flags given here override it)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = _HELP.get(f.name, "") + (f" (default: {default})" if default not in (None, {}, []) else "")
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        if hint is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif origin is list:
            ap.add_argument(flag, nargs="+", help=help_text)
        elif origin is dict:
            ap.add_argument(flag, action="append", metavar="KEY=VALUE", help=help_text)
        elif origin is tuple:
            ap.add_argument(flag, nargs=2, type=float, help=help_text)
        else:
            kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
            ap.add_argument(flag, type=kinds[0], help=help_text)
    return ap


def config_from_args(argv: Sequence[str]) -> TrainConfig:
    args = vars(parser().parse_args(argv))
    settings: dict[str, Any] = read_config_file(args.pop("config")) if "config" in args else {}
    for name in ("labels", "loss"):
        if name in args:
            settings[name] = {**settings.get(name, {}), **_pairs(args.pop(name), "--" + name)}
    settings.update(args)
    missing = [n for n in ("stage", "data", "out") if n not in settings]
    if missing:
        _usage_error(f"{', '.join('--' + m for m in missing)} required (or in --config)")
    try:
        return TrainConfig.from_mapping(settings)
    except (TypeError, ValueError) as e:
        _usage_error(str(e))


def _usage_error(text: str) -> NoReturn:
    print(f"unish train: error: {text}", file=sys.stderr)
    raise SystemExit(2)  # argparse's status for a bad command line


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(sys.argv[1:] if argv is None else argv)
    train(config)
    return 0
