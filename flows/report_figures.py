"""The charts of `unish report`, drawn with matplotlib (object API, Agg canvas: no display, no global state) and
written as SVG to inline in the page.

SVG keeps text as text (`svg.fonttype: none`): a chart's numbers can be read in the page, and the file stays small.
Elements a reader (or a test) needs to find carry ids (matplotlib's `gid`): the funnel's bars are
`funnel-bar-<i>` and their count labels `funnel-label-<i>`, in the order of `ReportData.funnel_bars`.
Each chart gets its own hash salt, so the ids matplotlib derives for clip paths differ between charts that share
one page.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Bar", "funnel_chart", "outcome_colours", "reasons_chart", "histogram_chart", "counts_chart"]

# one colour per kind of funnel bar, and for the statuses in stacked charts
KIND_COLOURS = {"flow": "#4c72b0", "video_error": "#c44e52", "video_rejected": "#dd8452", "rejected": "#dd8452",
                "error": "#c44e52", "written": "#55a868"}
OK_COLOUR = "#55a868"
RULE_COLOURS = ["#dd8452", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#c44e52", "#4c72b0"]


@dataclass(frozen=True)
class Bar:
    label: str
    count: int
    kind: str  # a key of KIND_COLOURS


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=96, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _svg(fig, salt: str) -> str:
    """The figure as an `<svg>` element (no XML prolog), text kept as text."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def funnel_chart(bars: Sequence[Bar]) -> str:
    """Horizontal bars, top to bottom in the funnel's order, each labelled with its count."""
    fig = _figure(7.5, 0.32 * len(bars) + 0.8)
    ax = fig.add_subplot()
    y = np.arange(len(bars))
    drawn = ax.barh(y, [b.count for b in bars], color=[KIND_COLOURS.get(b.kind, "#4c72b0") for b in bars])
    for i, patch in enumerate(drawn):
        patch.set_gid(f"funnel-bar-{i}")
    for i, text in enumerate(ax.bar_label(drawn, labels=[str(b.count) for b in bars], padding=3)):
        text.set_gid(f"funnel-label-{i}")
    ax.set_yticks(y, [b.label for b in bars])
    ax.invert_yaxis()
    ax.set_xlabel("count")
    ax.set_xlim(0, max([b.count for b in bars] + [1]) * 1.12)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "funnel")


def outcome_colours(outcomes: Sequence[str]) -> dict[str, str]:
    """One colour per outcome ("ok" green, then each rule and error class), the same in every chart of a page."""
    rules = [o for o in outcomes if o != "ok"]
    return {"ok": OK_COLOUR, **{o: RULE_COLOURS[i % len(RULE_COLOURS)] for i, o in enumerate(rules)}}


def reasons_chart(sources: Sequence[str], segments: Mapping[str, Sequence[int]], colours: Mapping[str, str]) -> str:
    """Windows per source (rows), stacked by outcome (`segments`: outcome -> one count per source)."""
    fig = _figure(7.5, 0.3 * len(sources) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(sources))
    left = np.zeros(len(sources))
    for outcome, counts in segments.items():
        ax.barh(y, counts, left=left, color=colours.get(outcome, "#4c72b0"), label=outcome)
        left += np.asarray(counts, float)
    ax.set_yticks(y, list(sources))
    ax.invert_yaxis()
    ax.set_xlabel("clip windows")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "reasons")


def histogram_chart(name: str, xlabel: str, series: Mapping[str, Sequence[float]], bins: Sequence[float],
                    colours: Mapping[str, str], threshold: float | None = None, threshold_label: str = "",
                    log_x: bool = False) -> str:
    """Clips per bin, stacked by series (ok, then each rejection), with an optional threshold line."""
    fig = _figure(4.6, 2.6)
    ax = fig.add_subplot()
    data = [np.asarray(v, float) for v in series.values()]
    colours = [colours.get(k, "#4c72b0") for k in series]
    if any(len(d) for d in data):
        ax.hist(data, bins=np.asarray(bins, float), stacked=True, color=colours, label=list(series))
        ax.legend(fontsize="x-small", frameon=False)
    else:
        ax.text(0.5, 0.5, "no clip has this statistic", ha="center", va="center", transform=ax.transAxes)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax.annotate(threshold_label or f"{threshold:g}", (threshold, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize="x-small")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, name)


def counts_chart(name: str, xlabel: str, edges: Sequence[float], counts: Sequence[int], ylabel: str) -> str:
    """A histogram whose counts were accumulated elsewhere (e.g. every joint of every frame)."""
    fig = _figure(4.6, 2.6)
    ax = fig.add_subplot()
    e = np.asarray(edges, float)
    ax.bar(e[:-1], counts, width=np.diff(e), align="edge", color="#4c72b0")
    if not np.any(counts):
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no clip has this statistic", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, name)
