"""shards.tario reads shards with WebDataset's tar iterators (imported only when a shard is read): member names as
written, grouping by key, metadata and folders skipped, damaged and duplicated members refused."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from shards.tario import raw_samples

REPO = Path(__file__).resolve().parents[1]


def webdataset_samples(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        files = ({**m, "__url__": str(path)} for m in tar_file_iterator(f))
        return [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
                for s in group_by_keys(files, lcase=False)]


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "s-0000.tar"
    with wds.TarWriter(str(path), encoder=False) as w:  # as shards/writer.py writes them
        for i in range(3):
            w.write({"__key__": f"vid-{i:09d}-000005000", "meta.json": b'{"i": %d}' % i, "frames.000.jpg": b"jpg",
                     "People.Box.NPY": bytes([i]) * 10})
    with tarfile.open(path, "a") as tar:  # what a reader must skip or group: metadata, folders, no extension
        add(tar, "__index__", b"meta")
        add(tar, "folder", kind=tarfile.DIRTYPE)
        add(tar, "noext", b"x")
        add(tar, "sub/clip-1.a.b", b"1")
        add(tar, "sub/clip-1.c", b"2")
    return path


def test_samples_keep_member_names_and_skip_what_is_not_a_member(shard):
    ours = list(raw_samples(shard))
    assert ours == webdataset_samples(shard)  # WebDataset's samples, less its bookkeeping keys
    assert [s["__key__"] for s in ours] == [f"vid-{i:09d}-000005000" for i in range(3)] + ["sub/clip-1"]
    assert "People.Box.NPY" in ours[0] and ours[-1]["a.b"] == b"1"  # names as written, entry after the first dot


def test_a_damaged_shard_fails_as_webdataset_does(shard, tmp_path):
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:1500])  # inside the second member's data
    with pytest.raises(tarfile.ReadError):
        webdataset_samples(cut)
    with pytest.raises(tarfile.ReadError):
        list(raw_samples(cut))
    dup = tmp_path / "dup.tar"
    with tarfile.open(dup, "w") as tar:
        add(tar, "k.a", b"1")
        add(tar, "k.a", b"2")
    with pytest.raises(ValueError, match="duplicate"):
        list(raw_samples(dup))


def test_importing_the_readers_imports_no_torch():
    code = "import sys, shards.reader, shards.verify; print('torch' in sys.modules, 'webdataset' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"]
