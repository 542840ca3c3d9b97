"""What every benchmark reader raises when the folder it is given does not hold the benchmark's layout."""
from __future__ import annotations

from pathlib import Path

__all__ = ["BenchmarkLayoutError", "benchmark_root"]


class BenchmarkLayoutError(ValueError):
    """The folder given does not hold the benchmark in the expected layout (the message says what is missing)."""


def benchmark_root(root: str | Path, benchmark: str) -> Path:
    """`root` as a Path, or BenchmarkLayoutError when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkLayoutError(f"{benchmark} root {root} is not a folder")
    return root
