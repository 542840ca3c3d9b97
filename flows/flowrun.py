"""Run a flow under a name a person can find, and say where to see it.

A flow run is named after the command and its run folder (`curate-demo`, `relabel-depth:moge-demo`), not
Prefect's random `merry-gharial`; the command prints the run's id and, with a Prefect server
(`PREFECT_API_URL`), its page in the UI.  Without one the flow runs on Prefect's embedded server, which keeps its
runs in the database under `PREFECT_HOME` (default `~/.prefect/prefect.db`): `prefect server start` (same
`PREFECT_HOME`) serves them at http://127.0.0.1:4200.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_UI = "http://127.0.0.1:4200"


@dataclass(frozen=True)
class FlowRunInfo:
    id: str
    name: str
    ui_url: str | None  # the run's page, when a Prefect server with a UI is configured

    def describe(self) -> str:
        if self.ui_url:
            return f"flow run {self.name} ({self.id}): {self.ui_url}"
        return (f"flow run {self.name} ({self.id}) on Prefect's embedded server; to browse it: `prefect server start` "
                f"then {EMBEDDED_UI}/runs/flow-run/{self.id}")


class FlowRunFailed(Exception):
    """The flow ended in a failed state; `error` is what it raised, `run` where to see it."""

    def __init__(self, error: BaseException, run: FlowRunInfo):
        super().__init__(str(error))
        self.error = error
        self.run = run


def run_name(command: str, run_dir: Path | str) -> str:
    """`<command>-<run folder's name>`, in characters any UI shows as they are."""
    folder = Path(os.path.abspath(run_dir)).name or "run"
    return re.sub(r"[^A-Za-z0-9_.:-]+", "_", f"{command}-{folder}")


def ui_url(flow_run_id: str) -> str | None:
    """The run's page on the configured Prefect server's UI (`PREFECT_UI_URL`, by default the API's address
    without `/api`); None on the embedded server, which serves no UI while the command runs."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if not settings.api.url or not settings.ui_url:
        return None
    return f"{settings.ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def call_flow(flow: Any, name: str, *args: Any, **kwargs: Any) -> tuple[Any, FlowRunInfo]:
    """Run `flow` (already `with_options`-configured) as `name`; return its result and where to see the run.
    A failed run raises FlowRunFailed carrying the flow's own exception and the run's info."""
    state = flow.with_options(flow_run_name=name)(*args, return_state=True, **kwargs)
    run_id = str(state.state_details.flow_run_id)
    info = FlowRunInfo(run_id, name, ui_url(run_id))
    try:
        return state.result(), info
    except BaseException as e:  # noqa: BLE001 - re-raised with the run's info
        raise FlowRunFailed(e, info) from e
