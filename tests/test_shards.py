import numpy as np
import pytest

from shards.reader import iter_clips, shard_urls
from shards.sample import ClipSample, decode_sample, encode_sample
from shards.schema import clip_key
from shards.writer import ShardLimits, ShardWriter


def make_sample(i: int, t: int = 4) -> ClipSample:
    rng = np.random.default_rng(i)
    # Smooth gradients (what JPEG is for) with a per-sample colour.
    yy, xx = np.mgrid[0:28, 0:42]
    base = np.stack([xx * 5, yy * 8, np.full_like(xx, 40 * (i % 5))], -1)
    frames = np.stack([np.clip(base + k * 3, 0, 255) for k in range(t)]).astype(np.uint8)
    return ClipSample(
        key=clip_key("vid", i * 5.0, i * 5.0 + 5.0), frames=frames, meta={"start_s": i * 5.0},
        labels={"people": {"box": rng.random((t, 4)).astype(np.float32), "stats": {"n": i}}},
    )


def test_clip_key_format():
    assert clip_key("abc_DEF-1", 1.5, 6.5) == "abc_DEF-1-000001500-000006500"
    with pytest.raises(ValueError):
        clip_key("a.b", 0, 5)


def test_sample_roundtrip_exact_labels_and_close_frames():
    s = make_sample(3)
    back = decode_sample(encode_sample(s))
    assert back.key == s.key and back.meta == s.meta
    np.testing.assert_array_equal(back.labels["people"]["box"], s.labels["people"]["box"])
    assert back.labels["people"]["stats"] == {"n": 3}
    assert back.frames.shape == s.frames.shape
    assert np.abs(back.frames.astype(int) - s.frames.astype(int)).mean() < 3  # JPEG on smooth content


def test_writer_bounds_shards_and_reader_reads_everything(tmp_path):
    samples = [make_sample(i) for i in range(7)]
    with ShardWriter(tmp_path, "vid", ShardLimits(max_bytes=10**9, max_samples=3)) as w:
        for s in samples:
            w.write(encode_sample(s))
    assert w.shards == ["vid-0000.tar", "vid-0001.tar", "vid-0002.tar"]
    urls = shard_urls(tmp_path)
    keys = [c.key for c in iter_clips(urls)]
    assert keys == [s.key for s in samples]


def test_partial_shard_is_never_visible(tmp_path):
    w = ShardWriter(tmp_path, "vid")
    w.write(encode_sample(make_sample(0)))
    assert shard_urls(tmp_path) == []  # still a temp file
    assert [p.name.startswith("vid-0000.") and p.name.endswith(".tar.tmp") for p in tmp_path.iterdir()] == [True]
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_shard_bytes_are_deterministic(tmp_path):
    for sub in ("a", "b"):
        with ShardWriter(tmp_path / sub, "vid") as w:
            for i in range(2):
                w.write(encode_sample(make_sample(i)))
    assert (tmp_path / "a" / "vid-0000.tar").read_bytes() == (tmp_path / "b" / "vid-0000.tar").read_bytes()


def test_prefix_with_dot_rejected(tmp_path):
    with pytest.raises(ValueError):
        ShardWriter(tmp_path, "a.b")
