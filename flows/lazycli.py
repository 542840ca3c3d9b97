"""A Typer group whose commands are imported only when used: `unish --help` lists them from one line each.

`LazyGroup.lazy_commands` maps a command name to `("module:attribute", short help)`; the attribute is a command
function, a Typer sub-app or a built command.  Listing the commands (`unish --help`) uses the short help and
imports nothing; running a command, or asking for its own help, imports its module then.
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup


def load_command(target: str, name: str) -> Any:
    """The click command for `module:attribute` (a function, a Typer sub-app or a built command), named `name`."""
    module, _, attr = target.partition(":")
    obj: Any = getattr(importlib.import_module(module), attr)
    if isinstance(obj, (TyperCommand, TyperGroup)):  # built by its module (e.g. to pass its own context settings)
        command = obj
    elif isinstance(obj, typer.Typer):
        command: Any = typer.main.get_group(obj)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    lazy_commands: ClassVar[dict[str, tuple[str, str]]] = {}
    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        eager = [n for n in super().list_commands(ctx) if n not in self.lazy_commands]
        return [*self.lazy_commands, *eager]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in self.lazy_commands:
            return None
        target, short_help = self.lazy_commands[cmd_name]
        if self._listing:  # the group's own help: a stand-in with the one line, nothing imported
            return TyperCommand(cmd_name, help=short_help, short_help=short_help)
        command = load_command(target, cmd_name)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
