"""The training loop: one loop from a CPU test to a multi-node GPU run.

    python -m unish_model.train --stage 1 --data RUN... --out TRAIN_RUN --init unish_release.safetensors
    torchrun --nnodes N --nproc-per-node 8 -m unish_model.train --stage 2 ...     (or `unish train`, the same flags)

A step: `grad_accum` micro-batches (the ranks' gradients are averaged only on the last, through DDP's
`no_sync`), one clipped AdamW update over the stage's trainable parameters, the LR schedule (linear warm-up
for `warmup_epochs`, then cosine to zero at `epochs`). Frozen parts run without gradients. Randomness is a
function of (seed, step, micro-batch, rank) — the stage-1 anchors, AlignNet's dropout — and the data order
is the loader's (seed, epoch, position), so a run resumed from a checkpoint continues the same trajectory.
A step whose loss or gradient is not finite on any rank is skipped on all of them, counted and logged; more
than `max_bad_steps` in a row stop the run. The paper's settings are the defaults (FACTS.md).

Rank 0 writes `RUN/metrics.jsonl` (one object per logged step: step, epoch, lr, loss and each named term,
grad_norm, clips/s, data_wait share, skipped clips by reason, skipped steps), TensorBoard scalars under
`RUN/tensorboard/`, checkpoints (see checkpoint.py) and `RUN/summary.json` at the end.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from shards.atomic import write_json_atomic
from unish_model.body import BodyModel, write_synthetic_body_model
from unish_model.pipeline import UniSH
from unish_model.train.checkpoint import (MODEL_PRESETS, list_checkpoints, load_checkpoint, load_model, rng_state,
                                          save_checkpoint, set_rng_state)
from unish_model.train.batch import ClipBatch
from unish_model.train.data import ClipLoader, LoaderConfig
from unish_model.train.stages import STAGE_NAMES, TRAINABLE, StageStep, default_loss_config, freeze_for_stage

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "train_config.json"


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the paper's (per-GPU batch 2, accumulation 4, AdamW
    (0.9, 0.95), lr 5e-5, weight decay 0.05, 3 warm-up epochs then cosine to zero, clipping at 1.0, 30 frames)."""

    stage: int
    data: list[str]
    out: str
    init: str | None = None  # the official unish_release.safetensors, or a previous stage's run / checkpoint
    # stage 1: the pre-trained model whose point decoder the regulariser keeps to (default: --init); set it when
    # stage 1 starts again from one of its own checkpoints
    original: str | None = None
    model: str = "paper"  # model sizes: paper, small or tiny (an --init checkpoint brings its own)
    tiny_random: bool = False  # the tiny model with random weights and a synthetic body (tests, demos)
    epochs: int = 100
    warmup_epochs: float = 3.0
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    batch_size: int = 2  # clips per rank per micro-batch
    grad_accum: int = 4
    # each process also plays this many ranks (reads their data, accumulates their gradients): a run on fewer
    # GPUs takes exactly the batches and updates of one on `emulate_ranks` times as many
    emulate_ranks: int = 1
    clip_norm: float = 1.0
    max_steps: int | None = None  # stop after this many optimiser steps (the schedule still spans `epochs`)
    frames: int | None = 30  # clips with another frame count are skipped
    workers: int = 2  # data loader workers per rank
    shuffle_buffer: int = 16
    seed: int = 0
    labels: dict[str, str] = field(default_factory=dict)  # label family -> main | latest | version
    body_model: str | None = None  # SMPL_NEUTRAL.npz (stages 2 and 3)
    precision: str = "bf16"  # autocast on CUDA: bf16 (the release's) or fp32
    activation_checkpointing: bool = False  # recompute the human ViT's activations in stage 2
    log_every: int = 1
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_bad_steps: int = 10
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is there, else cpu
    progress: bool = True
    fps: float = 6.0
    loss: dict[str, Any] = field(default_factory=dict)  # overrides of the stage's loss settings (losses/config.py)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ValueError(f"--stage must be 1, 2 or 3, not {self.stage}")
        if not self.data:
            raise ValueError("--data needs at least one run folder, shard pattern or URL")
        if self.model not in MODEL_PRESETS:
            raise ValueError(f"--model must be one of {', '.join(MODEL_PRESETS)}, not {self.model!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"--precision must be bf16 or fp32, not {self.precision!r}")
        for name in ("epochs", "batch_size", "grad_accum", "emulate_ranks", "log_every", "checkpoint_every",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0 or self.clip_norm <= 0 or self.warmup_epochs < 0:
            raise ValueError("--lr and --clip-norm must be > 0, --warmup-epochs >= 0")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.data = [str(d) for d in self.data]
        unknown = set(self.loss) - {f.name for f in dataclasses.fields(type(default_loss_config(self.stage)))}
        if unknown:
            raise ValueError(f"unknown stage-{self.stage} loss settings: {', '.join(sorted(unknown))}")

    def loss_config(self) -> Any:
        return dataclasses.replace(default_loss_config(self.stage), **self.loss)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**dict(data))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (stdlib) or YAML (PyYAML, only when used) file of TrainConfig settings."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        return tomllib.loads(text)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a mapping of settings expected")
        return data
    raise ValueError(f"{path}: a .toml, .yaml or .yml file expected")


# ------------------------------------------------------------------------------------------------ pieces


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> Dist:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) -> a process group (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device != "auto":
        return torch.device(config.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def derived_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0, then cosine to zero at `total_steps` (per optimiser step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases, norms, embeddings-as-vectors and tokens are not decayed."""
    decay, no_decay = [], []
    for _, param in sorted(model.named_parameters()):
        if param.requires_grad:
            (decay if param.ndim >= 2 and param.shape[0] > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(config: TrainConfig, scratch: Path) -> tuple[UniSH, str]:
    """The model the run starts from, and where it came from."""
    autocast = None if config.precision == "fp32" else "bfloat16"
    if config.init:
        model, _ = load_model(config.init)
        source = str(config.init)
    elif config.tiny_random:
        torch.manual_seed(config.seed)
        model, source = UniSH(MODEL_PRESETS["tiny"]()), "tiny random"
    else:
        raise ValueError("--init is needed: the official unish_release.safetensors (or a previous stage's run); "
                         "--tiny-random trains a tiny random model for tests and demos")
    if model.config.autocast_dtype != autocast:  # the same weights under the requested precision
        rebuilt = UniSH(dataclasses.replace(model.config, autocast_dtype=autocast))
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        model = rebuilt
    return model.float(), source


def build_body(config: TrainConfig, scratch: Path) -> BodyModel | None:
    if config.stage == 1:
        return None
    if config.body_model:
        return BodyModel.from_file(config.body_model)
    if config.tiny_random:
        scratch.mkdir(parents=True, exist_ok=True)
        return BodyModel.from_file(write_synthetic_body_model(scratch / "synthetic_smpl.npz"))
    raise ValueError(f"stage {config.stage} needs --body-model SMPL_NEUTRAL.npz (convert the official .pkl with "
                     f"`python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz`)")


class MetricsLog:
    """metrics.jsonl and TensorBoard, on rank 0 only."""

    def __init__(self, run: Path, enabled: bool):
        self.enabled = enabled
        self.path = run / METRICS_FILE
        self.tb = None
        if enabled:
            run.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tensorboard"))
            except ImportError:  # torch alone (a bare GPU box): metrics.jsonl still has everything
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "step":
                    self.tb.add_scalar(name, value, record["step"])
            self.tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run logs those steps again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _batches(loader: ClipLoader) -> Iterator[tuple[int, ClipBatch]]:
    """(epoch, batch) forever, epoch after epoch, from the loader's current position."""
    while True:
        epoch = loader.epoch if loader.consumed < len(loader) else loader.epoch + 1
        for batch in loader:
            yield epoch, batch


def _loader_stats(loaders: list[ClipLoader]) -> Counter:
    total: Counter = Counter()
    for each in loaders:
        total.update(each.stats)
    return total


def _global_mean(loss: torch.Tensor, terms: dict[str, float], d: Dist) -> tuple[torch.Tensor, dict[str, float]]:
    """The step's loss and terms averaged over all ranks (what rank 0 logs is the global batch's)."""
    if not d.active:
        return loss, terms
    names = sorted(terms)
    values = torch.tensor([float(loss), *(terms[n] for n in names)], dtype=torch.float64, device=loss.device)
    dist.all_reduce(values)
    values /= d.world
    return values[0].to(loss.dtype), {n: float(v) for n, v in zip(names, values[1:])}


def _all_ranks_finite(value: torch.Tensor, d: Dist) -> bool:
    flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=value.device)
    if d.active:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0


# ------------------------------------------------------------------------------------------------ the loop


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary (also written to RUN/summary.json on rank 0)."""
    run = Path(config.out)
    device_kind = "cuda" if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available()) \
        else "cpu"
    d = init_distributed(device_kind)
    device = pick_device(config, d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    scratch = run / "_work"
    model, source = build_model(config, scratch)
    freeze_for_stage(model, config.stage)
    body = build_body(config, scratch)
    original = load_model(config.original)[0] if config.original and config.stage == 1 else None
    step_module = StageStep(model, config.stage, config.loss_config(), body, config.activation_checkpointing,
                            original=original)
    step_module.to(device)
    forward: nn.Module = step_module
    if d.active:
        forward = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)

    data_config = LoaderConfig(
        stage=config.stage, batch_size=config.batch_size, workers=config.workers, seed=config.seed,
        shuffle_buffer=config.shuffle_buffer, labels=dict(config.labels), device=str(device), frames=config.frames)
    ranks = [d.rank * config.emulate_ranks + v for v in range(config.emulate_ranks)]  # the data ranks this process plays
    loaders = [ClipLoader(config.data, data_config, rank=r, world=d.world * config.emulate_ranks) for r in ranks]
    loader = loaders[0]  # all of them are at the same position: one state describes them
    steps_per_epoch = max(1, len(loader) // config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))

    step, bad_in_row, bad_total = 0, 0, 0
    resumed_from = None
    checkpoints = list_checkpoints(run)
    if checkpoints:  # rerunning with the same --out continues the run
        state, trainer_state, loader_state, _ = load_checkpoint(checkpoints[-1])
        model.load_state_dict(state, strict=True)
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        step, bad_total = int(trainer_state["step"]), int(trainer_state["bad_total"])
        for each in loaders:
            each.load_state_dict(loader_state)
        set_rng_state(trainer_state["rng"])
        resumed_from = str(checkpoints[-1])
    metrics = MetricsLog(run, d.main)
    metrics.truncate_after(step)
    info = {"stage": config.stage, "init": source, "trained": list(TRAINABLE[config.stage])}
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run / CONFIG_FILE, config.to_dict())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        played = f" playing {len(ranks)} data ranks each" if len(ranks) > 1 else ""
        _say(f"stage {config.stage} ({STAGE_NAMES[config.stage]}): training {n_train:,} of {n_all:,} parameters "
             f"({', '.join(p.rstrip('.') for p in TRAINABLE[config.stage])}); {d.world} process(es) on {device}"
             f"{played}; {len(loader)} batches of {config.batch_size} per data rank and epoch, {steps_per_epoch} steps "
             f"per epoch, {total_steps} in the schedule" + (f"; resumed at step {step} from {resumed_from}"
                                                           if resumed_from else ""))

    last_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    streams = [_batches(each) for each in loaders]
    progress = _Progress(config.progress and d.main, last_step, step)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.precision == "bf16"
                else nullcontext())
    epoch = loader.epoch
    last_loss: float | None = None
    stats_before = _loader_stats(loaders)
    try:
        while step < last_step:
            step_module.train()
            started = time.perf_counter()
            waited = 0.0
            losses, terms_sum, clips = [], Counter(), 0
            parts = config.grad_accum * len(loaders)
            for micro in range(config.grad_accum):
                for part, (rank, stream) in enumerate(zip(ranks, streams)):
                    t0 = time.perf_counter()
                    epoch, batch = next(stream)
                    waited += time.perf_counter() - t0
                    batch = batch.to(device)
                    torch.manual_seed(derived_seed(config.seed, step, micro, rank))  # dropout
                    generator = torch.Generator(device=device).manual_seed(
                        derived_seed("anchors", config.seed, step, micro, rank))
                    last = micro == config.grad_accum - 1 and part == len(loaders) - 1
                    sync = forward.no_sync() if d.active and not last else nullcontext()  # ranks average once
                    with sync, autocast:
                        total, terms = forward(batch, generator, config.fps)
                        (total / parts).backward()
                    losses.append(total.detach().float())
                    terms_sum.update({k: float(v.detach()) for k, v in terms.items()})
                    clips += len(batch.keys)
            loss, terms_mean = _global_mean(torch.stack(losses).mean(), {k: v / parts for k, v in terms_sum.items()}, d)
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
            finite = _all_ranks_finite(torch.stack([loss, grad_norm.to(loss)]), d)
            if finite:
                optimizer.step()
                bad_in_row = 0
            else:
                bad_in_row += 1
                bad_total += 1
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - started
            stats_now = _loader_stats(loaders)
            skipped = {k[len("skipped:"):]: v for k, v in (stats_now - stats_before).items() if k.startswith("skipped:")}
            stats_before = stats_now
            record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "loss": float(loss),
                      **terms_mean, "grad_norm": float(grad_norm),
                      "clips_per_s": clips * d.world / elapsed, "data_wait": waited / elapsed,
                      "skipped_clips": skipped, "skipped_step": not finite, "skipped_steps": bad_total}
            last_loss = record["loss"]
            if d.main and (step % config.log_every == 0 or step == last_step or not finite):
                metrics.write(record)
            progress.update(step, record)
            if bad_in_row > config.max_bad_steps:
                raise FloatingPointError(f"{bad_in_row} steps in a row had a non-finite loss or gradient (more than "
                                         f"--max-bad-steps {config.max_bad_steps}); the last good checkpoint stays")
            if step % config.checkpoint_every == 0 or step == last_step:
                _save(run, step, model, optimizer, scheduler, loader, bad_total, info, config, d)
    finally:
        progress.close()
        metrics.close()
    summary = {"stage": config.stage, "steps": step, "epoch": epoch, "final_loss": last_loss,
               "skipped_steps": bad_total, "skipped_clips": {k[len("skipped:"):]: v for k, v in
                                                             _loader_stats(loaders).items() if k.startswith("skipped:")},
               "checkpoint": str(run), "resumed_from": resumed_from}
    if d.main:
        write_json_atomic(run / SUMMARY_FILE, summary)
        _say(f"done: {step} steps, final loss {last_loss:.4g}, {bad_total} skipped steps; model in "
             f"{run / 'model.safetensors'}" if last_loss is not None else f"done: step {step} reached, nothing to do")
    return summary


def _save(run: Path, step: int, model: UniSH, optimizer: torch.optim.Optimizer, scheduler: Any, loader: ClipLoader,
          bad_total: int, info: dict[str, Any], config: TrainConfig, d: Dist) -> None:
    if d.main:
        trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                   "bad_total": bad_total, "rng": rng_state()}
        save_checkpoint(run, step, model, trainer, loader.state_dict(), info, config.keep_checkpoints)
    if d.active:
        dist.barrier()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _Progress:
    """A progress bar on rank 0: step, loss, lr, clips/s and ETA (rich, on stderr)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:  # torch alone: metrics.jsonl and the closing summary still say everything
            return

        self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn(), console=Console(stderr=True))
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self.bar is not None:
            info = f"loss {record['loss']:.4g}  lr {record['lr']:.2e}  {record['clips_per_s']:.1f} clips/s"
            self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["CONFIG_FILE", "METRICS_FILE", "SUMMARY_FILE", "TrainConfig", "build_model", "lr_factor",
           "param_groups", "read_config_file", "train"]
