"""The training loader over shards the tests curate: exact splits by rank and worker, even epochs, shape
buckets, stage-aware skips, resume, label versions, and clips as tensors."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from shards.reader import ShardDamaged
from train_data import curate_training_run, person_disc, synthetic_depth
from unish_model.train.data import ClipLoader, LoaderConfig, epoch_order, worker_spans
from unish_model.train.sources import resolve_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def even_run(tmp_path_factory, media, prefect_api) -> Path:
    """20 one-second clips of vtest (landscape) in 4 shards of 5."""
    return curate_training_run(media, tmp_path_factory.mktemp("even"), {"vtest": "vtest_20s.mp4"}, shard_max_samples=5)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, media, synthetic_videos, prefect_api) -> Path:
    """Landscape and portrait clips in shards of 3 (the last ones short); every 5th second has no depth."""
    return curate_training_run(media, tmp_path_factory.mktemp("mixed"),
                               {"vtest": "vtest_20s.mp4", "portrait": str(synthetic_videos["rotated"])},
                               shard_max_samples=3, absent_every=5)


def ok_keys(run: Path) -> list[str]:
    return sorted(r["key"] for r in pq.read_table(run / "index.parquet").to_pylist() if r["status"] == "ok")


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch.keys]


def test_the_plan_reads_every_position_once_for_any_sizes():
    rng = random.Random(0)
    for _ in range(50):
        counts = [rng.randint(1, 9) for _ in range(rng.randint(1, 12))]
        world, workers = rng.randint(1, 4), rng.randint(1, 3)
        order = epoch_order(len(counts), seed=3, epoch=rng.randint(0, 5))
        starts = np.cumsum([0] + counts)[:-1]
        seen = Counter()
        per_rank = []
        for rank in range(world):
            n = 0
            for w in range(workers):
                for s in worker_spans(counts, order, world, rank, workers, w):
                    assert 0 <= s.start < s.stop <= counts[s.shard]
                    seen.update(range(starts[s.shard] + s.start, starts[s.shard] + s.stop))
                    n += s.stop - s.start
            per_rank.append(n)
        assert set(per_rank) == {sum(counts) // world}  # ranks read equally many
        assert all(v == 1 for v in seen.values()) and len(seen) == world * (sum(counts) // world)


def test_every_clip_once_per_epoch_across_two_ranks_and_two_workers(even_run):
    config = LoaderConfig(stage=1, batch_size=1, workers=2, seed=7)
    epochs = []
    for epoch in (0, 1):
        keys = []
        for rank in (0, 1):
            loader = ClipLoader(str(even_run), config, rank=rank, world=2)
            loader.set_epoch(epoch)
            got = keys_of(loader)
            assert len(got) == len(loader) == 10
            keys += got
        assert sorted(keys) == ok_keys(even_run) and len(set(keys)) == 20
        epochs.append(keys)
    assert epochs[0] != epochs[1]  # a new order each epoch, the same clips


def test_two_processes_split_the_clips_exactly(even_run, tmp_path):
    # under a TMPDIR too long for multiprocessing's Unix sockets (see data.short_socket_folder)
    long_tmp = tmp_path / ("a-long-temporary-folder-" * 4) / "and-another-level"
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) > 107 - len("/pymp-xxxxxxxx/listener-xxxxxxxx")
    script = textwrap.dedent("""
        import json, sys
        from unish_model.train.data import ClipLoader, LoaderConfig
        loader = ClipLoader(sys.argv[1], LoaderConfig(stage=3, batch_size=1, workers=2, seed=1),
                            rank=int(sys.argv[2]), world=2)
        print(json.dumps([k for b in loader for k in b.keys]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(even_run), str(r)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TMPDIR": str(long_tmp)})
             for r in (0, 1)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [len(o) for o in outs] == [10, 10]
    assert sorted(outs[0] + outs[1]) == ok_keys(even_run)


def test_uneven_shards_and_skips_still_give_every_rank_the_same_batches(mixed_run):
    n_ok = len(ok_keys(mixed_run))
    config = LoaderConfig(stage=1, batch_size=2, workers=2, seed=0)
    for world in (2, 3):
        lengths = []
        for rank in range(world):
            loader = ClipLoader(str(mixed_run), config, rank=rank, world=world)
            batches = list(loader)
            lengths.append(len(batches))
            for b in batches:
                shapes = {tuple(f.shape) for f in b["frames"]}
                assert len(shapes) == 1 and b["frames"].shape[0] == 2  # one shape per batch, full batches
                assert all(m["width"] == b["frames"].shape[-1] for m in b.meta)
            assert loader.stats["skipped:depth_absent"] > 0
            assert loader.stats["clips_read"] >= 2 * len(batches)
        assert lengths == [len(loader)] * world == [((n_ok // world) // 2) // 2 * 2] * world
    shapes = {(m["width"], m["height"]) for b in ClipLoader(str(mixed_run), config) for m in b.meta}
    assert shapes == {(518, 294), (294, 518)}  # both orientations are read, never mixed


def test_resume_continues_with_the_same_clips(mixed_run):
    config = LoaderConfig(stage=1, batch_size=2, workers=2, seed=5)
    full = [b.keys for b in ClipLoader(str(mixed_run), config)]
    first = ClipLoader(str(mixed_run), config)
    got = []
    for batch in first:
        got.append(batch.keys)
        if len(got) == 3:
            break
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = ClipLoader(str(mixed_run), config)
    resumed.load_state_dict(state)
    got += [b.keys for b in resumed]
    assert got == full
    with pytest.raises(ValueError, match="seed"):
        ClipLoader(str(mixed_run), LoaderConfig(stage=1, batch_size=2, workers=2, seed=6)).load_state_dict(state)


def test_clips_arrive_as_tensors_of_the_stored_labels(even_run):
    batch = next(iter(ClipLoader(str(even_run), LoaderConfig(stage=3, batch_size=2, workers=0))))
    t = batch["frames"]
    assert t.shape == (2, 6, 3, 294, 518) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    assert batch["masks"].shape == (2, 6, 294, 518) and batch["masks"].dtype == torch.bool
    # The stored depth is the synthetic scene, within the codec's stated relative bound.
    want = torch.from_numpy(synthetic_depth(6, 294, 518))[None].expand(2, -1, -1, -1)
    valid = batch["depth_valid"]
    assert not valid[..., :4].any() and valid[..., 4:].all()
    assert ((batch["depth"][valid] - want[valid]).abs() / want[valid]).max() <= 1e-3 + 2 ** -23
    assert torch.equal(batch["masks"][0, 0], torch.from_numpy(person_disc(294, 518)))
    assert batch["intrinsics"].shape == (2, 6, 3, 3) and torch.allclose(batch["intrinsics"][..., 0, 0],
                                                                           torch.tensor(0.8 * 518))
    assert batch["keypoints"].shape == (2, 6, 24, 2) and batch["keypoint_conf"].shape == (2, 6, 24)
    assert batch["frame_times"].dtype == torch.float64
    u8 = next(iter(ClipLoader(str(even_run), LoaderConfig(stage=3, batch_size=2, workers=0, frames_dtype="uint8"))))
    assert u8["frames"].dtype == torch.uint8 and torch.equal(u8["frames"].float() / 255, t)


def test_label_versions_main_latest_or_named(even_run, tmp_path):
    from flows.relabel import RelabelConfig, run_relabel

    run = Path(shutil.copytree(even_run, tmp_path / "run"))
    summary = run_relabel(run, RelabelConfig(stage="depth", backend="synthetic", params={"scale": 2.0}))
    version = summary["version"]

    def depth(labels) -> torch.Tensor:
        b = next(iter(ClipLoader(str(run), LoaderConfig(stage=1, batch_size=1, workers=0, labels=labels))))
        return b["depth"][b["depth_valid"]]

    main = depth({})
    for labels in ({"depth": "latest"}, {"depth": version}):
        assert torch.allclose(depth(labels), 2 * main, rtol=3e-3)
    assert torch.equal(depth({"depth": "main"}), main)
    with pytest.raises(FileNotFoundError, match="no label version"):
        depth({"depth": "nonexistent-000000000000"})


def test_brace_patterns_and_fsspec_urls_read_the_same_run(even_run):
    shards = sorted(p.name for p in (even_run / "shards").glob("*.tar"))
    prefix = shards[0].rsplit("-", 1)[0]
    pattern = f"{even_run}/shards/{prefix}-{{0000..{len(shards) - 1:04d}}}.tar"
    infos = resolve_shards(pattern)
    assert [i.clips for i in infos] == [5, 5, 5, 5] and all(i.run == str(even_run) for i in infos)
    fs = fsspec.filesystem("memory")
    for p in [even_run / "index.parquet", *(even_run / "shards").glob("*.tar")]:
        fs.pipe(f"/even/{p.relative_to(even_run)}", p.read_bytes())
    config = LoaderConfig(stage=1, batch_size=1, workers=0)
    assert sorted(keys_of(ClipLoader("memory://even", config))) == ok_keys(even_run)
    assert sorted(keys_of(ClipLoader(pattern, config))) == ok_keys(even_run)


def test_a_damaged_shard_fails_loudly(even_run, tmp_path):
    run = Path(shutil.copytree(even_run, tmp_path / "run"))
    shard = sorted((run / "shards").glob("*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardDamaged) as err:
        keys_of(ClipLoader(str(run), LoaderConfig(stage=1, batch_size=1, workers=0)))
    assert shard.name in str(err.value)


def test_the_device_half_decodes_exactly_like_the_codecs():
    from shards import depth_codec
    from shards.mask_codec import pack_masks, packed_bits, unpack_masks
    from unish_model.train.clips import depth_from_planes, masks_from_bits

    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 40.0, (3, 7, 21)).astype(np.float32)
    valid = rng.random(depth.shape) > 0.2
    entries = depth_codec.to_entries(depth_codec.encode(depth, valid), np.zeros((3, 3, 3)))
    payload, header = np.asarray(entries["code_z"]).tobytes(), entries["codec"]
    planes = depth_codec.inflate_planes(payload, depth_codec.header_shape(header))
    table = depth_codec.code_table(header["log_lo"], header["step"])
    got, got_valid = depth_from_planes(torch.from_numpy(planes[None].copy()), torch.from_numpy(table[None]))
    want, want_valid = depth_codec.decode(payload, header)
    assert torch.equal(got[0], torch.from_numpy(want)) and torch.equal(got_valid[0], torch.from_numpy(want_valid))
    masks = rng.random((2, 5, 13)) > 0.5  # a width that is not a multiple of 8
    bits, width = packed_bits(pack_masks(masks))
    assert torch.equal(masks_from_bits(torch.from_numpy(bits.copy()), width), torch.from_numpy(unpack_masks(pack_masks(masks))))


def test_compact_batches_expand_to_what_the_worker_decodes(even_run):
    """The GPU path (compact in the worker, expanded on the device) gives exactly the CPU path's tensors."""
    from shards.tario import raw_samples
    from unish_model.train.clips import compact_batch, expand
    from unish_model.train.data import STAGE_NEEDS, stage_check

    url = sorted((even_run / "shards").glob("*.tar"))[0]
    samples = [s for _, s in zip(range(2), raw_samples(url))]
    shape = stage_check(samples[0], STAGE_NEEDS[3], None)
    full = expand(compact_batch(samples, STAGE_NEEDS[3], shape, decode_all=True))
    compact = compact_batch(samples, STAGE_NEEDS[3], shape, decode_all=False)
    assert {"depth_planes", "depth_table", "mask_bits", "frames_rgb"} <= set(compact.tensors)
    assert compact["frames_rgb"].element_size() * compact["frames_rgb"].numel() * 4 == \
        full["frames"].element_size() * full["frames"].numel()  # a quarter of the bytes cross to the device
    expanded = expand(compact)
    assert set(expanded.tensors) == set(full.tensors)
    for name, value in full.tensors.items():
        assert torch.equal(expanded[name], value), name
