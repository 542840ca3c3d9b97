"""`unish relabel` and `unish labels` on the command line (the flow is flows/relabel.py, imported when a command
runs, so `--help` needs no Prefect)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table


def _parse_pairs(items: list[str], what: str, json_values: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{what} {item!r} is not NAME=VALUE")
        if json_values:
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError:
                out[name] = value
        else:
            out[name] = value
    return out


RELABEL_FLAGS = {"stage": "stage", "backend": "backend", "param": "params", "use": "inputs", "workers": "workers"}


def relabel(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="a curated output folder (shards/, index.parquet)"),
    stage: Optional[str] = typer.Option(None, "--stage", help="label family to recompute: people, masks, depth, "
                                        "keypoints (required, here or in --config)"),
    backend: Optional[str] = typer.Option(None, "--backend", help="the family's backend, e.g. moge, camerahmr, "
                                          "mediapipe (required, here or in --config)"),
    param: list[str] = typer.Option([], "--param", help="stage parameter NAME=VALUE (JSON value), repeatable"),
    use: list[str] = typer.Option([], "--use", help="label version a stage reads, FAMILY=VERSION (default main)"),
    workers: int = typer.Option(2, min=1, help="main shards relabelled at once"),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="TOML or YAML file of settings: its `relabel` table, or the whole file; keys stage, "
        "backend, params, inputs, workers (a label version's version.json is one); flags given here win"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Recompute one label family from the stored frames and write it as a new label version.

    Exit status: 0 every clip labelled or rejected by a rule; 1 the run failed, or clips failed (a rerun does not
    redo a finished sidecar: the log file has the tracebacks); 2 bad arguments."""
    from flows import exitcodes
    from flows.cmdline import fail, print_errors, say, say_error, settings_from, validation_message
    from flows.flowrun import FlowRunFailed, call_flow
    from flows.relabel import RelabelConfig, configured_flow, flow_run_name
    from flows.runlog import quiet_handled_failures, run_log
    from shards.index import INDEX_FILE
    from shards.runfolder import RunLocked, check_unlocked
    from shards.schema import STATUS_ERROR, STATUS_OK, STATUS_REJECTED
    from shards.sidecar import VERSION_FILE, check_family, version_dir
    from tasks.stage import build_stage, weights_needed
    from tasks.weights import WeightsMissing, check_needs

    settings, _ = settings_from(
        ctx, config_file, "relabel", RelabelConfig.model_fields, RELABEL_FLAGS,
        convert={"params": lambda v: _parse_pairs(v, "--param", True), "inputs": lambda v: _parse_pairs(v, "--use", False)},
        merge={"params": lambda a, b: {**(a or {}), **b}, "inputs": lambda a, b: {**(a or {}), **b}})
    missing = [f"--{k}" for k in ("stage", "backend") if not settings.get(k)]
    if missing:
        raise fail(f"give {' and '.join(missing)} (or set them in --config)", exitcodes.USAGE)
    try:
        config = RelabelConfig(**settings)
    except Exception as e:  # pydantic.ValidationError
        raise fail(f"bad relabel settings: {validation_message(e)}", exitcodes.USAGE) from None
    if not (out / INDEX_FILE).exists():
        raise fail(f"{out} is not a curated output: missing {INDEX_FILE}", exitcodes.USAGE)
    try:
        check_family(config.stage)
        check_needs(weights_needed(build_stage(config.stage_name, **dict(config.params))))
        check_unlocked(out)  # fail before Prefect starts; the flow takes the lock itself
    except (RunLocked, WeightsMissing) as e:
        raise fail(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:  # unknown family, backend or stage parameter
        raise fail(str(e).strip("'\""), exitcodes.USAGE) from None
    with run_log(out, "relabel") as log, quiet_handled_failures():
        try:
            summary, run = call_flow(configured_flow(config), flow_run_name(out, config), str(out), config)
        except FlowRunFailed as f:
            e = f.error
            say_error(str(e) if isinstance(e, (RunLocked, WeightsMissing, FileNotFoundError))
                      else f"the run failed: {type(e).__name__}: {e}")
            if log.exists():
                say(f"log: {log}")
            say(f.run.describe())
            raise typer.Exit(exitcodes.FAILED) from None
    status = exitcodes.run_status(False, 0, len(summary["errors"]), strict=True)
    summary.update(log=str(log) if log.exists() else None, status=status,
                   flow_run={"id": run.id, "name": run.name, "ui_url": run.ui_url})
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
    else:
        table = Table(title=f"relabel {summary['stage']} -> {summary['family']}/{summary['version']}",
                      header_style="bold")
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("main shards", str(summary["shards"]))
        table.add_row("sidecars written now", str(summary["shards_written"]))
        for s in (STATUS_OK, STATUS_REJECTED, STATUS_ERROR):
            table.add_row(f"clips {s}", str(summary[s]))
        table.add_row("labels.parquet", "rewritten" if summary["table_written"] else "unchanged")
        Console().print(table)
    print_errors(summary["errors"])
    done = summary["shards"] - summary["shards_written"]
    if summary["shards"] and done == summary["shards"]:
        say(f"{done} of {summary['shards']} sidecars already done, nothing to do")
    say(f"configuration: {version_dir(out, summary['family'], summary['version']) / VERSION_FILE}")
    if summary["log"]:
        say(f"log: {summary['log']} (full tracebacks of the errors above)")
    say(run.describe())
    if summary["errors"]:
        say(f"exit {status}: {len(summary['errors'])} clips failed; a rerun does not redo a finished sidecar: fix "
            "the cause and relabel with changed parameters (a new version)")
    raise typer.Exit(status)


def label_versions(
    out: Path = typer.Argument(..., help="a curated output folder"),
    family: Optional[str] = typer.Option(None, help="only this label family"),
) -> None:
    """List the label versions of a curated output (for `iter_clips_with_labels(versions=...)`)."""
    from shards.sidecar import list_label_versions

    table = Table(title=f"label versions in {out}", header_style="bold")
    for col in ("family", "version", "stage", "shards", "complete"):
        table.add_column(col)
    for v in list_label_versions(out, family):
        table.add_row(v.family, v.version, str(v.info.get("stage", "")), f"{v.shards_done}/{v.shards_total}",
                      "yes" if v.complete else "no")
    Console().print(table)
