"""The curation queue: retries wait in the queue, never in a worker; back-off is per host and port."""
from __future__ import annotations

import pytest

from flows.video_queue import VideoQueue
from tasks.manifest import ManifestRow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def url_row(i: int, port: int) -> ManifestRow:
    return ManifestRow(i, f"http://127.0.0.1:{port}/v{i}.mp4", "url", f"v{i}", None, None)


def test_a_failed_host_does_not_delay_another_port_of_the_same_machine():
    clock = Clock()
    q = VideoQueue([url_row(1, 9001), url_row(2, 9002), url_row(3, 9001)], [10.0, 60.0], max_retries=2,
                   host_backoff_s=30.0, clock=clock)
    first = q.pop_ready()
    assert first.row.row == 1
    assert q.retry(first, "connection refused")
    # Port 9001 rests for 30 s (rows 1 and 3); port 9002 runs at once.
    assert q.pop_ready().row.row == 2
    assert q.pop_ready() is None
    assert q.wait_s() == pytest.approx(30.0)  # row 1's own delay is 10 s, but its host rests 30 s
    clock.now += 10.0
    assert q.pop_ready() is None  # row 1's delay passed, its host's back-off has not
    assert q.wait_s() == pytest.approx(20.0)
    clock.now += 20.0
    assert [q.pop_ready().row.row, q.pop_ready().row.row] == [3, 1]  # manifest order first, retries after


def test_retries_follow_the_delays_then_give_up():
    clock = Clock()
    q = VideoQueue([url_row(1, 9001)], [5.0, 50.0], max_retries=3, host_backoff_s=0.0, clock=clock)
    item = q.pop_ready()
    waits = []
    while q.retry(item, "503"):
        waits.append(q.wait_s())
        clock.now += waits[-1]
        item = q.pop_ready()
    assert waits == [5.0, 50.0, 50.0]  # the last delay repeats
    assert item.attempts == 3 and len(item.errors) == 4 and len(q) == 0


def test_local_files_never_wait_for_a_host():
    clock = Clock()
    local = ManifestRow(2, "/data/v.mp4", "path", "v", None, None)
    q = VideoQueue([url_row(1, 9001), local], [1.0], max_retries=1, host_backoff_s=100.0, clock=clock)
    q.retry(q.pop_ready(), "reset")
    assert q.pop_ready().row.row == 2


def test_retries_need_a_delay():
    with pytest.raises(ValueError, match="retry delay"):
        VideoQueue([], [], max_retries=1, host_backoff_s=0.0)
