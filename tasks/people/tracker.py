"""The IoU tracker of the backends that have none of their own (`hog`, `external` without track ids): greedy
association between consecutive frames on box IoU; a track survives `max_lost` frames without a match.  Every
window gets a fresh tracker, so ids start at 1 and nothing carries over from one window to the next.
"""
from __future__ import annotations

import numpy as np

from unish_model.boxes import box_iou

__all__ = ["IoUTracker"]


class IoUTracker:
    """Greedy IoU association between consecutive frames; ids start at 1 for every new tracker."""

    def __init__(self, iou_match: float = 0.3, max_lost: int = 5):
        self.iou_match = iou_match
        self.max_lost = max_lost
        self._boxes: dict[int, np.ndarray] = {}
        self._lost: dict[int, int] = {}
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        ids = np.full(len(boxes), -1, np.int64)
        track_ids = list(self._boxes)
        if track_ids and len(boxes):
            iou = box_iou(np.stack([self._boxes[t] for t in track_ids]), boxes)
            pairs = sorted(
                ((iou[i, j], i, j) for i in range(len(track_ids)) for j in range(len(boxes))), reverse=True
            )
            used_t: set[int] = set()
            for v, i, j in pairs:
                if v < self.iou_match:
                    break
                if i in used_t or ids[j] >= 0:
                    continue
                used_t.add(i)
                ids[j] = track_ids[i]
        for j in np.flatnonzero(ids < 0):
            ids[j] = self._next_id
            self._next_id += 1
        matched = set(int(t) for t in ids)
        for t in track_ids:
            if t not in matched:
                self._lost[t] += 1
                if self._lost[t] > self.max_lost:
                    del self._boxes[t], self._lost[t]
        for j, t in enumerate(ids):
            self._boxes[int(t)] = boxes[j]
            self._lost[int(t)] = 0
        return ids
