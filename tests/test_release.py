"""Release and takedown on one real curated run (`world`): video served over loopback HTTP and local files, a
404, a cut, labels at curation (`depth:none`) and a relabelled version in sidecars; its release; a variant of it
packed into shards that mix videos (`mixed`, for shard rewrites). Takedowns run on copies of these."""
from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from markdown_it import MarkdownIt

import tasks.depth  # noqa: F401  (registers depth:none for the in-process relabel)
from flows.curate import run_curate
from flows.params import CurateConfig
from flows.release_cmd import ReleaseRefused, build_release
from flows.relabel import RelabelConfig, get_stage, prepare_version, relabel_shard
from flows.takedown import AUDIT_FILE, JOURNAL_DIR, NotATarget, run_takedown
from http_fixture import VideoServer
from shards.blocklist import IdsFileError, digest, parse_ids, read_blocklist, read_ids_file
from shards.index import compute_funnel, read_index
from shards.reader import iter_clips, shard_urls
from shards.release import CLIPS_PARQUET, RELEASE_FILES, read_release
from shards.scan import Matcher, Needle, scan_tree
from shards.sidecar import SidecarWriter, iter_clips_with_labels, main_shards, write_labels_table
from shards.verify import raw_samples, verify_run
from shards.writer import ShardLimits, ShardWriter

REPO = Path(__file__).resolve().parents[1]
CONFIG = CurateConfig(progress=False, workers=2, stages=["depth:none"], window_seconds=1.5, window_frames=3,
                      window_fps=2, shard_max_samples=2, fetch_retries=0, fetch_retry_delays_s=[0.2],
                      host_backoff_s=0.0)
RELABEL = RelabelConfig(stage="depth", backend="none", params={"reason": "relabelled: still no depth model"})
CONTACT = "takedown@example.org"


@dataclass
class World:
    base: Path  # base/{run, rel, manifest.csv, media/, www/}
    run: Path
    rel: Path
    manifest: Path
    server: VideoServer
    ids: dict[str, str]  # video name -> source id

    def url(self, name: str) -> str:
        return self.server.url(f"/files/{name}.mp4")


def relabel(run: Path) -> str:
    """A second depth version in sidecars, through the relabel flow's own functions (no Prefect run needed)."""
    version, info = prepare_version(run, RELABEL)
    stage, lock = get_stage(RELABEL)
    for shard in main_shards(run):
        relabel_shard(run, shard, stage, lock, version, info, {})
    write_labels_table(run)
    return version


@pytest.fixture(scope="module")
def world(tmp_path_factory, media, synthetic_videos, prefect_api):
    base = tmp_path_factory.mktemp("world")
    (base / "www").mkdir()
    (base / "media").mkdir()
    shutil.copy(media / "vtest_20s.mp4", base / "www" / "alpha.mp4")
    shutil.copy(media / "carphone_pristine.mp4", base / "www" / "bravo.mp4")
    shutil.copy(synthetic_videos["cut"], base / "media" / "charlie.mp4")
    shutil.copy(media / "pose2sim_single_cam01.mp4", base / "media" / "delta.mp4")
    with VideoServer(base / "www") as server:
        manifest = base / "manifest.csv"
        manifest.write_text(
            "source,start,end,id\n"
            f"{server.url('/files/alpha.mp4')},0,6,alphavid\n"  # a downloaded section: 4 clips
            f"{server.url('/files/bravo.mp4')},,,\n"  # a whole download, default id: 2 clips
            "media/charlie.mp4,,,charlievid\n"  # a local file, relative: 7 clips and a window across the cut
            f"{base / 'media' / 'delta.mp4'},,,\n"  # a local file given by its absolute path: 1 clip
            f"{server.url('/missing.mp4')},,,gonevid\n")  # a 404
        run = base / "run"
        result = run_curate(manifest, run, CONFIG)
        assert result["ok"] == 14
        relabel(run)
        rel = base / "rel"
        build_release(run, rel, contact=CONTACT)
        videos = {v["row"]: v["source_id"] for v in pq.read_table(run / "videos.parquet").to_pylist()}
        ids = dict(zip(("alpha", "bravo", "charlie", "delta"), (videos[1], videos[2], videos[3], videos[4])))
        yield World(base, run, rel, manifest, server, ids)


def copy_world(world: World, dest: Path, run: Path | None = None, rel: Path | None = None) -> tuple[Path, Path]:
    """run and rel copied side by side (the run's releases.json finds the copy of the release)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run or world.run, dest / "run")
    shutil.copytree(rel or world.rel, dest / "rel")
    return dest / "run", dest / "rel"


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def ids_file(path: Path, *tokens: str) -> Path:
    path.write_text("# withdrawn on request\n" + "\n".join(tokens) + "\n")
    return path


# --------------------------------------------------------------------------------------- independent needles


def needles_of(run: Path, source_ids: set[str]) -> dict[str, list[bytes]]:
    """What must be gone after a takedown of these videos, found without the takedown's code: every key and
    window of them in the index, their ids and sources, a slice of every frame JPEG of theirs in the shards,
    and slices of their downloads every 16 KB."""
    index = pq.read_table(run / "index.parquet").to_pylist()
    videos = pq.read_table(run / "videos.parquet").to_pylist()
    keys = [r["key"] for r in index if r["source_id"] in source_ids and r["key"]]
    sources = sorted({v["source"] for v in videos if v["source_id"] in source_ids})
    frames = []
    for shard in sorted((run / "shards").glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.split(".")[0] in keys and m.name.endswith(".jpg"):
                    data = tf.extractfile(m).read()
                    frames.append(data[len(data) // 2: len(data) // 2 + 48])
    downloads = []
    for sid in source_ids:
        for f in (run / "_work" / "downloads" / sid).glob("*.mp4"):
            data = f.read_bytes()
            downloads += [data[i: i + 48] for i in range(4096, len(data) - 48, 16384)]
    return {"keys": [k.encode() for k in keys], "sources": [s.encode() for s in sources],
            "ids": [s.encode() for s in source_ids], "frames": frames, "downloads": downloads}


def naive_findings(folders: list[Path], needles: dict[str, list[bytes]]) -> list[str]:
    """Every needle in every file (content, name, and Parquet tables decoded), by plain substring search."""
    found = []
    id_res = [re.compile(rb"(?<![A-Za-z0-9_-])" + re.escape(i) + rb"(?![A-Za-z0-9_])") for i in needles["ids"]]
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            texts = [str(p.relative_to(folder)).encode()]
            if p.is_file():
                texts.append(p.read_bytes())
                if p.suffix == ".parquet":
                    texts.append(json.dumps(pq.read_table(p).to_pylist(), default=str).encode())
            for data in texts:
                for kind in ("keys", "sources", "frames", "downloads"):
                    found += [f"{p}: {kind}" for n in needles[kind] if n in data]
                found += [f"{p}: id" for r in id_res if r.search(data)]
    return found


# ------------------------------------------------------------------------------------------------ paths


def test_sources_are_recorded_as_given_never_as_absolute_paths(world):
    index, videos = read_index(world.run)
    by_row = {v["row"]: v for v in videos.to_pylist()}
    assert by_row[1]["source"] == world.url("alpha") and (by_row[1]["start_s"], by_row[1]["end_s"]) == (0.0, 6.0)
    assert by_row[3]["source"] == "media/charlie.mp4"
    assert by_row[4]["source"] == "media/delta.mp4"  # given absolute: recorded relative to the manifest
    source_of = {v["source_id"]: v["source"] for v in by_row.values()}
    for clip in iter_clips(shard_urls(world.run / "shards")):
        assert clip.meta["source"] == source_of[clip.meta["source_id"]]
    root = str(world.base).encode()
    for shard in (world.run / "shards").glob("*.tar"):
        assert root not in shard.read_bytes(), shard.name
    assert all(not (r["source"] or "").startswith("/") for r in index.to_pylist())


# ------------------------------------------------------------------------------------------------ release


def test_release_holds_only_what_may_be_published(world):
    names = sorted(p.name for p in world.rel.iterdir())
    assert names == sorted([*RELEASE_FILES, ".unish.lock"])
    assert (world.rel / ".unish.lock").read_bytes() == b""  # the folder's lock, released: empty
    root = str(world.base).encode()
    for p in world.rel.iterdir():
        data = p.read_bytes()
        assert root not in data and b"/tmp/" not in data, p.name  # no local path
        assert b"\xff\xd8\xff" not in data, p.name  # no JPEG (frames)
        assert b"\x93NUMPY" not in data, p.name  # no array (masks, depth, keypoints)
        assert b"ustar" not in data, p.name  # no tar (shards)
    index, _ = read_index(world.run)
    ok = {r["key"]: r for r in index.to_pylist() if r["status"] == "ok"}
    info, clips, manifest = read_release(world.rel)
    assert {c["key"] for c in clips} == set(ok)
    for c in clips:
        assert (c["source_id"], c["source"], c["start_s"], c["end_s"]) == tuple(
            ok[c["key"]][k] for k in ("source_id", "source", "start_s", "end_s"))
        assert (c["window_s"], c["window_frames"], c["window_fps"], c["fps"]) == (1.5, 3, 2.0, 2.0)
        labels = {(x["family"], x["version"]): x for x in json.loads(c["labels"])}
        assert labels[("depth", "main")]["backend"] == "none"
        assert len(labels) == 2  # the curation's and the relabel's
    csv_keys = [line.split(",")[0] for line in (world.rel / "clips.csv").read_text().splitlines()[1:]]
    assert sorted(csv_keys) == sorted(ok)
    assert json.loads((world.run / "releases.json").read_text()) == {"releases": ["../rel"]}


def test_release_manifest_rebuilds_the_same_clips_byte_for_byte(world, tmp_path):
    """Curate the release's manifest.csv as it is (copied beside the original manifest, where its local paths
    resolve, as the card says) into a new folder: the same keys and byte-identical shards."""
    _, _, manifest = read_release(world.rel)
    assert [r["source"] for r in manifest] == [world.url("alpha"), world.url("bravo"), "media/charlie.mp4",
                                               "media/delta.mp4"]
    assert [r["id"] for r in manifest] == ["alphavid", "", "charlievid", world.ids["delta"]]
    copy = world.base / "rebuild_manifest.csv"
    shutil.copy(world.rel / "manifest.csv", copy)
    rebuilt = tmp_path / "rebuilt"
    run_curate(copy, rebuilt, CONFIG)
    ok = lambda run: sorted(r["key"] for r in read_index(run)[0].to_pylist() if r["status"] == "ok")  # noqa: E731
    assert ok(rebuilt) == ok(world.run)
    assert files_of(rebuilt / "shards") == files_of(world.run / "shards")


def card_tables(markdown: str) -> tuple[dict, list[list[list[str]]], str]:
    """(YAML header, every table of the rendered HTML as rows of cells, the HTML)."""
    _, header, body = markdown.split("---\n", 2)
    rendered = MarkdownIt("commonmark").enable("table").render(body)

    class Tables(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.tables[-1][-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Tables()
    parser.feed(rendered)
    return yaml.safe_load(header), parser.tables, rendered


def test_card_renders_and_its_numbers_match_the_index(world):
    info, clips, manifest = read_release(world.rel)
    header, tables, rendered = card_tables((world.rel / "README.md").read_text())
    assert header["license"] == "cc-by-4.0" and header["size_categories"] == ["n<1K"]
    assert "depth-estimation" in header["task_categories"]
    assert header["configs"][0]["data_files"][0]["path"] == CLIPS_PARQUET
    assert "<h2>Takedown</h2>" in rendered and CONTACT in rendered and "unish takedown" in rendered
    assert "<h2>Limitations</h2>" in rendered
    by_first = {t[0][0]: {row[0]: row[1:] for row in t[1:]} for t in tables}
    funnel = compute_funnel(*read_index(world.run))
    counts = by_first["what"]
    assert int(counts["clips"][0]) == funnel.clips_written == len(clips)
    assert int(counts["videos"][0]) == len({c["source_id"] for c in clips}) == funnel.videos_ok  # all have clips
    assert int(counts["manifest rows"][0]) == len(manifest)
    assert int(counts["frames"][0]) == sum(r["n_frames"] or 0 for r in read_index(world.run)[0].to_pylist())
    stages = {k: int(v[0]) for k, v in by_first["stage"].items()}
    assert stages["videos in"] == funnel.videos_in and stages["clip windows"] == funnel.windows
    assert {k[len("rejected: "):]: v for k, v in stages.items() if k.startswith("rejected: ")} == dict(funnel.rejected)
    assert {k[len("video error: "):]: v for k, v in stages.items() if k.startswith("video error: ")} == \
        dict(funnel.videos_error)
    assert stages["clips written"] == stages["clips published"] == funnel.clips_written
    label_rows = [t for t in tables if t[0][0] == "family"][0][1:]  # family, version, backend, ..., clips
    assert sorted((r[0], r[1], r[2], int(r[-1])) for r in label_rows) == sorted(
        [("depth", "main", "none", len(clips)), ("depth", json.loads(clips[0]["labels"])[1]["version"], "none",
                                                len(clips))])
    params = {k: v[0] for k, v in by_first["parameter"].items()}
    assert params["window_seconds"] == "1.5" and params["shard_max_samples"] == "2"
    code = re.search(r"unish curate manifest\.csv --out rebuilt ([^\n]*)", (world.rel / "README.md").read_text())
    assert code and code.group(1).split() == ["--window-seconds", "1.5", "--window-frames", "3", "--window-fps", "2",
                                              "--shard-max-mb", "512", "--stages", "depth:none"]


def test_exclude_leaves_listed_videos_out(world, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    run, _ = copy_world(world, tmp_path / "copy")  # a release is recorded in its run: not in the shared one
    rel = tmp_path / "rel"
    exclude = ids_file(tmp_path / "exclude.txt", world.url("bravo"), "charlievid")
    r = CliRunner().invoke(app, ["release", str(run), "--out", str(rel), "--exclude", str(exclude), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["excluded_clips"] == 9 and json.loads(r.stdout)["contact_is_default"]
    info, clips, manifest = read_release(rel)
    assert {c["source_id"] for c in clips} == {world.ids["alpha"], world.ids["delta"]}
    assert [r["source"] for r in manifest] == [world.url("alpha"), "media/delta.mp4"]
    _, tables, _ = card_tables((rel / "README.md").read_text())
    stages = {row[0]: int(row[1]) for t in tables if t[0][0] == "stage" for row in t[1:]}
    assert stages["excluded at release"] == 9 and stages["clips published"] == len(clips) == 5
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a release")
    r = CliRunner().invoke(app, ["release", str(run), "--out", str(tmp_path / "taken")])
    assert r.exit_code == 2 and "is not a release folder" in " ".join(r.stderr.split())
    r = CliRunner().invoke(app, ["release", str(tmp_path / "no-run"), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "does not exist" in " ".join(r.stderr.split())

def test_old_runs_stay_readable_and_releasable(world, tmp_path):
    """A run whose videos table predates the span columns: the release takes the spans from the shard names and
    writes the same manifest. A run that recorded absolute paths is refused, naming the fix."""
    run, _ = copy_world(world, tmp_path / "old")
    videos = pq.read_table(run / "videos.parquet")
    pq.write_table(videos.drop_columns(["start_s", "end_s"]), run / "videos.parquet")
    build_release(run, tmp_path / "old" / "rel2", contact=CONTACT)
    assert (tmp_path / "old" / "rel2" / "manifest.csv").read_bytes() == (world.rel / "manifest.csv").read_bytes()
    index = pq.read_table(run / "index.parquet").to_pylist()
    for r in index:
        if r["source"] == "media/delta.mp4":
            r["source"] = str(world.base / "media" / "delta.mp4")
    schema = pq.read_schema(run / "index.parquet")
    pq.write_table(pa.Table.from_pylist(index, schema=schema), run / "index.parquet")
    assert len(list(iter_clips(shard_urls(run / "shards")))) == 14  # readers do not care
    with pytest.raises(ReleaseRefused, match="absolute local path") as e:
        build_release(run, tmp_path / "old" / "rel3")
    assert f"{world.ids['delta']}-000000000-000001500" in str(e.value)


# ------------------------------------------------------------------------------------------------ takedown


@pytest.fixture(scope="module")
def taken_down(world, tmp_path_factory):
    """A copy of the world with alphavid (by id) and bravo (by URL) withdrawn, plus an id no folder holds."""
    d = tmp_path_factory.mktemp("taken")
    run, rel = copy_world(world, d)
    before_run, before_rel = files_of(run), files_of(rel)
    gone = {world.ids["alpha"], world.ids["bravo"]}
    needles = needles_of(run, gone)
    assert all(needles[k] for k in needles)
    assert len(naive_findings([run, rel], needles)) > 50  # the needles are there before
    report = run_takedown([run], ["alphavid", world.url("bravo"), "zzunknown1"])
    return run, rel, report, needles, gone, before_run, before_rel


def test_takedown_leaves_no_trace_and_every_other_clip_as_it_was(world, taken_down):
    run, rel, report, needles, gone, before_run, before_rel = taken_down
    assert naive_findings([run, rel], needles) == []
    assert report["scan"]["found"] == 0 and report["not_found"] == ["zzunknown1"]
    assert {t["kind"] for t in report["targets"]} == {"run", "release"}  # the run's release, found by the run
    after = files_of(run)
    theirs = lambda name: any(Path(name).name.startswith(f"{sid}-") for sid in gone)  # noqa: E731
    kept = [n for n in before_run if n.startswith(("shards/", "labels/")) and not theirs(n)]
    assert len(kept) > 10 and all(after[n] == before_run[n] for n in kept)  # byte-identical: shards and sidecars
    assert sorted(n for n in after if n.startswith(("shards/", "labels/"))) == sorted(kept)
    index, videos = read_index(run)
    original = pq.read_table(world.run / "index.parquet").to_pylist()
    assert index.to_pylist() == [r for r in original if r["source_id"] not in gone]
    v = {r["row"]: r for r in videos.to_pylist()}
    assert (v[1]["status"], v[1]["reason"], v[1]["source"], v[1]["source_id"]) == ("rejected", "withdrawn", "", "")
    assert v[2]["reason"] == "withdrawn" and v[3]["source_id"] == "charlievid"
    assert verify_run(run).ok
    assert not any((run / "_work" / sub / sid).exists() for sub in ("downloads", "videos") for sid in gone)
    labels = pq.read_table(run / "labels.parquet").to_pylist()
    assert labels and not [r for r in labels if r["key"].rsplit("-", 2)[0] in gone]
    version = [r["version"] for r in labels][0]
    kept = {c.key for c in iter_clips_with_labels(run, {"depth": version})}
    assert kept == {r["key"] for r in index.to_pylist() if r["status"] == "ok"}
    # The release lost the same clips, and its card says so.
    info, clips, manifest = read_release(rel)
    assert {c["source_id"] for c in clips} == {world.ids["charlie"], world.ids["delta"]}
    _, tables, _ = card_tables((rel / "README.md").read_text())
    withdrawn = {row[0]: int(row[1]) for t in tables if t[0][0] == "since release" for row in t[1:]}
    assert withdrawn == {"videos withdrawn": 2, "clips withdrawn": 6}
    # Blocklist (digests only) and one audit entry in each folder, naming nothing.
    blocklist = read_blocklist(run)
    assert blocklist.blocks("alphavid") and blocklist.blocks(world.url("bravo"))
    assert blocklist.blocks(world.ids["bravo"])
    assert blocklist.blocks("zzunknown1") and not blocklist.blocks("charlievid")
    entry = json.loads((run / AUDIT_FILE).read_text())
    assert entry["ids_sha256"] == sorted(digest(x) for x in ["alphavid", world.url("bravo"), "zzunknown1"])
    assert entry["removed"]["videos"] == 2 and entry["removed"]["shards_deleted"] == 3
    for s in entry["shards"]:
        assert s["before_sha256"] == hashlib.sha256(before_run[s["path"] or _by_sha(before_run, s)]).hexdigest()
    assert json.loads((rel / AUDIT_FILE).read_text())["removed"] == {"clips": 6, "manifest_rows": 2}
    assert not (run / JOURNAL_DIR).exists() and not (rel / JOURNAL_DIR).exists()


def _by_sha(files: dict[str, bytes], entry: dict) -> str:
    return next(n for n in files if digest(n) == entry["path_sha256"])


def test_a_second_takedown_changes_nothing(taken_down):
    run, rel, *_ = taken_down
    stamp = lambda d: {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in d.rglob("*")  # noqa: E731
                       if p.is_file() and p.name != ".unish.lock"}
    before = stamp(run) | stamp(rel)
    report = run_takedown([run, rel], ["alphavid"])
    assert not any(t["changed"] for t in report["targets"]) and report["already_withdrawn"] == ["alphavid"]
    assert stamp(run) | stamp(rel) == before


def test_a_later_curation_does_not_bring_the_videos_back(world, taken_down):
    run, rel, report, needles, gone, *_ = taken_down
    index_before, videos_before = read_index(run)
    hits = dict(world.server.hits)
    result = run_curate(world.manifest, run, CONFIG)
    assert result["withdrawn"] == 2 and result["tables_written"] is False  # the takedown left what curate writes
    assert world.server.hits.get("/files/alpha.mp4") == hits.get("/files/alpha.mp4")  # not fetched again
    assert world.server.hits.get("/files/bravo.mp4") == hits.get("/files/bravo.mp4")
    index, videos = read_index(run)
    assert index.equals(index_before) and videos.equals(videos_before)
    assert naive_findings([run, rel], needles) == []


def test_several_runs_and_releases_at_once_and_the_lock(world, tmp_path):
    """One takedown over two copies of the run (each with its release): every folder loses the video; a folder
    another process is writing is refused before anything changes."""
    a_run, a_rel = copy_world(world, tmp_path / "a")
    b_run, b_rel = copy_world(world, tmp_path / "b")
    needles = needles_of(a_run, {world.ids["delta"]})
    from shards.runfolder import RunLocked, run_lock

    before = files_of(a_run)
    with run_lock(b_rel, "someone else"):
        with pytest.raises(RunLocked, match="someone else"):
            run_takedown([a_run, b_run], ["media/delta.mp4"])  # by its recorded local path
    assert files_of(a_run) == before
    report = run_takedown([a_run, b_run], ["media/delta.mp4"])
    assert sorted((t["kind"], t["changed"]) for t in report["targets"]) == [("release", True)] * 2 + [("run", True)] * 2
    assert naive_findings([a_run, a_rel, b_run, b_rel], needles) == []
    assert all(verify_run(r).ok for r in (a_run, b_run))


def test_relabel_skips_withdrawn_clips(world, tmp_path):
    run, _ = copy_world(world, tmp_path)
    from shards.blocklist import Blocklist, write_blocklist

    write_blocklist(run, Blocklist().with_tokens(["charlievid"]))  # blocklisted, not yet removed
    other = RELABEL.model_copy(update={"params": {"reason": "another version"}})
    version, info = prepare_version(run, other)
    stage, lock = get_stage(other)
    rows = []
    for shard in main_shards(run):
        relabel_shard(run, shard, stage, lock, version, info, {})
        rows += json.loads((run / "labels" / "depth" / version / (Path(shard).stem + ".rows.json")).read_text())
    labelled = {r["key"].rsplit("-", 2)[0] for r in rows}
    assert "charlievid" not in labelled and labelled == set(world.ids.values()) - {"charlievid"}


def test_bad_input_is_named_and_unknown_ids_are_not_fatal(world, tmp_path):
    with pytest.raises(IdsFileError, match=r"line 3: 'two ids' is not a video ID"):
        read_ids_file(ids_file(tmp_path / "a.txt", "alphavid", "two ids"))
    with pytest.raises(IdsFileError, match="absolute path"):
        parse_ids("/home/me/video.mp4\n")
    with pytest.raises(IdsFileError, match="lists no video IDs"):
        parse_ids("# nothing\n\n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(IdsFileError, match="not UTF-8"):
        read_ids_file(tmp_path / "bin.txt")
    with pytest.raises(IdsFileError, match="does not exist"):
        read_ids_file(tmp_path / "nope.txt")
    assert parse_ids("https://www.youtube.com/watch?v=dQw4w9WgXcQ#t=5  # a comment\nabc_-1\n") == [
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ#t=5", "abc_-1"]
    with pytest.raises(NotATarget, match="does not exist"):
        run_takedown([tmp_path / "missing-run"], ["alphavid"])
    with pytest.raises(NotATarget, match="neither a curated run"):
        run_takedown([tmp_path], ["alphavid"])
    run, rel = copy_world(world, tmp_path / "copy")
    before = files_of(run)
    report = run_takedown([run], ["nosuchvideo"], dry_run=True)
    assert report["not_found"] == ["nosuchvideo"] and files_of(run) == before
    from typer.testing import CliRunner

    from flows.cli import app

    args = ["takedown", str(run), "--ids", str(tmp_path / "a.txt")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "line 3" in " ".join(r.stderr.split()) and "Traceback" not in r.output
    r = CliRunner().invoke(app, args[:-1] + [str(ids_file(tmp_path / "b.txt", "nosuchvideo")), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["not_found"] == ["nosuchvideo"] and read_blocklist(run).blocks("nosuchvideo")
    assert files_of(run)["index.parquet"] == before["index.parquet"]


# ------------------------------------------------------------------------------------ the scan itself


def test_scan_finds_needles_across_chunks_names_and_compressed_tables(tmp_path):
    rng = np.random.default_rng(0)
    data = bytearray(rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    planted = {}
    for i, at in enumerate((0, 4090, 8192 - 30, 150_001, len(data) - 64)):
        piece = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
        data[at: at + 64] = piece
        planted[at] = Needle("bytes", piece, f"piece {i}")
    texts = ((200_000, b'{"k":"vidabc-000000001-000002000"'), (210_000, b"/vidabc/ xvidabc2 z"),
             (220_000, b" vidabc-2-000000000-000002000 "))  # the last: a key of the video `vidabc-2`
    for at, text in texts:
        data[at: at + len(text)] = text
    (tmp_path / "blob.bin").write_bytes(bytes(data))
    needles = list(planted.values()) + [Needle("id", b"vidabc", "vidabc"), Needle("id", b"zz", "zz")]
    needles += [Needle("bytes", bytes(range(64)), f"absent {i}") for i in range(40)]  # many: the hashed path
    pq.write_table(pa.table({"source_id": ["vidabc"] * 1000}), tmp_path / "t.parquet", compression="zstd")
    (tmp_path / "zz").mkdir()
    (tmp_path / "vidabc-0-6000-0001.rows.json").write_text("[]")  # a sidecar's rows, named after the id
    from shards.scan import CHUNK_BYTES, scan_file

    report = scan_tree(tmp_path, needles)
    blob = [f for f in report.findings if f.path == "blob.bin"]
    assert sorted((f.offset, f.needle.label) for f in blob if f.needle.kind == "bytes") == sorted(
        (at, n.label) for at, n in planted.items())
    assert sorted(f.offset for f in blob if f.needle.kind == "id") == [200_006, 210_001]  # not inside xvidabc2
    assert {f.where for f in report.findings if f.path == "t.parquet"} >= {"decoded"}
    assert [f.path for f in report.findings if f.needle.label == "zz"] == ["zz"]  # a short id: a whole name only
    assert [f.where for f in report.findings if f.path.startswith("vidabc-")] == ["name"]
    small = scan_file(tmp_path / "blob.bin", Matcher(needles), "blob.bin", chunk_bytes=4096)  # many chunk seams
    assert sorted((f.offset, f.needle.label) for f in small) == sorted((f.offset, f.needle.label) for f in blob)
    assert CHUNK_BYTES > 4096


# ------------------------------------------------------------------------------- shards that mix videos, crashes


@pytest.fixture(scope="module")
def mixed(world, tmp_path_factory):
    """The world's run repacked into shards of 3 clips that mix videos (`mixed-NNNN.tar`, in index order), its
    sidecars regrouped the same way: a takedown must rewrite shards, not only delete them."""
    d = tmp_path_factory.mktemp("mixed")
    run, rel = copy_world(world, d)
    index = pq.read_table(run / "index.parquet")
    rows = index.to_pylist()
    members = {}
    for shard in sorted((run / "shards").glob("*.tar")):
        members.update({m["__key__"]: m for m in raw_samples(str(shard))})
        shard.unlink()
    writer = ShardWriter(run / "shards", "mixed", ShardLimits(max_samples=3))
    with writer:
        for r in rows:
            if r["status"] == "ok":
                r["shard"] = writer.write(members[r["key"]])
    pq.write_table(index.from_pylist(rows, schema=index.schema), run / "index.parquet")
    shard_of = {r["key"]: r["shard"] for r in rows if r["status"] == "ok"}
    for vdir in sorted((run / "labels").glob("*/*")):
        side, status = {}, {}
        for tar in sorted(vdir.glob("*.tar")):
            side.update({m["__key__"]: m for m in raw_samples(str(tar))})
            tar.unlink()
        for rows_file in sorted(vdir.glob("*.rows.json")):
            status.update({x["key"]: x for x in json.loads(rows_file.read_text())})
            rows_file.unlink()
        for name in sorted(set(shard_of.values())):
            keys = [k for k, s in shard_of.items() if s == name]
            sw = SidecarWriter(vdir / name)
            for k in keys:
                if k in side:
                    sw.write(side[k])
            sw.commit()
            (vdir / (Path(name).stem + ".rows.json")).write_text(
                json.dumps([{**status[k], "shard": name} for k in keys], sort_keys=True, indent=1))
    write_labels_table(run)
    assert verify_run(run).ok and len(list((run / "shards").glob("*.tar"))) == 5
    return d


def test_a_takedown_rewrites_mixed_shards_as_a_writer_would_and_verify_passes(mixed, world, tmp_path):
    run, rel = copy_world(world, tmp_path, mixed / "run", mixed / "rel")
    before = {m["__key__"]: m for s in sorted((run / "shards").glob("*.tar")) for m in raw_samples(str(s))}
    order = {s.name: [m["__key__"] for m in raw_samples(str(s))] for s in sorted((run / "shards").glob("*.tar"))}
    run_takedown([run], ["alphavid"])
    from typer.testing import CliRunner

    from flows.cli import app

    assert verify_run(run).ok and CliRunner().invoke(app, ["verify", str(run)]).exit_code == 0  # `unish verify`
    rewritten = 0
    for name, keys in order.items():
        kept = [k for k in keys if not k.startswith("alphavid-")]
        path = run / "shards" / name
        if not kept:
            assert not path.exists()
            continue
        fresh = tmp_path / "fresh" / name
        with ShardWriter(fresh, "mixed") as w:  # what a writer gives for the remaining samples
            for k in kept:
                w.write(before[k])
        assert path.read_bytes() == (fresh / "mixed-0000.tar").read_bytes(), name
        rewritten += kept != keys
        assert [m["__key__"] for m in raw_samples(str(path))] == kept
    assert rewritten == 1


def snapshot_state(root: Path) -> dict[str, object]:
    """Every file's bytes under root; audit entries without their time."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(root))
        if p.name == AUDIT_FILE:
            out[rel] = [{k: v for k, v in json.loads(line).items() if k != "time"}
                        for line in p.read_text().splitlines()]
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.mark.parametrize("point", ["shard-rewrite-partial", "shard-rewrite", "sidecar", "index", "work",
                                   "release:README.md", "audit"])
def test_sigkill_at_any_point_then_rerun_equals_an_uninterrupted_takedown(mixed, world, tmp_path, point):
    clean_run, clean_rel = copy_world(world, tmp_path / "clean", mixed / "run", mixed / "rel")
    run_takedown([clean_run], ["alphavid"])
    killed_run, killed_rel = copy_world(world, tmp_path / "killed", mixed / "run", mixed / "rel")
    ids = ids_file(tmp_path / "ids.txt", "alphavid")
    wait = tmp_path / "go"
    env = {**os.environ, "UNISH_FAULT_TAKEDOWN_AT": point, "UNISH_FAULT_TAKEDOWN_WAIT_FILE": str(wait),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.takedown", str(killed_run), "--ids", str(ids)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reached = Path(str(wait) + ".reached")
    deadline = time.time() + 120
    while time.time() < deadline and not reached.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    assert reached.read_text() == point
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed_run / JOURNAL_DIR / "pending.json").exists()  # the plan survives the crash
    left = {"shard-rewrite-partial": "shards/mixed-*.tar.tmp", "shard-rewrite": "shards/mixed-*.tar.tmp",
            "sidecar": "labels/depth/*/mixed-*.tar.tmp", "index": "index.*.parquet.tmp"}.get(point)
    if left:  # killed mid-write: a temporary file is there, the final one not yet replaced
        assert [p.stat().st_size > 0 for p in killed_run.glob(left)] == [True], left
    report = run_takedown([killed_run], ["alphavid"])
    assert report["scan"]["found"] == 0
    assert snapshot_state(tmp_path / "killed") == snapshot_state(tmp_path / "clean")
