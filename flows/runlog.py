"""A run's log file, and a terminal that shows handled errors as one line each.

`run_log(run_dir, command)` writes `RUN/logs/<command>-<UTC time>.log` for the duration of a run: everything the
flow and its tasks log through Prefect (`prefect.flow_runs`, `prefect.task_runs`), with full tracebacks, and each
error a flow handled and recorded as a row (`HANDLED`, logged with its traceback by the flow itself).  Nested calls
for the same folder share one file, so the command line and the flow it starts write to the same log.

`quiet_handled_failures()` keeps Prefect's own reports of failed task and flow runs off the terminal (a task whose
exception the flow catches and records as a row is reported by Prefect with a full traceback at ERROR): the command
prints one line per recorded error, and one for a failed run, instead; the tracebacks are in the log file and on
the Prefect server.  Warnings still reach the terminal.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from shards.runfolder import HANDLED_LOGGER as HANDLED
from shards.runfolder import LOG_DIR, handled_logger

PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s"

_lock = threading.Lock()
_open: dict[Path, tuple[Path, logging.Handler, int]] = {}  # run folder -> (log file, handler, users)


handled_log = handled_logger()  # errors a flow caught and recorded as rows: to the log file only


def log_path(run_dir: Path, command: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = Path(run_dir) / LOG_DIR / f"{command}-{stamp}.log"
    n = 1
    while path.exists():  # two runs within a second: keep both logs
        n += 1
        path = path.with_name(f"{command}-{stamp}-{n}.log")
    return path


class _FolderMakingFileHandler(logging.FileHandler):
    """A file handler that makes the logs folder when its first record comes (a clean run leaves no log)."""

    def _open(self):  # type: ignore[override]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextmanager
def run_log(run_dir: Path, command: str) -> Iterator[Path]:
    """Write the run's log file while the block runs; yields its path (shared by nested calls for one folder)."""
    key = Path(run_dir).resolve()
    with _lock:
        if key in _open:
            path, handler, users = _open[key]
            _open[key] = (path, handler, users + 1)
        else:
            path = log_path(run_dir, command)
            handler = _FolderMakingFileHandler(path, encoding="utf-8", delay=True)  # no file until a record
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter(_FORMAT))
            for name in (*PREFECT_RUN_LOGGERS, HANDLED):
                logging.getLogger(name).addHandler(handler)
            _open[key] = (path, handler, 1)
    try:
        yield path
    finally:
        with _lock:
            path, handler, users = _open[key]
            if users > 1:
                _open[key] = (path, handler, users - 1)
            else:
                del _open[key]
                for name in (*PREFECT_RUN_LOGGERS, HANDLED):
                    logging.getLogger(name).removeHandler(handler)
                handler.close()


class _NoRunErrors(logging.Filter):
    """Drops Prefect's reports of failed task and flow runs (ERROR and above from its run loggers): the command
    that started the flow reports each failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(PREFECT_RUN_LOGGERS) and record.levelno >= logging.ERROR)


@contextmanager
def quiet_handled_failures() -> Iterator[None]:
    """While the block runs, the terminal's log handlers drop failed-run reports (they are in the log file)."""
    flt = _NoRunErrors()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)
