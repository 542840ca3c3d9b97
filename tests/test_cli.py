"""The `unish` command line: start-up imports, exit statuses, one-line errors and the log file, missing weights
listed at once, rejected arguments, rerun feedback, the config file round trip, named flow runs, and `unish infer`
on a video shorter than a window.

Outputs are read from `--json`, exit codes, files, or with whitespace joined (a terminal may wrap lines)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows import exitcodes
from flows.cli import LAZY_COMMANDS, app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def joined(text: str) -> str:
    return " ".join(text.split())


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def closed_port() -> int:
    with socket.socket() as s:  # nothing listens there afterwards: connection refused, a transient error
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli_media")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=5.5", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", str(d / "good.mp4"))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=2", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", str(d / "short2s.mp4"))
    (d / "bad.mp4").write_text("not a video\n" * 20)
    return d


# ------------------------------------------------------------------------------------------------ start-up


# inspect and verify read shards with WebDataset (which imports torch) and decode clips with OpenCV: that they use;
# Prefect and the labellers they do not.
@pytest.mark.parametrize("args, allowed", [
    (["--help"], ()), (["curate", "--help"], ()), (["relabel", "--help"], ()), (["infer", "--help"], ()),
    (["eval", "metrics", "--help"], ()), (["weights", "list"], ()), (["inspect", "RUN", "--json"], ("cv2", "torch")),
    (["verify", "RUN", "--json"], ("cv2", "torch"))])
def test_light_commands_import_neither_torch_nor_prefect(args, allowed, tmp_path):
    """`unish --help` and `unish inspect` (and each command's help) import only what they use."""
    from shards.index import INDEX_FILE, VIDEOS_FILE, rows_to_table, write_table_atomic
    from shards.schema import INDEX_SCHEMA, VIDEOS_SCHEMA

    write_table_atomic(rows_to_table([], INDEX_SCHEMA), tmp_path / INDEX_FILE)
    write_table_atomic(rows_to_table([], VIDEOS_SCHEMA), tmp_path / VIDEOS_FILE)
    args = [str(tmp_path) if a == "RUN" else a for a in args]
    code = ("import sys\nfrom flows.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nheavy = sorted(m for m in ('torch', 'prefect', 'ultralytics', 'cv2') "
            "if m in sys.modules)\nprint('HEAVY', heavy, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200", "UNISH_WEIGHTS": str(tmp_path / "w")}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    heavy = eval(r.stderr.strip().splitlines()[-1].removeprefix("HEAVY "))  # a list literal the child printed
    assert [m for m in heavy if m not in allowed] == [], r.stderr[-500:]


def test_every_lazy_command_loads_and_its_listed_help_is_its_own():
    """The one line `unish --help` shows (without importing the command) is the command's own first help line."""
    from flows.lazycli import load_command

    for name, (target, short) in LAZY_COMMANDS.items():
        command = load_command(target, name)
        first = joined((command.help or "").split("\n\n")[0])
        assert first == joined(short), (name, first, short)
    listed = joined(invoke("--help").output)
    assert all(name in listed for name in LAZY_COMMANDS)
    assert "Exit status: 0" in listed


# ------------------------------------------------------------------------------------ exit status and errors


@pytest.fixture(scope="module")
def mixed_run(videos, tmp_path_factory, prefect_api):
    """One subprocess run of a manifest with every kind of row: ok, permanently bad (unreadable, missing, a bad
    manifest row) and transient (a dead server, no retries left)."""
    d = tmp_path_factory.mktemp("mixed")
    for name in ("good.mp4", "bad.mp4"):
        shutil.copy(videos / name, d / name)
    port = closed_port()
    rows = ["source,id", "good.mp4,good", "bad.mp4,bad", "gone.mp4,gone", "good.mp4,bad.id",
            f"http://127.0.0.1:{port}/v.mp4,dead"]
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    (d / "permanent.csv").write_text("\n".join(rows[:-1]) + "\n")
    out = d / "run"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(d / "m.csv"), "--out", str(out),
                        "--no-progress", "--json", "--fetch-retries", "0", "--workers", "2"], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "PREFECT_API_URL": prefect_api}, timeout=300)
    return d, out, r


def test_transient_errors_left_exit_3_with_one_line_per_error_and_a_log(mixed_run, prefect_api):
    d, out, r = mixed_run
    assert r.returncode == exitcodes.RETRY, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["status"] == exitcodes.RETRY and summary["ok"] == 1
    errors = {(e["source_id"] or e["source"]): e for e in summary["errors"]}
    got = {k: (e["stage"], e["reason"], e["retry_may_help"]) for k, e in errors.items()}
    assert got == {"bad": ("probe", "unreadable", False), "gone": ("fetch", "missing_file", False),
                   "good.mp4": ("manifest", "manifest", False), "dead": ("fetch", "network", True)}
    # the terminal: one line per handled error, no traceback
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 4, r.stderr
    assert any(line.startswith("error: dead (row 5) fetch network: ") for line in lines), lines
    assert "Traceback" not in r.stderr
    # the log file: named by the summary, inside the run, with the tracebacks and every failed video
    log = Path(summary["log"])
    assert log.parent == out / "logs" and log.name.startswith("curate-") and log.suffix == ".log"
    text = log.read_text()
    assert text.count("Traceback") >= 3 and all(sid in text for sid in ("bad", "gone", "dead"))
    assert f"log: {log}" in joined(r.stderr)
    # the flow run: named after the command and the folder, with its page on the server's UI
    run = summary["flow_run"]
    assert run["name"] == "curate-run" and re.fullmatch(r"[0-9a-f-]{36}", run["id"])
    assert run["ui_url"] == f"{prefect_api.removesuffix('/api')}/runs/flow-run/{run['id']}"
    assert run["id"] in joined(r.stderr)


def test_permanent_errors_exit_0_and_strict_makes_them_fail(mixed_run):
    d, out, _ = mixed_run
    r = invoke("curate", d / "permanent.csv", "--out", out, "--no-progress", "--json")
    assert r.exit_code == exitcodes.OK, r.output
    summary = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("{")))
    assert summary["status"] == 0 and summary["skipped"] == 1 and summary["queued"] == 3
    assert all(not e["retry_may_help"] for e in summary["errors"]) and len(summary["errors"]) == 3
    assert "1 of 3 videos already done; 2 processed now" in joined(r.output)
    strict = invoke("curate", d / "permanent.csv", "--out", out, "--no-progress", "--json", "--strict")
    assert strict.exit_code == exitcodes.FAILED, strict.output


def test_a_run_that_cannot_start_exits_1_and_bad_arguments_exit_2(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path / "weights"))
    shutil.copy(videos / "good.mp4", tmp_path / "good.mp4")
    (tmp_path / "m.csv").write_text("source\ngood.mp4\n")
    base = ["curate", tmp_path / "m.csv", "--out", tmp_path / "run", "--no-progress"]
    missing = invoke(*base, "--profile", "paper")  # stops before Prefect starts: every missing file at once
    assert missing.exit_code == exitcodes.FAILED
    text = joined(missing.output)
    assert "5 weights files are missing" in text
    for name in ("yolo11n.pt", "sam2.1_hiera_large.pt", "moge-2-vitl.pt", "camerahmr_checkpoint_cleaned.ckpt",
                 "SMPL_NEUTRAL.npz"):
        assert name in text, name
    assert not (tmp_path / "run" / "index.parquet").exists()
    assert invoke(*base, "--profile", "bogus").exit_code == exitcodes.USAGE
    assert invoke(*base, "--stages", "people:nope").exit_code == exitcodes.USAGE
    assert invoke(*base, "--stage-param", "people:hog.nope=1", "--stages", "people:hog").exit_code == exitcodes.USAGE
    assert invoke("curate", tmp_path / "nope.csv", "--out", tmp_path / "run").exit_code == exitcodes.USAGE
    (tmp_path / "bad.toml").write_text("[curate]\njpeg_quality = 10\n")
    bad = invoke(*base, "--config", tmp_path / "bad.toml")
    assert bad.exit_code == exitcodes.USAGE and "jpeg_quality" in joined(bad.output)
    (tmp_path / "unknown.toml").write_text("[curate]\nshot_treshold = 30\n")
    unknown = invoke(*base, "--config", tmp_path / "unknown.toml")
    assert unknown.exit_code == exitcodes.USAGE and "shot_treshold" in joined(unknown.output)
    (tmp_path / "broken.yaml").write_text("curate: [unclosed\n")
    assert invoke(*base, "--config", tmp_path / "broken.yaml").exit_code == exitcodes.USAGE
    relabel = invoke("relabel", tmp_path / "run", "--backend", "none")
    assert relabel.exit_code == exitcodes.USAGE and "--stage" in joined(relabel.output)


def test_train_and_export_exit_2_on_bad_arguments_and_1_with_one_line_when_data_is_missing(tmp_path):
    assert invoke("train", "--stage", "1", "--data", tmp_path / "x.tar").exit_code == exitcodes.USAGE  # no --out
    assert invoke("train", "--stage", "9", "--data", tmp_path / "x.tar", "--out", tmp_path / "r",
                  "--tiny-random").exit_code == exitcodes.USAGE
    missing = invoke("train", "--stage", "1", "--data", tmp_path / "absent.tar", "--out", tmp_path / "r",
                     "--tiny-random", "--max-steps", "1")
    assert missing.exit_code == exitcodes.FAILED
    assert "absent.tar" in joined(missing.output) and "Traceback" not in missing.output
    assert invoke("export", tmp_path / "no_run", "--out", tmp_path / "o.safetensors").exit_code == exitcodes.USAGE


def test_run_status_precedence():
    assert exitcodes.run_status(False, 0, 0) == exitcodes.OK
    assert exitcodes.run_status(False, 0, 5) == exitcodes.OK
    assert exitcodes.run_status(False, 0, 5, strict=True) == exitcodes.FAILED
    assert exitcodes.run_status(False, 2, 5, strict=True) == exitcodes.RETRY
    assert exitcodes.run_status(True, 2, 5) == exitcodes.FAILED


# ------------------------------------------------------------------------- config file, rerun, effective config


@pytest.fixture(scope="module")
def configured_run(videos, tmp_path_factory, prefect_api):
    d = tmp_path_factory.mktemp("configured")
    shutil.copy(videos / "good.mp4", d / "good.mp4")
    (d / "m.csv").write_text("source,id\ngood.mp4,good\n")
    (d / "unish.toml").write_text(
        "[curate]\nshot_threshold = 30.0\njpeg-quality = 80\nshard_max_samples = 7\nhost_backoff_s = 1.5\n"
        "workers = 3\n\n[relabel]\nstage = \"depth\"\nbackend = \"none\"\n")
    out = d / "run"
    r = invoke("curate", d / "m.csv", "--out", out, "--config", d / "unish.toml", "--workers", "1",
               "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    return d, out


def test_config_file_settings_reach_the_run_and_flags_win(configured_run):
    from shards.reader import iter_clips, shard_urls

    d, out = configured_run
    recorded = json.loads((out / "curate.json").read_text())["curate"]
    assert (recorded["shot_threshold"], recorded["jpeg_quality"], recorded["shard_max_samples"],
            recorded["host_backoff_s"]) == (30.0, 80, 7, 1.5)
    assert recorded["workers"] == 1  # the flag, over the file's 3
    (clip,) = list(iter_clips(shard_urls(out / "shards")))
    assert clip.meta["jpeg_quality"] == 80  # the file's setting reached the pipeline


def test_rerun_with_the_effective_config_does_nothing_and_rewrites_nothing(configured_run):
    d, out = configured_run
    files = ("index.parquet", "videos.parquet", "curate.json")
    before = {f: ((out / f).stat().st_mtime_ns, (out / f).read_bytes()) for f in files}
    # curate.json (JSON, read as YAML) is a config file: the same settings, so every video is already done
    r = invoke("curate", d / "m.csv", "--out", out, "--config", out / "curate.json", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("{")))
    assert summary["skipped"] == summary["queued"] == 1 and summary["tables_written"] is False
    assert "1 of 1 videos already done, nothing to do" in joined(r.output)
    assert "index.parquet and videos.parquet unchanged" in joined(r.output)
    assert {f: ((out / f).stat().st_mtime_ns, (out / f).read_bytes()) for f in files} == before
    assert summary["log"] is None and not (out / "logs").exists()  # nothing went wrong: no log written


def test_relabel_from_the_same_config_file_records_its_configuration(configured_run):
    d, out = configured_run
    r = invoke("relabel", out, "--config", d / "unish.toml", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("{")))
    assert summary["stage"] == "depth:none" and summary["status"] == 0 and summary["errors"] == []
    assert summary["flow_run"]["name"] == "relabel-depth:none-run"
    info = json.loads((out / "labels" / "depth" / summary["version"] / "version.json").read_text())
    assert info["relabel"]["stage"] == "depth" and info["relabel"]["backend"] == "none"


def test_config_files_toml_yaml_sections_and_unknown_keys(tmp_path):
    from flows.config_file import ConfigFileError, read_config

    known = ["shot_threshold", "workers"]
    (tmp_path / "a.toml").write_text("[curate]\nshot-threshold = 20.0\n[infer]\nwindow = 4\n")
    (tmp_path / "a.yaml").write_text("shot_threshold: 20.0\n")
    assert read_config(tmp_path / "a.toml", "curate", known) == {"shot_threshold": 20.0}
    assert read_config(tmp_path / "a.yaml", "curate", known) == {"shot_threshold": 20.0}
    (tmp_path / "b.yaml").write_text("curate:\n  wokers: 2\n")
    with pytest.raises(ConfigFileError, match="unknown curate settings: wokers"):
        read_config(tmp_path / "b.yaml", "curate", known)
    with pytest.raises(ConfigFileError, match="expected a table"):
        (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
        read_config(tmp_path / "c.yaml", "curate", known)


def test_curate_flag_defaults_are_the_config_defaults():
    """A flag left at its default must mean what the config's default means (the file or CurateConfig decides)."""
    from flows.curate_cmd import FLAGS
    from flows.lazycli import load_command
    from flows.params import CurateConfig

    command = load_command(LAZY_COMMANDS["curate"][0], "curate")
    defaults = CurateConfig()
    for param in command.params:
        if param.name in FLAGS and param.name not in ("stages", "stage_param"):
            value = param.default
            value = list(value) if isinstance(value, tuple) else value
            assert value == getattr(defaults, FLAGS[param.name]), param.name


# ------------------------------------------------------------------------------------------------- weights


def test_missing_weights_are_listed_at_once_with_one_smpl_story(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path / "w"))
    convert = f"python -m unish_model.body {tmp_path / 'w' / 'SMPL_NEUTRAL.pkl'} {tmp_path / 'w' / 'SMPL_NEUTRAL.npz'}"
    r = invoke("infer", videos / "good.mp4", "--out", tmp_path / "o", "--masks", "sam2")
    assert r.exit_code == exitcodes.FAILED
    text = joined(r.output)
    assert "4 weights files are missing" in text and convert in text
    for name in ("unish_release.safetensors", "SMPL_NEUTRAL.npz", "yolo11n.pt", "sam2.1_hiera_large.pt"):
        assert name in text, name
    assert not (tmp_path / "o").exists()
    r = invoke("infer", videos / "good.mp4", "--out", tmp_path / "o", "--body-model", "none", "--tiny-random")
    assert r.exit_code == exitcodes.FAILED and "1 weights file is missing" in joined(r.output)  # only yolo11n
    check = invoke("weights", "check", "--profile", "paper", "--no-hash")
    assert check.exit_code == exitcodes.FAILED and convert in joined(check.output)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "SMPL_NEUTRAL.pkl").write_bytes(b"a download, not yet converted")
    check = invoke("weights", "check", "smpl_neutral")
    assert f"{tmp_path / 'w' / 'SMPL_NEUTRAL.pkl'} is here: convert it once with `{convert}`" in joined(check.output)
    from tasks.stage import build_stage

    stage = build_stage("keypoints:camerahmr")
    with pytest.raises(Exception) as e:
        stage.setup()
    assert convert in str(e.value)  # keypoints:camerahmr asks for the same file, the same way


def test_the_paper_profile_needs_what_weights_check_lists(monkeypatch, tmp_path):
    from tasks import weights as w
    from tasks.profiles import PROFILES
    from tasks.stage import build_stage, weights_needed

    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    needed = {n.name for s in PROFILES["paper"] for n in weights_needed(build_stage(s))}
    assert needed == set(w.names_for("paper"))
    assert all(weights_needed(build_stage(s)) == [] for s in PROFILES["lite"])


def test_weights_check_refuses_an_unknown_profile_and_list_says_why_not_pinned(monkeypatch, tmp_path):
    from tasks import weights as w

    monkeypatch.setenv("UNISH_WEIGHTS", str(tmp_path))
    bogus = invoke("weights", "check", "--profile", "bogus")
    assert bogus.exit_code == exitcodes.USAGE and "paper" in joined(bogus.output)
    assert invoke("weights", "check", "--profile", "lite").exit_code == 0  # nothing needed, nothing missing
    for s in w.REGISTRY.values():
        assert s.sha256 is not None or s.pin_note.startswith("not pinned"), s.name
    monkeypatch.setenv("COLUMNS", "400")
    listed = joined(invoke("weights", "list").output)
    assert "Meta publishes no checksum" in listed and "behind a registration" in listed


# -------------------------------------------------------------------------------------------- eval metrics


def _metrics(tmp_path: Path, kind: str, **arrays):
    np.savez(tmp_path / "a.npz", **arrays)
    return runner.invoke(app, ["eval", "metrics", "--kind", kind, str(tmp_path / "a.npz")], standalone_mode=False)


def test_eval_metrics_refuses_arrays_that_do_not_fit(tmp_path):
    import typer

    rng = np.random.default_rng(0)
    joints = rng.normal(size=(120, 24, 3))
    depth = rng.uniform(1, 5, size=(2, 6, 8))
    cases = [("depth", dict(pred=joints, gt=joints), "--kind motion"),
             ("motion", dict(pred=depth, gt=depth), "--kind depth"),
             ("depth", dict(pred=np.full_like(depth, np.nan), gt=depth), "NaN or infinite"),
             ("depth", dict(pred=depth, gt=np.zeros_like(depth)), "nothing to score"),
             ("motion", dict(pred=np.where(np.arange(120)[:, None, None] == 3, np.nan, joints), gt=joints), "mask")]
    for kind, arrays, text in cases:
        r = _metrics(tmp_path, kind, **arrays)
        assert isinstance(r.exception, typer.BadParameter), (kind, text, r.exception, r.output)
        assert text in r.exception.message, (text, r.exception.message)
    # a NaN in a frame the mask drops is fine
    mask = np.arange(120) != 3
    r = _metrics(tmp_path, "motion", pred=np.where(~mask[:, None, None], np.nan, joints), gt=joints, mask=mask)
    assert r.exit_code == 0, r.output


def test_eval_metrics_json_gives_units_and_help_names_the_arrays(tmp_path):
    from flows.eval_cmd import UNITS

    depth = np.random.default_rng(1).uniform(1, 5, size=(2, 6, 8))
    out = json.loads(_metrics(tmp_path, "depth", pred=depth, gt=depth).stdout)
    assert set(out["units"]) == {k for k in out if k not in ("kind", "align", "units")}
    assert out["units"]["rmse"] == "m" and out["units"] == UNITS["depth"]
    joints = np.random.default_rng(2).normal(size=(40, 24, 3)) + np.linspace(0, 2, 40)[:, None, None]
    out = json.loads(_metrics(tmp_path, "motion", pred=joints, gt=joints).stdout)
    assert set(out["units"]) == {k for k in out if k not in ("kind", "units")}
    assert out["units"]["wa_mpjpe"] == "mm"
    text = joined(invoke("eval", "metrics", "--help").output)
    for name in ("`pred` (F, h, w)", "`gt` (F, H, W)", "(F, J, 3) world joints in metres", "`mask` (F,)"):
        assert name in text, name


# ---------------------------------------------------------------------------------------------- infer, short


def test_infer_runs_one_shorter_window_on_a_short_video(videos, tmp_path):
    out = tmp_path / "out"
    r = invoke("infer", videos / "short2s.mp4", "--out", out, "--tiny-random", "--people", "frame",
               "--body-model", "none", "--long-side", "126", "--short-side", "98")
    assert r.exit_code == 0, r.output + repr(r.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["windows"] == 1 and summary["frames"] == 12  # 2 s at 6 fps
    assert summary["infer"]["window"] == 12 and summary["infer"]["tiny_random"] is True
    assert "shorter than one window" in joined(r.output) and "one window of 12 frames" in joined(r.output)
    with np.load(out / "unish.npz", allow_pickle=False) as d:
        assert d["world_points"].shape[0] == 12


# --------------------------------------------------------------------------------- flow names, takedown of logs


def test_flow_run_names_and_where_to_see_a_run():
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from flows.flowrun import FlowRunInfo, run_name, ui_url

    assert run_name("curate", "/data/runs/demo") == "curate-demo"
    assert run_name("relabel-depth:moge", "runs/my run") == "relabel-depth:moge-my_run"
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):  # the embedded server
        assert ui_url("abc") is None
        local = FlowRunInfo("abc", "curate-demo", ui_url("abc")).describe()
        assert "prefect server start" in local and "http://127.0.0.1:4200/runs/flow-run/abc" in local
    with temporary_settings({PREFECT_API_URL: "http://prefect.example:4200/api"}, restore_defaults={PREFECT_UI_URL}):
        assert ui_url("abc") == "http://prefect.example:4200/runs/flow-run/abc"


def test_a_takedown_deletes_the_logs_that_name_a_withdrawn_video(tmp_path):
    from shards.takedown import Match, plan_run

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "curate-1.log").write_text("ERROR unish.handled: vid123 (manifest row 2, media/x.mp4) probe: ...\n")
    (logs / "curate-2.log").write_text("ERROR unish.handled: other (manifest row 3) fetch: ...\n")
    plan, _ = plan_run(tmp_path, Match({"vid123"}, set(), set()))
    assert plan.work == ["logs/curate-1.log"]
    plan, _ = plan_run(tmp_path, Match(set(), {"media/x.mp4"}, set()))
    assert plan.work == ["logs/curate-1.log"]


def test_a_deployment_run_of_the_flow_is_named_too(tmp_path, prefect_api):
    """The name comes from the flow itself, so a deployment's runs (no command line) carry it as well."""
    from prefect.client.orchestration import get_client

    from flows.curate import curate_flow
    from flows.params import CurateConfig

    (tmp_path / "m.csv").write_text("source\n")
    state = curate_flow(str(tmp_path / "m.csv"), str(tmp_path / "nightly"), CurateConfig(progress=False),
                        return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).name == "curate-nightly"
