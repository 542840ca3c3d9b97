"""`unish relabel`: label versions as sidecar shards over a real curated output (vtest_20s + pose2sim, curated
with `keypoints:mediapipe`), idempotent, resumable after SIGKILL, old versions readable; and the deployments."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import tasks.keypoints  # noqa: F401  (registers keypoints:* for the in-process curation)
from flows.curate import run_curate
from flows.params import CurateConfig
from flows.relabel import RelabelConfig, run_relabel
from shards.reader import iter_clips, shard_urls
from shards.runfolder import LOCK_FILE
from shards.sample import decode_npy
from shards.sidecar import (
    LABELS_FILE, MAIN_VERSION, iter_clips_with_labels, list_label_versions, read_labels_table, sidecar_path,
)
from unish_model.body import write_synthetic_body_model
from unish_model.convert.camerahmr import smpl_head_key, vit_key
from unish_model.human import HumanBranch, HumanBranchConfig

REPO = Path(__file__).resolve().parents[1]
MEDIAPIPE = RelabelConfig(stage="keypoints", backend="mediapipe", workers=2)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, media, prefect_api) -> Path:
    """14 clips of 3 frames in 6 shards of at most 3 clips: 13 of vtest (pedestrians) and 1 of pose2sim (one
    large person); keypoints by MediaPipe at curation time (the `main` version)."""
    d = tmp_path_factory.mktemp("curate")
    for name in ("vtest_20s.mp4", "pose2sim_single_cam01.mp4"):
        shutil.copy(media / name, d / name)
    manifest = d / "m.csv"
    manifest.write_text("source,start,end,id\nvtest_20s.mp4,,,vtest\npose2sim_single_cam01.mp4,,,pose\n")
    out = d / "out"
    config = CurateConfig(stages=["keypoints:mediapipe"], window_seconds=1.5, window_fps=2, window_frames=3,
                          shard_max_samples=3, progress=False, workers=2)
    result = run_curate(manifest, out, config)
    assert result["ok"] == 14
    return out


def relabel_copy(curated: Path, dest: Path) -> Path:
    """Only what a relabel may use: the shards and the index (no videos, no curation work folder)."""
    dest.mkdir(parents=True)
    shutil.copytree(curated / "shards", dest / "shards")
    for name in ("index.parquet", "videos.parquet"):
        shutil.copy(curated / name, dest / name)
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file with its time and bytes, except the run lock (each writer leaves its record there)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def relabelled(curated, tmp_path_factory) -> tuple[Path, dict]:
    out = relabel_copy(curated, tmp_path_factory.mktemp("relabel") / "out")
    return out, run_relabel(out, MEDIAPIPE)


def test_relabel_writes_a_version_of_sidecars_and_the_table(relabelled):
    out, summary = relabelled
    version = summary["version"]
    assert version.startswith("mediapipe-") and summary["shards"] == 6 and summary["shards_written"] == 6
    assert summary["ok"] == 14 and summary["error"] == 0 and summary["table_written"]
    vdir = out / "labels" / "keypoints" / version
    assert sorted(p.name for p in vdir.glob("*.tar")) == sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert not list(vdir.glob("*.tmp"))
    info = json.loads((vdir / "version.json").read_text())
    assert info["stage"] == "keypoints:mediapipe" and len(info["weights_sha256"]) == 64
    rows = read_labels_table(out).to_pylist()
    assert len(rows) == 14 and {(r["family"], r["version"], r["status"]) for r in rows} == {("keypoints", version, "ok")}
    assert json.loads(rows[0]["provenance"])["label_version"] == version
    # A sidecar sample holds only the family's members and the provenance.
    import tarfile

    with tarfile.open(vdir / sorted(p.name for p in vdir.glob("*.tar"))[0]) as tar:
        names = {m.name.split(".", 1)[1] for m in tar.getmembers()}
    assert names == {"keypoints.joints2d.npy", "keypoints.confidence.npy", "keypoints.present.npy",
                     "keypoints.landmarks.npy", "keypoints.info.json", "provenance.json"}


def test_readers_choose_a_version_and_it_replaces_the_main_entries(relabelled):
    out, summary = relabelled
    version = summary["version"]
    main = {c.key: c for c in iter_clips(shard_urls(out / "shards"))}
    chosen = {c.key: c for c in iter_clips_with_labels(out, {"keypoints": version})}
    assert sorted(chosen) == sorted(main)
    for key, clip in chosen.items():
        assert clip.meta["labels"]["keypoints"]["label_version"] == version
        assert "label_version" not in main[key].meta["labels"]["keypoints"]
        np.testing.assert_array_equal(clip.frames, main[key].frames)  # frames come from the main shard
        # the same backend and weights on the same stored frames: the same numbers as at curation
        np.testing.assert_array_equal(clip.labels["keypoints"]["joints2d"], main[key].labels["keypoints"]["joints2d"])
    person = chosen["pose-000000000-000001500"].labels["keypoints"]
    assert person["present"].all() and (person["confidence"][:, 1] > 0.5).all()
    # `main` is the curation's own labels
    same = {c.key: c for c in iter_clips_with_labels(out, {"keypoints": MAIN_VERSION})}
    assert same.keys() == main.keys()
    assert all("label_version" not in c.meta["labels"]["keypoints"] for c in same.values())
    with pytest.raises(FileNotFoundError, match="no label version keypoints/mediapipe-000000000000"):
        list(iter_clips_with_labels(out, {"keypoints": "mediapipe-000000000000"}))


def test_same_relabel_twice_writes_nothing(relabelled):
    out, first = relabelled
    before = snapshot(out)
    again = run_relabel(out, MEDIAPIPE)
    assert again["version"] == first["version"]
    assert again["shards_written"] == 0 and again["ok"] == 14 and not again["table_written"]
    assert snapshot(out) == before


def test_new_version_keeps_the_old_one_readable(relabelled, tmp_path):
    shared, first = relabelled
    out = Path(shutil.copytree(shared, tmp_path / "out"))  # the shared fixture stays one version (any test order)
    old = {c.key: (c.labels["keypoints"], c.meta["labels"]["keypoints"])
           for c in iter_clips_with_labels(out, {"keypoints": first["version"]})}
    # Different parameters: a different version. Crops need people boxes this output lacks, so the stage
    # runs on whole frames either way; a high detection threshold finds fewer people in vtest.
    strict = MEDIAPIPE.model_copy(update={"params": {"min_detection_confidence": 0.95}})
    second = run_relabel(out, strict)
    assert second["version"] != first["version"] and second["shards_written"] == 6
    versions = {v.version: v for v in list_label_versions(out, "keypoints")}
    assert set(versions) == {first["version"], second["version"]}
    assert all(v.complete for v in versions.values())
    assert versions[second["version"]].info["params"]["min_detection_confidence"] == 0.95
    for clip in iter_clips_with_labels(out, {"keypoints": first["version"]}):
        labels, prov = old[clip.key]
        assert clip.meta["labels"]["keypoints"] == prov
        for name, value in labels.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(clip.labels["keypoints"][name], value)
    new = {c.key: c for c in iter_clips_with_labels(out, {"keypoints": second["version"]})}
    assert all(c.meta["labels"]["keypoints"]["params"]["min_detection_confidence"] == 0.95 for c in new.values())
    found_old = sum(old[k][0]["present"].sum() for k in old)
    found_new = sum(c.labels["keypoints"]["present"].sum() for c in new.values())
    assert found_new < found_old
    table = read_labels_table(out)
    assert table.num_rows == 28 and set(table.column("version").to_pylist()) == {first["version"], second["version"]}


def _official(ours: str) -> str:
    if ours.startswith("backbone."):
        return "backbone." + vit_key.official(ours[len("backbone."):])
    return "smpl_head." + smpl_head_key.official(ours[len("head."):])


def test_failing_clips_are_rows_and_readers_decide(curated, tmp_path):
    """keypoints:camerahmr needs people boxes, which this output lacks: every clip fails, is recorded, and the
    version still completes; readers skip, keep or refuse clips without the chosen version."""
    out = relabel_copy(curated, tmp_path / "out")
    torch.manual_seed(0)
    model = HumanBranch(HumanBranchConfig.tiny(with_camera_head=True, with_keypoint_head=True))
    ckpt = tmp_path / "camerahmr.ckpt"
    torch.save({"state_dict": {_official(k): v for k, v in model.state_dict().items()}}, ckpt)
    body = write_synthetic_body_model(tmp_path / "smpl.npz", ring_size=8, rings=60)
    config = RelabelConfig(stage="keypoints", backend="camerahmr", workers=2,
                           params={"checkpoint": str(ckpt), "body_model": str(body), "arch": "tiny", "device": "cpu"})
    summary = run_relabel(out, config)
    assert summary["error"] == 14 and summary["ok"] == 0 and summary["shards_written"] == 6
    rows = read_labels_table(out).to_pylist()
    assert {r["reason"] for r in rows} == {"KeypointsError"} and "people" in rows[0]["message"]
    versions = {"keypoints": summary["version"]}
    assert list(iter_clips_with_labels(out, versions)) == []
    kept = list(iter_clips_with_labels(out, versions, missing="keep"))
    assert len(kept) == 14 and all("keypoints" not in c.labels and "keypoints" not in c.meta["labels"] for c in kept)
    with pytest.raises(KeyError, match="has no label in version keypoints/camerahmr-"):
        list(iter_clips_with_labels(out, versions, missing="raise"))


def test_sigkill_mid_sidecar_then_resume_equals_uninterrupted(curated, relabelled, tmp_path, prefect_api):
    clean, first = relabelled
    out = relabel_copy(curated, tmp_path / "out")
    version = first["version"]
    vdir = out / "labels" / "keypoints" / version
    cmd = [sys.executable, "-m", "flows.relabel", str(out), "--stage", "keypoints", "--backend", "mediapipe",
           "--workers", "1", "--json"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "UNISH_FAULT_RELABEL_DELAY_S": "0.4"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (list(vdir.glob("*.tar")) and list(vdir.glob("*.tar.tmp"))):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    assert list(vdir.glob("*.tar")) and list(vdir.glob("*.tar.tmp")), "never caught a finished and an unfinished sidecar"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in vdir.glob("*.tar")}
    assert not (out / LABELS_FILE).exists()
    assert len(done_before) < 6
    # A reader of the unfinished version sees only complete sidecars (the rest count as missing).
    partial = list(iter_clips_with_labels(out, {"keypoints": version}))
    assert 0 < len(partial) < 14

    env.pop("UNISH_FAULT_RELABEL_DELAY_S")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["version"] == version and summary["shards_written"] == 6 - len(done_before)
    for name, stamp in done_before.items():  # finished sidecars were not redone
        st = (vdir / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == stamp, name
    assert not list(vdir.glob("*.tmp"))
    clean_vdir = clean / "labels" / "keypoints" / version
    for p in sorted(clean_vdir.glob("*.tar")) + sorted(clean_vdir.glob("*.rows.json")):
        assert (vdir / p.name).read_bytes() == p.read_bytes(), p.name
    clean_rows = [r for r in pq.read_table(clean / LABELS_FILE).to_pylist() if r["version"] == version]
    assert pq.read_table(out / LABELS_FILE).to_pylist() == clean_rows


def test_deployments_load_their_flows_and_validate(prefect_api):
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(spec)
    names = {d.name for d in model.deployments}
    assert {"curate", "relabel-depth-weekly"} <= names
    for dep in model.deployments:
        path, _, func = dep.entrypoint.partition(":")
        flow = load_flow_from_entrypoint(f"{REPO / path}:{func}")
        flow.validate_parameters(dep.parameters)
        if dep.name.startswith("relabel"):
            assert flow.name == "relabel" and dep.schedules
            for s in dep.schedules:
                CronSchedule(cron=s.cron, timezone=s.timezone)
            config = RelabelConfig.model_validate(dep.parameters["config"])
            assert config.stage in ("depth", "keypoints")


def test_sidecar_bytes_decode_to_the_reader_labels(relabelled):
    out, summary = relabelled
    import tarfile

    shard = sorted(p.name for p in (out / "shards").glob("*.tar"))[0]
    with tarfile.open(sidecar_path(out, "keypoints", summary["version"], shard)) as tar:
        key = tar.getmembers()[0].name.split(".", 1)[0]
        raw = decode_npy(tar.extractfile(f"{key}.keypoints.joints2d.npy").read())
    clip = next(c for c in iter_clips_with_labels(out, {"keypoints": summary["version"]}) if c.key == key)
    np.testing.assert_array_equal(clip.labels["keypoints"]["joints2d"], raw)


def test_a_stage_module_that_fails_to_import_is_named(monkeypatch) -> None:
    """relabel builds its stage through the registry: a stage module that cannot be imported is reported, not
    swallowed into a bare 'unknown stage'."""
    import tasks.stage as stage_registry
    from flows.relabel import get_stage

    monkeypatch.setattr(stage_registry, "BUILTIN_STAGE_MODULES",
                        [*stage_registry.BUILTIN_STAGE_MODULES, "tasks.no_such_family"])
    monkeypatch.setattr(stage_registry, "_IMPORT_ERRORS", {})
    with pytest.raises(KeyError, match="unknown stage 'no_such_family:x'.*tasks.no_such_family could not be imported"):
        get_stage(RelabelConfig(stage="no_such_family", backend="x"))
