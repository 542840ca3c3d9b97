"""Runs and releases on object storage: a real S3-compatible server (moto's server mode on loopback) and fsspec's
in-memory filesystem.

One manifest is curated by `unish curate` to `s3://BUCKET/run` and to a local folder; the store's shards must be
the local run's bytes, the index must name exactly the shards in the store, and the clips must come back through
the training loader, `unish inspect` and `unish verify`. Then a release to the store and a takedown there."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import train_data  # noqa: F401  (registers the *:synthetic stages, which write every family training reads)
from flows import exitcodes
from flows.cli import app
from shards import store
from shards.index import read_index
from shards.verify import verify_run

BUCKET = "unish-test"
STAGES = "masks:synthetic,depth:synthetic,keypoints:synthetic"
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a free port), one bucket, and the standard AWS settings pointing there."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise, into every output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true",
           store.CACHE_ENV: str(tmp_path_factory.mktemp("replicas"))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def objects(prefix: str) -> dict[str, bytes]:
    """Every object under s3://BUCKET/prefix, by its path below the prefix."""
    return {rel: store.read_bytes(f"s3://{BUCKET}/{prefix}/{rel}") for rel in store.remote_files(f"s3://{BUCKET}/{prefix}")}


@pytest.fixture(scope="module")
def curated(s3, tmp_path_factory, media, synthetic_videos, prefect_api):
    """The same manifest curated to the store and to a local folder (3 + 3 clips, shards of 2 clips)."""
    d = tmp_path_factory.mktemp("store_world")
    shutil.copy(media / "carphone_pristine.mp4", d / "carphone.mp4")
    shutil.copy(synthetic_videos["clean"], d / "clean.mp4")
    (d / "m.csv").write_text("source,start,end,id\ncarphone.mp4,0,3,carphone\nclean.mp4,0,3,clean\n")
    (d / "cfg.toml").write_text("[curate]\nshard_max_samples = 2\n")
    args = ["curate", d / "m.csv", "--config", d / "cfg.toml", "--stages", STAGES, "--window-seconds", 1,
            "--window-frames", 6, "--no-progress"]
    url = f"s3://{BUCKET}/run"
    remote = invoke(*args, "--out", url)
    assert remote.exit_code == 0, remote.output
    local = invoke(*args, "--out", d / "local")
    assert local.exit_code == 0, local.output
    return {"dir": d, "url": url, "local": d / "local", "args": args, "output": remote.output}


def test_curate_to_s3_publishes_the_local_runs_bytes_and_an_index_naming_exactly_its_shards(curated):
    stored = objects("run")
    index, videos = read_index(curated["url"])
    ok = [r for r in index.to_pylist() if r["status"] == "ok"]
    assert len(ok) == 6 and {v["status"] for v in videos.to_pylist()} == {"ok"}
    named = {r["shard"] for r in ok}
    in_store = {k.split("/", 1)[1] for k in stored if k.startswith("shards/")}
    assert named == in_store and len(in_store) == 4
    local = curated["local"]
    for name in in_store:  # byte-identical to the same curation written to a local folder
        assert stored[f"shards/{name}"] == (local / "shards" / name).read_bytes(), name
    for table in ("index.parquet", "videos.parquet"):
        assert pq.read_table(local / table).equals(pq.read_table(fsspec.open(f"{curated['url']}/{table}").open()))
    assert not [k for k in stored if k.startswith(("_work/", "logs/")) or ".tmp" in k or k.endswith(".lock")]
    assert "published" in curated["output"] and curated["url"] in curated["output"]
    report = verify_run(curated["url"])
    assert report.ok and report.clips_ok == 6, report.problems
    assert invoke("verify", curated["url"]).exit_code == 0


def test_the_training_loader_reads_the_clips_back_from_s3(curated):
    from unish_model.train.data import ClipLoader, LoaderConfig
    from unish_model.train.sources import resolve_shards

    shards = resolve_shards(curated["url"])
    assert shards and all(s.url.startswith(f"s3://{BUCKET}/run/shards/") and s.expected for s in shards)
    loader = ClipLoader(curated["url"], LoaderConfig(stage=1, batch_size=1, workers=0, shuffle_buffer=1))
    keys = [k for batch in loader for k in batch.keys]
    index, _ = read_index(curated["local"])
    assert sorted(keys) == sorted(r["key"] for r in index.to_pylist() if r["status"] == "ok")
    pattern = ClipLoader(f"s3://{BUCKET}/run/shards/*.tar", LoaderConfig(stage=1, batch_size=1, workers=0))
    assert sorted(k for batch in pattern for k in batch.keys) == sorted(keys)  # a glob of URLs, checked by the index


def test_inspect_reads_the_run_in_the_store(curated):
    r = invoke("inspect", curated["url"], "--json", "--samples", 2)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["funnel"]["clips_written"] == 6 and len(doc["read_back"]) == 2
    assert doc["label_families"]["depth"] == 6
    key = doc["read_back"][0]["key"]
    one = invoke("inspect", curated["url"], "--json", "--key", key)
    assert json.loads(one.stdout.strip().splitlines()[-1])["clip"]["frames"][0] == 6


def test_a_rerun_with_the_replica_lost_or_a_publish_cut_short_ends_with_the_same_objects(curated, monkeypatch):
    before = objects("run")
    shutil.rmtree(store.replica_path(curated["url"]))  # the local work folder is gone: everything is redone
    again = invoke(*curated["args"], "--out", curated["url"])
    assert again.exit_code == 0, again.output
    assert "0 objects uploaded" in again.output and objects("run") == before
    # A publish that dies before the index: the replica stays marked, the next run publishes the rest.
    real = store.publish_file
    for name in ("index.parquet", "videos.parquet"):
        store.filesystem(curated["url"])[0].rm_file(f"{BUCKET}/run/{name}")

    def dies_at_the_index(local: Path, url: str, digest: str | None = None) -> None:
        if url.endswith("videos.parquet"):
            raise OSError("connection reset (injected)")
        real(local, url, digest)

    monkeypatch.setattr(store, "publish_file", dies_at_the_index)
    cut = invoke(*curated["args"], "--out", curated["url"])
    assert cut.exit_code != 0 and "index.parquet" not in objects("run")  # never an index before its tables
    assert (store.replica_path(curated["url"]) / store.PUSH_PENDING).exists()
    monkeypatch.setattr(store, "publish_file", real)
    assert invoke(*curated["args"], "--out", curated["url"]).exit_code == 0
    assert objects("run") == before


def test_release_and_takedown_in_the_store(curated, tmp_path):
    """On a copy of the run made in the store (no replica of it here: release and takedown pull it whole)."""
    fs, _ = store.filesystem(curated["url"])
    fs.copy(f"{BUCKET}/run", f"{BUCKET}/tk/run", recursive=True)
    url, rel = f"s3://{BUCKET}/tk/run", f"s3://{BUCKET}/tk/rel"
    r = invoke("release", url, "--out", rel, "--contact", "takedown@example.org", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["release"] == rel
    released = objects("tk/rel")
    assert {"clips.parquet", "manifest.csv", "release.json", "README.md"} <= set(released)
    assert json.loads(store.read_bytes(f"{url}/releases.json"))["releases"] == ["../rel"]
    ids = tmp_path / "ids.txt"
    ids.write_text("carphone\n")
    t = invoke("takedown", url, "--ids", ids)
    assert t.exit_code == 0, t.output
    run_objects, rel_objects = objects("tk/run"), objects("tk/rel")
    for name, data in {**run_objects, **{f"rel/{k}": v for k, v in rel_objects.items()}}.items():
        assert b"carphone" not in data, name  # no key, id or source of the video anywhere in the store
    index, videos = read_index(url)
    assert {r["source_id"] for r in index.to_pylist() if r["status"] == "ok"} == {"clean"}
    assert [v["reason"] for v in videos.to_pylist() if v["status"] != "ok"] == ["withdrawn"]
    assert not [k for k in run_objects if k.startswith("shards/carphone")]
    assert verify_run(url).ok
    clips = pq.read_table(fsspec.open(f"{rel}/clips.parquet").open()).to_pylist()
    assert clips and {c["source_id"] for c in clips} == {"clean"}


def test_store_errors_are_one_line_naming_the_url(s3, curated, tmp_path):
    missing = f"s3://no-such-bucket-{os.getpid()}/run"
    r = invoke("inspect", missing)
    assert r.exit_code == exitcodes.FAILED and missing in r.output and len(r.output.strip().splitlines()) == 1
    c = invoke(*curated["args"], "--out", missing)
    assert c.exit_code == exitcodes.FAILED and "bucket does not exist" in c.output and missing in c.output
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", "inspect", curated["url"]],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == exitcodes.FAILED, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and curated["url"] in lines[0] and "credentials" in lines[0]


# ------------------------------------------------------------------------------ atomic publishing, per store


def test_memory_store_publish_is_whole_or_absent(tmp_path, monkeypatch):
    url = "memory://atomic/run/shards/a.tar"
    old, new = tmp_path / "old.tar", tmp_path / "new.tar"
    old.write_bytes(b"old" * 1000)
    new.write_bytes(b"new" * 100_000)
    store.publish_file(old, url)
    fs = fsspec.filesystem("memory")
    real_put = type(fs).put_file

    def half_then_fail(self, lpath, rpath, *a, **k):  # the upload dies halfway through the bytes
        with self.open(rpath, "wb") as f:
            f.write(Path(lpath).read_bytes()[:1000])
        raise ConnectionError("upload cut (injected)")

    monkeypatch.setattr(type(fs), "put_file", half_then_fail)
    with pytest.raises(ConnectionError):
        store.publish_file(new, url)
    assert store.read_bytes(url) == old.read_bytes()  # the old object, whole
    assert fs.ls("/atomic/run/shards", detail=False) == ["/atomic/run/shards/a.tar"]  # no partial beside it
    monkeypatch.setattr(type(fs), "put_file", real_put)
    store.publish_file(new, url)
    assert store.read_bytes(url) == new.read_bytes()
    assert store.same_content(new, url) and not store.same_content(old, url)


def test_s3_multipart_publish_cut_midway_leaves_the_old_object(s3, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/atomic/big.tar"
    old, new = tmp_path / "old.tar", tmp_path / "new.tar"
    old.write_bytes(b"o" * 1000)
    new.write_bytes(os.urandom(11 * 2**20))  # three parts of 5 MiB (S3's smallest part)
    store.publish_file(old, url)
    monkeypatch.setattr(store, "PART_BYTES", 5 * 2**20)
    fs, _ = store.filesystem(url)
    real_call = fs._call_s3
    calls = []

    async def fails_at_part_two(method, *a, **k):
        calls.append(method)
        if method == "upload_part" and k.get("PartNumber") == 2:
            raise ConnectionError("upload cut (injected)")
        return await real_call(method, *a, **k)

    monkeypatch.setattr(fs, "_call_s3", fails_at_part_two)
    with pytest.raises((ConnectionError, store.StoreError)):
        store.publish_file(new, url)
    assert "create_multipart_upload" in calls and "complete_multipart_upload" not in calls
    monkeypatch.setattr(fs, "_call_s3", real_call)
    assert store.read_bytes(url) == old.read_bytes()
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # aborted, not left to linger
    store.publish_file(new, url)
    assert store.read_bytes(url) == new.read_bytes() and store.same_content(new, url)
