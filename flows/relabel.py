"""The relabel flow: recompute one label family for the clips of an existing curated output.

`unish relabel DIR --stage depth --backend moge` reads every main shard's stored frames (no fetching, no
video decoding), runs the labelling stage `depth:moge` on each clip and writes the results as a new label
version: sidecar shards under `DIR/labels/<family>/<version>/` (see shards/sidecar.py) and the
`DIR/labels.parquet` table. The version id comes from backend + weights sha256 + parameters + stage
version, so the same relabel twice finds its finished work and writes nothing new.

Crash safety, as in curation: one Prefect task per main shard; its sidecar is written as `.tmp` and
renamed when complete, after its status rows; a completed sidecar is never redone; labels.parquet is
rebuilt from the finished sidecars at the end and written atomically.

One relabel per output and family at a time (sidecar temp files have fixed names); the deployments in
infra/prefect.yaml set a concurrency limit of 1.

Fault injection for the crash-safety test: `UNISH_FAULT_RELABEL_DELAY_S` (seconds, default 0) sleeps after
each clip written into a sidecar's temp file, so a SIGKILL reliably lands mid-shard.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import flows.prefect_env  # noqa: F401  (sets Prefect defaults before it is imported)
import numpy as np
import typer
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.runlog import run_log

from shards.blocklist import skip_withdrawn
from shards.index import INDEX_FILE
from shards.runfolder import handled_logger, run_lock
from shards.sample import ClipSample
from shards.schema import STATUS_ERROR, STATUS_OK, STATUS_REJECTED
from shards.sidecar import (
    MAIN_VERSION, SHARD_DIR, VERSION_FILE, SidecarWriter, check_family, iter_clips_with_labels,
    main_shards, read_rows, read_version_info, rows_path, sidecar_members, sidecar_path,
    version_dir, version_id, write_json_atomic, write_labels_table,
)
from tasks.stage import ClipRejected, ClipWindow, LabelStage, build_stage

FAULT_DELAY_ENV = "UNISH_FAULT_RELABEL_DELAY_S"
_handled = handled_logger()  # a clip's error, with its traceback, for the run's log file


class RelabelConfig(BaseModel):
    stage: str = Field(..., description="label family to recompute: people, masks, depth, keypoints")
    backend: str = Field(..., description="the family's backend (the stage registered as `<stage>:<backend>`)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the stage")
    inputs: dict[str, str] = Field(default_factory=dict,
                                   description="label versions the stage reads (family -> version; default main)")
    workers: int = Field(2, ge=1, description="main shards relabelled at once")

    @property
    def stage_name(self) -> str:
        return f"{self.stage}:{self.backend}"


# -- the stage, built once per process -----------------------------------------------------------

_STAGES: dict[str, tuple[LabelStage, threading.Lock]] = {}
_STAGES_LOCK = threading.Lock()


def get_stage(config: RelabelConfig) -> tuple[LabelStage, threading.Lock]:
    """Build and set up the stage (fails fast on missing weights), shared by the flow's threads."""
    cache_key = json.dumps([config.stage_name, config.params], sort_keys=True, default=str)
    with _STAGES_LOCK:
        if cache_key not in _STAGES:
            # build_stage imports every stage module; one that fails to import is named in its KeyError
            stage = build_stage(config.stage_name, **dict(config.params))
            if stage.name != config.stage:
                raise ValueError(f"stage {config.stage_name!r} writes the {stage.name!r} family, not {config.stage!r}")
            stage.setup()
            _STAGES[cache_key] = (stage, threading.Lock())
        return _STAGES[cache_key]


def _params_dict(stage: LabelStage) -> Any:
    params = getattr(stage, "params", None)
    if params is not None and is_dataclass(params) and not isinstance(params, type):
        return asdict(params)
    return params if isinstance(params, dict) else repr(params)


def stage_identity(stage_name: str, stage: LabelStage) -> dict[str, Any]:
    """What the version id hashes: backend, weights sha256, parameters, stage version (after setup()).
    A stage reports weights and parameters through `provenance()` where it has one."""
    provenance_fn = getattr(stage, "provenance", None)
    prov = provenance_fn() if callable(provenance_fn) else {}
    return {
        "backend": stage_name,
        "weights_sha256": prov.get("weights_sha256", getattr(stage, "weights_sha256", None)),
        "params": prov.get("params", _params_dict(stage)),
        "stage_version": str(stage.version),
        "package_version": prov.get("package_version"),  # recorded, not hashed: a rebuild keeps its version
    }


def label_version(stage_name: str, stage: LabelStage, inputs: dict[str, str]) -> tuple[str, dict[str, Any]]:
    ident = stage_identity(stage_name, stage)
    chosen_inputs = {f: v for f, v in inputs.items() if v != MAIN_VERSION}
    vid = version_id(stage_name, ident["weights_sha256"], ident["params"], ident["stage_version"], chosen_inputs)
    info = {"family": stage.name, "version": vid, "stage": stage_name, **ident, "inputs": chosen_inputs}
    return vid, info


# -- one main shard -> one sidecar shard ---------------------------------------------------------


def clip_window(sample: ClipSample, family: str) -> ClipWindow:
    """A stored clip as the stages see it, without the family being recomputed."""
    meta = sample.meta
    return ClipWindow(
        key=sample.key, source_id=meta.get("source_id", ""), start_s=float(meta.get("start_s", 0.0)),
        end_s=float(meta.get("end_s", 0.0)), frames=sample.frames,
        frame_times_s=np.asarray(meta.get("frame_times_s", []), np.float64),
        meta=meta, labels={f: e for f, e in sample.labels.items() if f != family},
        provenance={f: p for f, p in meta.get("labels", {}).items() if f != family},
    )


def _row(key: str, family: str, version: str, shard: str, status: str, provenance: dict, reason: str = "",
         message: str = "") -> dict:
    return {"key": key, "family": family, "version": version, "shard": shard, "status": status, "reason": reason,
            "message": message, "provenance": json.dumps(provenance, sort_keys=True, default=str)}


def relabel_shard(out_dir: Path, shard: str, stage: LabelStage, lock: threading.Lock, version: str,
                  info: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    """Write one main shard's sidecar (or find it done). Returns its counts; a clip's failure is a row."""
    family = stage.name
    final = sidecar_path(out_dir, family, version, shard)
    rows_file = rows_path(out_dir, family, version, shard)
    if final.exists():  # complete: never redone
        rows = read_rows(rows_file)
        return {"shard": shard, "written": False, **_counts(rows)}
    delay = float(os.environ.get(FAULT_DELAY_ENV, "0") or 0)
    base_provenance = {k: info[k] for k in ("backend", "weights_sha256", "params", "package_version")}
    base_provenance.update(version=info["stage_version"], label_version=version)
    writer = SidecarWriter(final)
    rows: list[dict] = []
    try:
        main_url = str(Path(out_dir) / SHARD_DIR / shard)
        for sample in skip_withdrawn(out_dir, iter_clips_with_labels(out_dir, inputs, urls=[main_url], missing="keep")):
            clip = clip_window(sample, family)
            try:
                with lock:
                    clip = stage(clip)
                entries = clip.labels.get(family)
                if not entries:
                    raise RuntimeError(f"stage {info['stage']} returned no {family!r} labels")
            except ClipRejected as r:
                rows.append(_row(clip.key, family, version, shard, STATUS_REJECTED, base_provenance, r.rule, r.detail))
                continue
            except Exception as e:  # one clip's failure is recorded and the others go on
                _handled.error("%s: %s: %s: %s", clip.key, info["stage"], type(e).__name__, e, exc_info=True)
                rows.append(_row(clip.key, family, version, shard, STATUS_ERROR, base_provenance,
                                 type(e).__name__, str(e)))
                continue
            provenance = {**base_provenance, **clip.provenance.get(family, {}), "version": info["stage_version"],
                          "label_version": version}
            writer.write(sidecar_members(clip.key, family, entries, provenance))
            rows.append(_row(clip.key, family, version, shard, STATUS_OK, provenance))
            if delay:
                time.sleep(delay)
        write_json_atomic(rows_file, rows)  # rows before the rename: a complete sidecar always has them
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"shard": shard, "written": True, **_counts(rows)}


def _counts(rows: list[dict]) -> dict[str, Any]:
    counts: dict[str, Any] = {s: sum(r["status"] == s for r in rows) for s in (STATUS_OK, STATUS_REJECTED, STATUS_ERROR)}
    counts["errors"] = [{"key": r["key"], "reason": r["reason"], "message": r["message"]} for r in rows
                        if r["status"] == STATUS_ERROR]
    return counts


# -- Prefect -------------------------------------------------------------------------------------


@task(name="relabel-shard", cache_policy=NO_CACHE, task_run_name="relabel-{shard}")
def relabel_shard_task(out: str, shard: str, config: RelabelConfig, version: str, info: dict) -> dict:
    stage, lock = get_stage(config)
    return relabel_shard(Path(out), shard, stage, lock, version, info, dict(config.inputs))


@task(name="labels-table", cache_policy=NO_CACHE)
def labels_table_task(out: str) -> bool:
    return write_labels_table(Path(out))


def prepare_version(out_dir: Path, config: RelabelConfig) -> tuple[str, dict[str, Any]]:
    """Check the folder and the inputs, build the stage, and create the version folder (idempotently)."""
    if not (out_dir / INDEX_FILE).exists():
        raise FileNotFoundError(f"{out_dir} is not a curated output: missing {INDEX_FILE}")
    check_family(config.stage)
    for family, ver in config.inputs.items():
        if ver != MAIN_VERSION:
            read_version_info(out_dir, family, ver)
    stage, _ = get_stage(config)
    version, info = label_version(config.stage_name, stage, dict(config.inputs))
    vfile = version_dir(out_dir, stage.name, version) / VERSION_FILE
    if not vfile.exists():  # with the relabel's effective configuration (`unish relabel --config version.json`)
        vfile.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(vfile, {**info, "relabel": config.model_dump()})
    return version, info


def _flow_run_name() -> str:
    """`relabel-<stage>:<backend>-<run folder>`, for every run of the flow (command line or deployment)."""
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config") or {}
    if not isinstance(config, RelabelConfig):
        config = RelabelConfig.model_validate(config)
    return flow_run_name(flow_run.parameters.get("out") or "run", config)


@flow(name="relabel", log_prints=False, validate_parameters=True, flow_run_name=_flow_run_name)
def relabel_flow(out: str, config: RelabelConfig) -> dict:
    # one writer per run folder; tracebacks of handled errors to RUN/logs/relabel-<time>.log
    with run_lock(Path(out), f"unish relabel {config.stage_name}"), run_log(Path(out), "relabel"):
        return _relabel_locked(out, config)


def _relabel_locked(out: str, config: RelabelConfig) -> dict:
    out_dir = Path(out)
    version, info = prepare_version(out_dir, config)
    shards = main_shards(out_dir)
    results: list[dict] = []
    # At most `workers` shards in flight, whatever task runner a deployment gives the flow.
    for i in range(0, len(shards), config.workers):
        futures = [relabel_shard_task.submit(out, s, config, version, info) for s in shards[i:i + config.workers]]
        results += [f.result() for f in futures]
    table_written = labels_table_task(out)
    errors = [{**e, "stage": config.stage_name, "retry_may_help": False} for r in results for e in r["errors"]]
    return {
        "family": config.stage, "version": version, "stage": config.stage_name, "shards": len(shards),
        "shards_written": sum(r["written"] for r in results),
        **{s: sum(r[s] for r in results) for s in (STATUS_OK, STATUS_REJECTED, STATUS_ERROR)},
        "table_written": table_written, "errors": sorted(errors, key=lambda e: e["key"]),
    }


def configured_flow(config: RelabelConfig) -> Any:
    """The flow with `config.workers` shards at once (the task runner is a run-time choice)."""
    return relabel_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.workers))


def flow_run_name(out: str | Path, config: RelabelConfig) -> str:
    from flows.flowrun import run_name

    return run_name(f"relabel-{config.stage_name}", out)


def run_relabel(out: str | Path, config: RelabelConfig) -> dict:
    """Run the flow, named `relabel-<stage>:<backend>-<run folder>`; returns its summary."""
    return configured_flow(config).with_options(flow_run_name=flow_run_name(out, config))(str(out), config)


# -- command line: flows/relabel_cmd.py (imported without Prefect, for a fast `--help`) ------------

if __name__ == "__main__":
    from flows.relabel_cmd import relabel

    typer.run(relabel)
