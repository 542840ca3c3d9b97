"""The `train` Prefect flow: one training stage launched with torchrun, for deployments and schedules.

The flow builds the torchrun command (an argument list, never a shell line) for this node's GPUs, runs it,
streams its output into the flow's logs, and returns the run's `summary.json`. A failed or killed launch
fails the flow; deploying it again (or running `unish train` with the same --out) resumes from the run's
last checkpoint. Multi-node runs are launched by the cluster (infra/slurm/train.sbatch,
infra/k8s/train-pytorchjob.yaml), each node running the same `torchrun ... -m unish_model.train` line.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import flows.prefect_env  # noqa: F401  (sets Prefect defaults before it is imported)
from prefect import flow, get_run_logger

from unish_model.train.cli import config_from_args
from unish_model.train.loop import SUMMARY_FILE, TrainConfig


def train_arguments(settings: dict[str, Any]) -> list[str]:
    """TrainConfig settings -> `python -m unish_model.train` flags (validated by building the config first)."""
    config = TrainConfig.from_mapping(settings)
    args: list[str] = []
    for name, value in config.to_dict().items():
        flag = "--" + name.replace("_", "-")
        default = TrainConfig.__dataclass_fields__[name].default
        if value is None or (not isinstance(value, (dict, list)) and value == default and name not in
                             ("stage", "out")):
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            for key, item in value.items():
                args += [flag, f"{key}={json.dumps(item) if not isinstance(item, str) else item}"]
        elif isinstance(value, (list, tuple)):
            if value:
                args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    config_from_args(args)  # the flags parse back to the same settings, or fail here, not on the cluster
    return args


def torchrun_command(settings: dict[str, Any], nproc_per_node: int = 1) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}"]
    return [*launcher, "-m", "unish_model.train", *train_arguments(settings)]


@flow(name="train", log_prints=False, validate_parameters=True)
def train_flow(settings: dict[str, Any], nproc_per_node: int = 1) -> dict[str, Any]:
    """Train one stage on this node's GPUs (`nproc_per_node` processes); returns the run's summary."""
    logger = get_run_logger()
    command = torchrun_command({**settings, "progress": False}, nproc_per_node)
    logger.info("launching: %s", " ".join(command))
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            logger.info(line.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"training exited with status {proc.returncode}; rerun to resume from its last checkpoint")
    return json.loads((Path(settings["out"]) / SUMMARY_FILE).read_text())
