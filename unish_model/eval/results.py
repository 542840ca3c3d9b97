"""Benchmark results: per-sequence and overall metrics, as the JSON, Markdown and table rows the `unish eval`
commands write and print.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["METRIC_LABELS", "Sink", "SequenceResult", "BenchmarkResult"]

# Where a benchmark hands each sequence's arrays (`unish eval --save-predictions`): sink(sequence, arrays).
Sink = Callable[[str, dict[str, np.ndarray]], None]

METRIC_LABELS: dict[str, str] = {
    "abs_rel": "Abs Rel", "delta_1.25": "δ<1.25", "rmse": "RMSE (m)", "log_rmse": "log RMSE", "sq_rel": "Sq Rel",
    "wa_mpjpe": "WA-MPJPE (mm)", "w_mpjpe": "W-MPJPE (mm)", "rte": "RTE (%)", "jitter": "Jitter (10 m/s³)",
    "fs": "FS (mm)",
}


@dataclass
class SequenceResult:
    name: str
    frames: int  # frames that count in the metrics
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkResult:
    benchmark: str  # bonn | emdb | rich
    columns: tuple[str, ...]  # metric keys shown in tables, in order
    sequences: list[SequenceResult]
    overall: dict[str, float]
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark, "protocol": self.protocol,
            "sequences": [{"name": s.name, "frames": s.frames, "metrics": s.metrics, "info": s.info}
                          for s in self.sequences],
            "overall": self.overall,
        }

    def table_rows(self) -> list[list[str]]:
        """[sequence, frames, column values...] per sequence, then the overall row (formatted)."""
        rows = [[s.name, str(s.frames), *(_fmt(s.metrics.get(c)) for c in self.columns)] for s in self.sequences]
        total = sum(s.frames for s in self.sequences)
        rows.append(["overall", str(total), *(_fmt(self.overall.get(c)) for c in self.columns)])
        return rows

    def to_markdown(self, title: str | None = None) -> str:
        head = ["sequence", "frames", *(METRIC_LABELS.get(c, c) for c in self.columns)]
        lines = [f"# {title or self.benchmark}", ""]
        for key, value in self.protocol.items():
            lines.append(f"- {key}: {value}")
        lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        rows = self.table_rows()
        for row in rows[:-1]:
            lines.append("| " + " | ".join(row) + " |")
        lines.append("| " + " | ".join(f"**{v}**" for v in rows[-1]) + " |")
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
