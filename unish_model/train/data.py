"""Training clips streamed from shards into batches: deterministic, split by rank and worker, resumable.

The epoch plan
--------------
Shards (see `sources.py`) are shuffled per epoch from `(seed, epoch)`. Their clips, in that order, form one
sequence of N positions; rank r of R reads the positions [r*L, (r+1)*L) with L = N // R, and its DataLoader
worker w of W reads an equal part of that range. So every clip is read exactly once per epoch across ranks
and workers when R divides N (else the last N % R positions of that epoch's order are left out), and a
range may start or end inside a shard (the shard is read up to there). Inside a worker, clips pass a
shuffle buffer (seeded by seed, epoch, rank and worker), are skipped when they lack what the stage needs
(counted with the reason), and are batched by shape, so that landscape (518x294) and portrait (294x518)
clips never share a batch. Every worker yields exactly Q = (L // W) // B batches: when skips or shape
buckets leave it short, it reads its range again (a new shuffle) until it has them. Every rank therefore
yields Q*W batches, however unevenly the shards are sized: DDP never waits at the end of an epoch for a
rank that has run dry.

Resuming
--------
The DataLoader takes batches from its workers in turn, so after n batches logical worker w has given
ceil((n - w) / W) of them and the next batch is worker n % W's. `ClipLoader.state_dict()` records the
epoch and n; a restored loader's workers take the logical roles rotated by n % W (the DataLoader starts
its turns at worker 0), replay their streams up to there without decoding anything (the shuffle, the stage
filter and the shape buckets read only member names and meta.json), and go on with exactly the batches an
uninterrupted loader would have given, in its order. A state is only valid for the same data, seed, batch
size, world size and worker count.

What a batch holds
------------------
Workers decode only what needs a CPU (JPEG, zlib) and hand over compact batches; the loader expands them
on its `device` (see `clips.py` for every tensor: frames (B,T,3,H,W) in [0,1], masks, metric depth with its
validity and intrinsics, 2D keypoints, boxes, frame times, and the ground truth of synthetic clips).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import multiprocessing.util
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import cv2
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.schema import DEPTH, GT, GT_DEPTH, KEYPOINTS, MASKS
from shards.reader import shuffle_buffer
from shards.sidecar import with_label_versions
from shards.tario import raw_samples
from shards.verify import iter_checked_samples, raise_problem
from unish_model.train.batch import ClipBatch
from unish_model.train.clips import compact_batch, expand
from unish_model.train.sources import ShardInfo, choose_versions, resolve_shards, sidecar_url

# What each training stage's loss reads (see unish_model/losses): clips lacking one are skipped and counted.
STAGE_NEEDS: dict[int, tuple[str, ...]] = {
    1: (MASKS, DEPTH),  # human surface refinement: SAM2 masks, MoGe-2 depth
    2: (GT, GT_DEPTH),  # coarse alignment: synthetic ground truth
    3: (MASKS, DEPTH, KEYPOINTS),  # fine alignment: masks, depth, CameraHMR 2D keypoints
}
# The member whose presence means a family's label is there (checked before anything is decoded).
_PRESENCE = {MASKS: "masks.mask_bits.npy", DEPTH: "depth.code_z.npy", KEYPOINTS: "keypoints.joints2d.npy",
             GT: "gt.pose.npy", GT_DEPTH: "gt_depth.code_z.npy"}
_ABSENT = {DEPTH: "depth.absent.json", GT_DEPTH: "gt_depth.absent.json"}


@dataclass(frozen=True)
class LoaderConfig:
    stage: int
    batch_size: int = 2  # per rank (the paper: 2 per GPU)
    workers: int = 2  # DataLoader worker processes per rank (0: read in the training process)
    seed: int = 0
    shuffle_buffer: int = 16  # clips held per worker for shuffling (each ~1-2 MB of encoded members)
    labels: Mapping[str, str] = field(default_factory=dict)  # family -> main | latest | a version id
    frames_dtype: str = "float32"  # or uint8 (B,T,3,H,W), for callers that convert themselves
    device: str = "cpu"  # where batches are expanded and handed out (cuda: pinned, copied without blocking)
    frames: int | None = None  # clips with another frame count are skipped (None: any)
    verify: bool = True  # check each clip against its run's index digests
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        if self.stage not in STAGE_NEEDS:
            raise ValueError(f"stage must be one of {sorted(STAGE_NEEDS)}, not {self.stage}")
        if self.frames_dtype not in ("float32", "uint8"):
            raise ValueError(f"frames_dtype must be float32 or uint8, not {self.frames_dtype!r}")
        if self.batch_size < 1 or self.workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be >= 1 and workers >= 0")


# ---------------------------------------------------------------------------------------------- the plan


def _rng_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def epoch_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_shards))
    random.Random(_rng_seed("shards", seed, epoch)).shuffle(order)
    return order


def split_range(lo: int, hi: int, parts: int, part: int) -> tuple[int, int]:
    """The part-th of `parts` contiguous, nearly equal pieces of [lo, hi)."""
    n = hi - lo
    return lo + part * n // parts, lo + (part + 1) * n // parts


@dataclass(frozen=True)
class Span:
    shard: int  # index into the shard list
    start: int  # first sample position inside the shard
    stop: int  # one past the last


def worker_spans(counts: Sequence[int], order: Sequence[int], world: int, rank: int, workers: int, worker: int
                 ) -> list[Span]:
    """The pieces of shards one worker of one rank reads in an epoch (see the module docstring)."""
    per_rank = sum(counts) // world
    lo, hi = split_range(rank * per_rank, (rank + 1) * per_rank, workers, worker)
    spans, pos = [], 0
    for i in order:
        a, b = max(lo, pos), min(hi, pos + counts[i])
        if a < b:
            spans.append(Span(i, a - pos, b - pos))
        pos += counts[i]
    return spans


def batches_per_worker(total: int, world: int, workers: int, batch_size: int) -> int:
    return (total // world // max(workers, 1)) // batch_size


# ------------------------------------------------------------------------------------- reading members


class ClipSkipped(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def stage_check(members: Mapping[str, Any], needs: Sequence[str], frames: int | None) -> tuple[int, int, int]:
    """(T, H, W) of a clip that has what the stage needs, from member names and meta.json alone; raises
    ClipSkipped with the reason otherwise."""
    for family in needs:
        if _PRESENCE[family] not in members:
            raise ClipSkipped(f"{family}_absent" if _ABSENT.get(family) in members else f"no_{family}")
    meta = json.loads(members["meta.json"])
    t = len(meta.get("frame_times_s") or [])
    if frames is not None and t != frames:
        raise ClipSkipped("frame_count")
    return t, int(meta["height"]), int(meta["width"])


def _shard_members(info: ShardInfo, span: Span, chosen: Mapping[str, str], verify: bool
                   ) -> Iterator[dict[str, Any]]:
    """The samples [start, stop) of a shard, checked against the run's index and merged with the chosen
    label versions (a clip a chosen version has no label for arrives without that family). The shard is
    read from its start: a tar has no random access."""
    samples: Iterator[dict[str, Any]]
    if verify and info.expected is not None:
        samples = iter_checked_samples(info.url, info.expected, raise_problem(info.url))
    else:
        samples = raw_samples(info.url)
    if chosen and info.run is not None:
        name = info.url.rsplit("/", 1)[-1]
        sidecars = {f: sidecar_url(info.run, f, v, name) for f, v in chosen.items()}
        samples = (members for members, _ in with_label_versions(samples, info.url, sidecars))
    for pos, members in enumerate(samples):
        if pos >= span.stop:
            return
        if pos >= span.start:
            yield members


# --------------------------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class _Pending:
    members: dict[str, Any]
    shape: tuple[int, int, int]


class ShardClipDataset(IterableDataset):
    """The per-worker stream of batches (see the module docstring); `ClipLoader` drives it."""

    def __init__(self, shards: Sequence[ShardInfo], config: LoaderConfig, rank: int = 0, world: int = 1):
        if not shards:
            raise ValueError("no shards to read")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.shards = list(shards)
        self.config = config
        self.rank, self.world = rank, world
        self.needs = STAGE_NEEDS[config.stage]
        self.total = sum(s.clips for s in self.shards)
        self.quota = batches_per_worker(self.total, world, max(config.workers, 1), config.batch_size)
        if self.quota == 0:
            raise ValueError(f"{self.total} clips are too few for {world} ranks x {max(config.workers, 1)} workers "
                             f"x batch {config.batch_size}: every worker needs at least one batch")
        self.chosen = {s.run: choose_versions(s.run, config.labels, [x.url.rsplit("/", 1)[-1] for x in self.shards
                                                                      if x.run == s.run])
                       for s in self.shards if s.run is not None and config.labels}
        ctx = worker_context()  # shared values must come from the context the workers start in
        self._epoch = ctx.Value("q", 0)
        self._resume_batches = ctx.Value("q", 0)  # batches of the current epoch already consumed

    def set_epoch(self, epoch: int, consumed_batches: int = 0) -> None:
        self._epoch.value = epoch
        self._resume_batches.value = consumed_batches

    @property
    def batches_per_epoch(self) -> int:
        return self.quota * max(self.config.workers, 1)

    def __iter__(self) -> Iterator[ClipBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(self.config.workers, 1):
            raise RuntimeError(f"the loader was planned for {self.config.workers} workers, runs with {workers}")
        epoch, consumed = int(self._epoch.value), int(self._resume_batches.value)
        # The DataLoader takes batches round robin from worker 0; after n consumed batches the next one is
        # logical worker n % W's, so worker d plays logical worker (d + n) % W and the sequence goes on as it was.
        logical = (worker + consumed) % workers
        skip = (max(consumed - logical, 0) + workers - 1) // workers  # the batches it gave before
        yield from self.worker_batches(epoch, logical, workers, skip)

    def worker_batches(self, epoch: int, worker: int, workers: int, skip: int = 0) -> Iterator[ClipBatch]:
        cfg = self.config
        order = epoch_order(len(self.shards), cfg.seed, epoch)
        spans = worker_spans([s.clips for s in self.shards], order, self.world, self.rank, workers, worker)
        rng = random.Random(_rng_seed("clips", cfg.seed, epoch, self.rank, worker))
        stats: Counter = Counter()
        produced = 0
        while produced < self.quota:
            made_one = False
            for batch_members in self._pass(spans, rng, stats):
                if produced >= self.quota:
                    return
                made_one = True
                produced += 1
                if produced <= skip:
                    stats.clear()  # counted by the run that consumed this batch
                    continue
                yield self._decode(batch_members, dict(stats))
                stats.clear()
            if not made_one:
                raise RuntimeError(f"rank {self.rank} worker {worker}: no batch of {cfg.batch_size} same-shape clips "
                                   f"with {', '.join(self.needs)} in its share (skipped: {dict(stats)})")

    def _pass(self, spans: list[Span], rng: random.Random, stats: Counter) -> Iterator[list[_Pending]]:
        """One read of the worker's spans: usable clips, shuffled, bucketed into same-shape batches."""
        buckets: dict[tuple[int, int, int], list[_Pending]] = {}
        for pending in shuffle_buffer(self._usable(spans, stats), self.config.shuffle_buffer, rng):
            bucket = buckets.setdefault(pending.shape, [])
            bucket.append(pending)
            if len(bucket) == self.config.batch_size:
                buckets[pending.shape] = []
                yield bucket

    def _usable(self, spans: list[Span], stats: Counter) -> Iterator[_Pending]:
        for span in spans:
            info = self.shards[span.shard]
            for members in _shard_members(info, span, self.chosen.get(info.run, {}), self.config.verify):
                stats["clips_read"] += 1
                try:
                    shape = stage_check(members, self.needs, self.config.frames)
                except ClipSkipped as e:
                    stats[f"skipped:{e.reason}"] += 1
                    continue
                yield _Pending(members, shape)

    def _decode(self, batch: list[_Pending], stats: dict[str, int]) -> ClipBatch:
        # Training on the CPU: no device to hand the elementwise half to, so finish the batch here.
        on_cpu = torch.device(self.config.device).type == "cpu"
        out = compact_batch([p.members for p in batch], self.needs, batch[0].shape, on_cpu, self.config.frames_dtype)
        out.stats = stats
        return out


def worker_context() -> mp.context.BaseContext:
    """Workers start from a fork server, not a fork of the training process: a process with threads running
    (a Prefect server, OpenMP pools, NCCL) can leave a forked child waiting forever on a lock one of them held.
    The server imports the loader once, so each worker still starts in a fraction of a second."""
    short_socket_folder()
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


SOCKET_PATH_MAX = 107  # bytes in a Unix socket's path (sun_path, less its final NUL)


def short_socket_folder() -> None:
    """multiprocessing puts its Unix sockets (the fork server's; the one that hands a batch's shared memory from a
    worker to the trainer) in its folder below the temp folder. Under a long TMPDIR their paths do not fit, and
    a worker's batch would be lost without an error: give this process's multiprocessing a folder under /tmp
    (or /dev/shm) then, as `multiprocessing.util.get_temp_dir` would have made it (TMPDIR itself is kept)."""
    current = multiprocessing.util.get_temp_dir()
    if len(current) + len("/listener-xxxxxxxx") <= SOCKET_PATH_MAX:
        return
    base = next((b for b in ("/tmp", "/dev/shm") if os.access(b, os.W_OK)), None)
    if base is None:
        return
    folder = tempfile.mkdtemp(prefix="pymp-", dir=base)
    multiprocessing.util.Finalize(None, shutil.rmtree, args=[folder, True], exitpriority=-100)
    mp.current_process()._config["tempdir"] = folder  # where get_temp_dir keeps its folder


def _worker_init(_: int) -> None:
    short_socket_folder()  # the worker's end of the shared-memory hand-over
    # Two levels of threads (workers x OpenCV/torch threads) only fight over the cores.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class ClipLoader:
    """Batches of one rank for one epoch at a time: `set_epoch(e)`, iterate, repeat; `state_dict()` /
    `load_state_dict()` resume mid-epoch; `stats` sums what the workers read and skipped."""

    def __init__(self, data: str | Sequence[str] | Sequence[ShardInfo], config: LoaderConfig,
                 rank: int | None = None, world: int | None = None):
        if rank is None or world is None:
            rank, world = _dist_rank_world()
        shards = list(data) if data and isinstance(list(data)[0], ShardInfo) else resolve_shards(data)  # type: ignore[arg-type]
        self.config = config
        self.dataset = ShardClipDataset(shards, config, rank, world)
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch handed out
        self.stats: Counter = Counter()
        kwargs: dict[str, Any] = {}
        if config.workers > 0:
            kwargs = dict(persistent_workers=config.persistent_workers, prefetch_factor=config.prefetch_factor,
                          worker_init_fn=_worker_init, multiprocessing_context=worker_context())
        self.device = torch.device(config.device)
        self._loader = DataLoader(self.dataset, batch_size=None, num_workers=config.workers,
                                  pin_memory=config.pin_memory and self.device.type == "cuda", **kwargs)

    def __len__(self) -> int:
        return self.dataset.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self) -> Iterator[ClipBatch]:
        if self.consumed >= len(self):
            self.epoch, self.consumed = self.epoch + 1, 0
        self.dataset.set_epoch(self.epoch, self.consumed)
        for batch in self._loader:
            self.consumed += 1
            self.stats.update(batch.stats)
            yield expand(batch, self.device, self.config.frames_dtype)

    def state_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {"epoch": self.epoch, "consumed": self.consumed, "stats": dict(self.stats), "seed": cfg.seed,
                "batch_size": cfg.batch_size, "workers": cfg.workers, "world": self.dataset.world,
                "rank": self.dataset.rank, "shards": _fingerprint(self.dataset.shards), "stage": cfg.stage}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("seed", "batch_size", "workers", "world", "shards", "stage"):
            if state[key] != mine[key]:
                raise ValueError(f"loader state was saved with {key}={state[key]!r}, this loader has {mine[key]!r}: "
                                 f"resuming would not continue the same sample order")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self.stats = Counter(state.get("stats", {}))


def _fingerprint(shards: Sequence[ShardInfo]) -> str:
    return hashlib.sha256(json.dumps([[s.url, s.clips] for s in shards]).encode()).hexdigest()[:16]


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


__all__ = ["STAGE_NEEDS", "ClipBatch", "ClipLoader", "ClipSkipped", "LoaderConfig", "ShardClipDataset", "Span",
           "batches_per_worker", "epoch_order", "split_range", "stage_check", "worker_spans"]
