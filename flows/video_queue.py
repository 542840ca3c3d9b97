"""The curation flow's queue of videos: retries that never hold a worker.

A video whose download fails transiently goes back into the queue with a delay (`retry_delays_s`, one
per retry, the last one repeated), and its host:port is backed off for every video of that host
(`host_backoff_s`), while videos of other hosts (or another port of the same machine) go on. A worker
only ever runs a video that is ready. Pure logic over an injectable clock, so it is tested without sleeping.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tasks.fetch import source_host
from tasks.manifest import ManifestRow


@dataclass
class QueuedVideo:
    row: ManifestRow
    host: str  # host:port it downloads from ("" for local files)
    attempts: int = 0  # transient failures so far
    not_before: float = 0.0  # clock time before which it must not run
    errors: list[str] = field(default_factory=list)


class VideoQueue:
    def __init__(self, rows: Iterable[ManifestRow], retry_delays_s: list[float], max_retries: int,
                 host_backoff_s: float, clock: Callable[[], float] = time.monotonic):
        if max_retries > 0 and not retry_delays_s:
            raise ValueError("retries need at least one retry delay")
        self._items = [QueuedVideo(r, source_host(r)) for r in rows]
        self.retry_delays_s = list(retry_delays_s)
        self.max_retries = max_retries
        self.host_backoff_s = host_backoff_s
        self.clock = clock
        self._host_until: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._items)

    def _ready_at(self, item: QueuedVideo) -> float:
        return max(item.not_before, self._host_until.get(item.host, 0.0) if item.host else 0.0)

    def pop_ready(self) -> QueuedVideo | None:
        """The first video (in manifest order, retries after their delay) that may run now."""
        now = self.clock()
        for i, item in enumerate(self._items):
            if self._ready_at(item) <= now:
                return self._items.pop(i)
        return None

    def wait_s(self) -> float | None:
        """Seconds until some queued video may run (0 if one may now, None if the queue is empty)."""
        if not self._items:
            return None
        return max(0.0, min(self._ready_at(i) for i in self._items) - self.clock())

    def retry(self, item: QueuedVideo, message: str) -> bool:
        """Put a transiently failed video back (True), or say its retries are spent (False). Either way its
        host is backed off: the failure says something about the host, not only about this video."""
        now = self.clock()
        item.errors.append(message)
        if item.host:
            self._host_until[item.host] = max(self._host_until.get(item.host, 0.0), now + self.host_backoff_s)
        if item.attempts >= self.max_retries:
            return False
        delay = self.retry_delays_s[min(item.attempts, len(self.retry_delays_s) - 1)]
        item.attempts += 1
        item.not_before = now + delay
        self._items.append(item)
        return True

    def drop_all(self) -> list[QueuedVideo]:
        """Empty the queue (the run is stopping); returns what was still waiting."""
        left, self._items = self._items, []
        return left
