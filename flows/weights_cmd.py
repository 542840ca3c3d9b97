"""`unish weights list|check|pull`: the weights folder, as a Typer sub-app (mounted by flows.cli)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tasks import weights as w

weights_app = typer.Typer(help="Model weights: what the project uses, what is here, and how to get the rest.",
                          no_args_is_help=True, pretty_exceptions_enable=False)


def say(stream: str, text: str) -> None:
    """One plain line on stdout or stderr: no markup, no wrapping (paths and URLs stay whole and copyable)."""
    Console(stderr=stream == "err").print(text, soft_wrap=True, markup=False, highlight=False)


def _names(names: Optional[list[str]], profile: Optional[str]) -> list[str]:
    if names:
        unknown = [n for n in names if n not in w.REGISTRY]
        if unknown:
            say("err", f"unknown weights: {', '.join(unknown)}; known: {', '.join(w.REGISTRY)}")
            raise typer.Exit(2)
        return list(names)
    if profile is not None:
        from tasks.profiles import PROFILES

        known = sorted({*w.uses(), *PROFILES, "none"})
        if profile not in known:
            say("err", f"unknown profile or use {profile!r}; known: {', '.join(known)}")
            raise typer.Exit(2)
    chosen = w.names_for(profile)
    if profile and not chosen:
        say("err", f"no weights are needed by {profile!r}")
    return chosen


@weights_app.command("list")
def list_weights() -> None:
    """Every weights file the project knows, with its source, licence, sha256 and whether it is here.

    sha256: the pinned hash where the file's publisher gives one; otherwise "not pinned" and why (a file behind a
    registration, a publisher that gives no checksum). `unish weights check` prints the hash of what is here."""
    table = Table(title=f"weights folder: {w.weights_dir()}  (set {w.WEIGHTS_ENV} to move it)")
    for col in ("name", "file", "needed by", "licence", "source", "sha256", "here"):
        table.add_column(col, overflow="fold")  # fold, never cut: file names and URLs stay copyable
    for s in w.REGISTRY.values():
        source = s.url if s.downloadable else f"register: {s.registration}"
        here = (w.weights_dir() / s.filename).is_file()
        table.add_row(s.name, s.filename, ", ".join(s.needed_by) or "optional", s.license, source or "-",
                      (s.sha256[:12] + "…") if s.sha256 else (s.pin_note or "not pinned"), "yes" if here else "no")
    Console().print(table)  # made here, so it sizes itself to the terminal of this call


@weights_app.command("check")
def check(
    names: Optional[list[str]] = typer.Argument(None, help="weights to check (default: all, or --profile's)"),
    profile: Optional[str] = typer.Option(None, help="only what this profile or use needs: paper, lite, train, "
                                          "infer or eval"),
    hash_files: bool = typer.Option(True, "--hash/--no-hash", help="hash present files against pinned sha256"),
) -> None:
    """Say which weights are present and intact; exit 1 if any checked file is missing or corrupt."""
    bad = 0
    for s, st in w.status_rows(_names(names, profile), hash_file=hash_files):
        if not st.present:
            bad += 1
            say("out", f"missing  {s.name}: {w.how_to_get(s, st.path)}")
        elif st.sha_ok is False:
            bad += 1
            say("out", f"corrupt  {s.name}: {st.path} sha256 {st.sha256} != pinned {s.sha256}")
        else:
            pin = "sha256 ok (pinned)" if st.sha_ok else (f"sha256 {st.sha256} (not pinned)" if st.sha256 else "not hashed")
            say("out", f"ok       {s.name}: {st.path} ({pin})")
    raise typer.Exit(1 if bad else 0)


@weights_app.command("pull")
def pull(
    name: str = typer.Argument(..., help="a weights name from `unish weights list`"),
    force: bool = typer.Option(False, help="download again even if the file is there"),
    timeout: float = typer.Option(30.0, help="network timeout in seconds"),
) -> None:
    """Download one weights file into the weights folder (streamed, sha256-checked, renamed when complete)."""
    if name not in w.REGISTRY:
        say("err", f"unknown weights {name!r}; known: {', '.join(w.REGISTRY)}")
        raise typer.Exit(2)
    try:
        path = w.pull(name, force=force, timeout_s=timeout)
    except w.WeightsError as e:
        say("err", str(e))
        raise typer.Exit(1 if isinstance(e, w.WeightsChecksumMismatch) else 2)
    say("out", f"{name}: {path} sha256 {w.sha256_file(path)}")
