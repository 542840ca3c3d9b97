"""The weights registry, folder, check and pull (against a loopback HTTP server), and `unish weights`."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.weights_cmd import weights_app
from tasks import weights as w

runner = CliRunner()
PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # a few chunks' worth
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def weights_folder(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "weights"
    monkeypatch.setenv("UNISH_WEIGHTS", str(d))
    return d


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    (root / "model.bin").write_bytes(PAYLOAD)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused, as offline
    return f"http://127.0.0.1:{port}/model.bin"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------- registry


def test_registry_has_every_model_the_project_uses():
    for name in ("yolo11n", "sam2.1_hiera_tiny", "sam2.1_hiera_large", "moge-2-vitl", "camerahmr", "pi3",
                 "unish_release", "smpl_neutral"):
        assert name in w.REGISTRY, name
    for s in w.REGISTRY.values():
        assert s.filename and s.license
        assert s.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", s.sha256)
        if s.registration:
            assert s.url is None and s.registration.startswith("https://") and not s.downloadable
        else:
            assert s.url and s.url.startswith("https://") and s.downloadable
    assert "yyfz233/Pi3" in w.REGISTRY["pi3"].url and w.REGISTRY["pi3"].url.endswith("/model.safetensors")
    assert w.REGISTRY["unish_release"].url.endswith("Murphyyyy/UniSH/resolve/main/checkpoints/unish_release.safetensors")
    assert w.REGISTRY["camerahmr"].registration and w.REGISTRY["smpl_neutral"].registration
    assert "people:yolo" in w.REGISTRY["yolo11n"].note and "paper" in w.REGISTRY["yolo11n"].needed_by
    assert set(w.names_for("paper")) >= {"yolo11n", "sam2.1_hiera_large", "moge-2-vitl", "camerahmr"}
    assert len({s.filename for s in w.REGISTRY.values()}) == len(w.REGISTRY)  # one folder, no clashes


def test_weights_dir_default_and_override(monkeypatch, tmp_path, weights_folder):
    assert w.weights_dir() == weights_folder
    monkeypatch.delenv("UNISH_WEIGHTS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert w.weights_dir() == tmp_path / "home" / ".cache" / "unish" / "weights"


def test_require_names_the_file_and_how_to_get_it(weights_folder):
    with pytest.raises(w.WeightsMissing) as e:
        w.require("yolo11n")
    assert str(weights_folder / "yolo11n.pt") in str(e.value) and "unish weights pull yolo11n" in str(e.value)
    with pytest.raises(w.WeightsMissing) as e:
        w.require("camerahmr")
    assert "register at https://camerahmr.is.tue.mpg.de" in str(e.value)
    weights_folder.mkdir()
    (weights_folder / "yolo11n.pt").write_bytes(b"x")
    assert w.require("yolo11n") == weights_folder / "yolo11n.pt"
    with pytest.raises(KeyError):
        w.require("nope")


def test_check_hashes_against_the_pin(weights_folder, monkeypatch):
    monkeypatch.setitem(w.REGISTRY, "tiny", w.WeightsSpec("tiny", "tiny.bin", "https://x/tiny.bin", PAYLOAD_SHA,
                                                          "MIT", ("paper",)))
    assert not w.check("tiny").present
    weights_folder.mkdir()
    (weights_folder / "tiny.bin").write_bytes(PAYLOAD)
    st = w.check("tiny")
    assert st.present and st.sha256 == PAYLOAD_SHA and st.sha_ok is True and st.ok
    (weights_folder / "tiny.bin").write_bytes(PAYLOAD[:-1])
    st = w.check("tiny")
    assert st.sha_ok is False and not st.ok
    assert w.check("tiny", hash_file=False).sha_ok is None


# --------------------------------------------------------------------------------------- download


def test_download_streams_checks_and_renames(server, weights_folder):
    dest = weights_folder / "m.bin"
    digest = w.download(f"{server}/model.bin", dest, sha256=PAYLOAD_SHA)
    assert digest == PAYLOAD_SHA and dest.read_bytes() == PAYLOAD
    assert leftovers(weights_folder) == ["m.bin"]  # the temp file is gone


def test_download_reads_in_bounded_chunks(weights_folder):
    sizes = []

    class Resp:
        def __init__(self):
            self.left = len(PAYLOAD)

        def read(self, n=-1):
            sizes.append(n)
            assert 0 < n <= 1 << 20, "must stream, never read the whole body"
            start = len(PAYLOAD) - self.left
            chunk = PAYLOAD[start : start + n]
            self.left -= len(chunk)
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    digest = w.download("https://example.invalid/m.bin", weights_folder / "m.bin", opener=lambda url, timeout: Resp())
    assert digest == PAYLOAD_SHA and len(sizes) >= 4


def test_wrong_sha_keeps_nothing(server, weights_folder):
    with pytest.raises(w.WeightsChecksumMismatch):
        w.download(f"{server}/model.bin", weights_folder / "m.bin", sha256="0" * 64)
    assert leftovers(weights_folder) == []


def test_connection_lost_midway_keeps_nothing(weights_folder):
    class Broken:
        calls = 0

        def read(self, n=-1):
            Broken.calls += 1
            if Broken.calls > 1:
                raise ConnectionResetError("reset by peer")
            return PAYLOAD[:n]

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    with pytest.raises(w.WeightsOffline):
        w.download("https://example.invalid/m.bin", weights_folder / "m.bin", opener=lambda url, timeout: Broken())
    assert leftovers(weights_folder) == []


def test_http_error_and_offline_are_told_apart(server, weights_folder):
    with pytest.raises(w.WeightsError, match="HTTP 404") as e:
        w.download(f"{server}/absent.bin", weights_folder / "m.bin")
    assert not isinstance(e.value, w.WeightsOffline)
    with pytest.raises(w.WeightsOffline, match=r"^offline: cannot reach 127\.0\.0\.1"):
        w.download(closed_port_url(), weights_folder / "m.bin", timeout_s=5)
    assert leftovers(weights_folder) == []


def test_pull_uses_the_registry_and_skips_a_present_file(server, weights_folder, monkeypatch):
    monkeypatch.setitem(w.REGISTRY, "tiny", w.WeightsSpec("tiny", "tiny.bin", f"{server}/model.bin", PAYLOAD_SHA,
                                                          "MIT", ()))
    path = w.pull("tiny")
    assert path == weights_folder / "tiny.bin" and path.read_bytes() == PAYLOAD
    mtime = path.stat().st_mtime_ns
    assert w.pull("tiny") == path and path.stat().st_mtime_ns == mtime  # nothing downloaded twice
    with pytest.raises(w.WeightsMissing, match="register at"):
        w.pull("smpl_neutral")


# -------------------------------------------------------------------------------------------- cli


def test_cli_list_shows_every_entry(weights_folder, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    result = runner.invoke(weights_app, ["list"])
    assert result.exit_code == 0, result.output
    for name in w.REGISTRY:
        assert name in result.output
    assert str(weights_folder) in result.output


def test_cli_check_reports_missing_and_present(weights_folder):
    result = runner.invoke(weights_app, ["check", "--profile", "paper"])
    assert result.exit_code == 1
    assert "missing  yolo11n" in result.output and "unish weights pull yolo11n" in result.output
    assert "missing  camerahmr" in result.output and "register at" in result.output
    weights_folder.mkdir()
    (weights_folder / "yolo11n.pt").write_bytes(b"abc")
    result = runner.invoke(weights_app, ["check", "yolo11n"])
    assert result.exit_code == 0, result.output
    assert f"ok       yolo11n: {weights_folder / 'yolo11n.pt'}" in result.output
    assert hashlib.sha256(b"abc").hexdigest() in result.output
    assert runner.invoke(weights_app, ["check", "nope"]).exit_code == 2


def test_cli_pull_offline_says_so_in_one_line(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = runner.invoke(weights_app, ["pull", "yolo11n", "--timeout", "5"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offline: cannot reach github.com"), result.output
    assert "yolo11n.pt" in lines[0]


def test_cli_pull_registration_only_and_success(server, weights_folder, monkeypatch):
    result = runner.invoke(weights_app, ["pull", "camerahmr"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "register at https://camerahmr.is.tue.mpg.de" in lines[0]
    assert str(weights_folder / "camerahmr_checkpoint_cleaned.ckpt") in lines[0]

    monkeypatch.setitem(w.REGISTRY, "tiny", w.WeightsSpec("tiny", "tiny.bin", f"{server}/model.bin", None, "MIT", ()))
    result = runner.invoke(weights_app, ["pull", "tiny"])
    assert result.exit_code == 0, result.output
    assert PAYLOAD_SHA in result.output and (weights_folder / "tiny.bin").read_bytes() == PAYLOAD


def test_ultralytics_switches_are_set_before_import(monkeypatch, tmp_path):
    for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "ULTRALYTICS_SAFE_LOAD", "YOLO_CONFIG_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    w.prepare_ultralytics_env()
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert os.environ["ULTRALYTICS_SAFE_LOAD"] == "1"
    assert Path(os.environ["YOLO_CONFIG_DIR"]) == tmp_path / "cache" / "unish" / "ultralytics"
    assert Path(os.environ["YOLO_CONFIG_DIR"]).is_dir()
