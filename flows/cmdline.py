"""What the run commands (`curate`, `relabel`, `infer`) share on the command line: plain one-line messages, the
one-line form of a handled error, and settings from `--config FILE` under the flags given.

Messages go to stderr without markup and without wrapping (`soft_wrap`), so paths and URLs stay whole and a
script reading the last lines gets whole lines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import typer
from rich.console import Console

from flows import exitcodes

err = Console(stderr=True)


def say(text: str, style: str | None = None) -> None:
    err.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def say_error(text: str) -> None:
    """`error: <text>` (a multi-line text keeps its lines: a list of missing files, one a line)."""
    say(f"error: {text}", "red")


def fail(text: str, status: int = exitcodes.FAILED) -> typer.Exit:
    """Say the error and return the Exit to raise (`raise fail(...) from None`)."""
    say_error(text)
    return typer.Exit(status)


def error_line(e: Mapping[str, Any]) -> str:
    """One handled error: the video (or clip), the stage, the class and the message, on one line."""
    who = e.get("key") or e.get("source_id") or e.get("source") or f"manifest row {e.get('row')}"
    row = f" (row {e['row']})" if e.get("row") is not None and not e.get("key") else ""
    message = " ".join(str(e.get("message") or "").split())
    return f"error: {who}{row} {e.get('stage') or '-'} {e.get('reason') or '-'}: {message}"


def print_errors(errors: Iterable[Mapping[str, Any]]) -> None:
    for e in errors:
        say(error_line(e), "yellow")


def settings_from(ctx: Any, config_file: Path | None, command: str, known: Iterable[str],
                  flags: Mapping[str, str], convert: Mapping[str, Callable[[Any], Any]] | None = None,
                  merge: Mapping[str, Callable[[Any, Any], Any]] | None = None) -> tuple[dict[str, Any], set[str]]:
    """The command's settings: `config_file`'s (if any), then every flag given on the command line on top.

    flags: command-line parameter name -> setting name.  convert: setting -> function of the flag's value.
    merge: setting -> function(file value, flag value) for settings the flag adds to rather than replaces.
    Returns the settings and the names of the settings the command line gave."""
    from flows.config_file import ConfigFileError, given_on_command_line, read_config

    settings: dict[str, Any] = {}
    if config_file is not None:
        try:
            settings = read_config(config_file, command, known)
        except ConfigFileError as e:
            raise fail(str(e), exitcodes.USAGE) from None
    given = given_on_command_line(ctx, flags)
    for flag in given:
        name = flags[flag]
        value = ctx.params[flag]
        try:
            value = (convert or {}).get(name, lambda v: v)(value)
        except ValueError as e:
            raise fail(str(e), exitcodes.USAGE) from None
        if merge and name in merge and name in settings:
            value = merge[name](settings[name], value)
        settings[name] = value
    return settings, {flags[f] for f in given}


def validation_message(error: Exception) -> str:
    """A pydantic ValidationError as `setting: problem; ...` (one line), anything else as its text."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in errors())
    return str(error)
