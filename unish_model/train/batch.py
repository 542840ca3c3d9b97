"""A batch of training clips: named tensors stacked over B, with each clip's key and meta (torch only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ClipBatch:
    """B clips of one shape: tensors stacked over B, each clip's key and meta.json, and what the worker
    read and skipped since its previous batch."""

    tensors: dict[str, torch.Tensor]
    keys: list[str]
    meta: list[dict[str, Any]]
    stats: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def pin_memory(self) -> "ClipBatch":
        return ClipBatch({k: v.pin_memory() for k, v in self.tensors.items()}, self.keys, self.meta, self.stats)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "ClipBatch":
        return ClipBatch({k: v.to(device, non_blocking=non_blocking) for k, v in self.tensors.items()},
                         self.keys, self.meta, self.stats)


__all__ = ["ClipBatch"]
