"""The funnel table (curate's closing summary and `unish inspect`)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from shards.index import Funnel


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def funnel_table(f: Funnel) -> Table:
    t = Table(title="curation funnel", show_header=True, header_style="bold")
    t.add_column("stage")
    t.add_column("count", justify="right")
    t.add_row("videos in", str(f.videos_in))
    for reason, n in sorted(f.videos_error.items()):
        t.add_row(f"  video error: {reason}", str(n))
    for reason, n in sorted(f.videos_rejected.items()):
        t.add_row(f"  video rejected: {reason}", str(n))
    t.add_row("videos windowed", str(f.videos_ok))
    t.add_row("clip windows", str(f.windows))
    for reason, n in sorted(f.rejected.items()):
        t.add_row(f"  rejected: {reason}", str(n))
    for reason, n in sorted(f.errors.items()):
        t.add_row(f"  error: {reason}", str(n))
    t.add_row("clips written", str(f.clips_written), style="bold green")
    t.add_row("shards", str(f.shards))
    t.add_row("bytes", _mb(f.bytes_written))
    return t


def print_funnel(f: Funnel, console: Console | None = None) -> None:
    (console or Console()).print(funnel_table(f))
