"""Shared fixtures: real media (copied into examples/media), videos made with ffmpeg, one Prefect
server per test session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / "examples" / "media"
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (http_fixture)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def media() -> Path:
    return MEDIA


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory) -> dict[str, Path]:
    """Small videos with known structure: a hard cut at 4 s, a rotated copy, and a clean 11 s shot."""
    d = tmp_path_factory.mktemp("videos")
    cut = d / "cut_at_4s.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=4",
           "-f", "lavfi", "-i", "mandelbrot=size=320x180:rate=30,trim=duration=8",
           "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "30", str(cut))
    rotated = d / "rotated90.mp4"
    ffmpeg("-i", str(cut), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    clean = d / "clean_11s.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=11", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(clean))
    return {"cut": cut, "rotated": rotated, "clean": clean}


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory, media) -> dict[str, Path]:
    """The bad-input corpus: each must end as a recorded error, never a crash."""
    d = tmp_path_factory.mktemp("bad")
    (d / "zero_bytes.mp4").write_bytes(b"")
    data = (media / "vtest_20s.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "aac", str(d / "audio_only.mp4"))
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One Prefect API server (temporary database) for the whole test session; subprocesses get its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        url = PREFECT_API_URL.value()
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's model runs: two shared cores, so OpenMP spinning only slows them."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def copy_media(tmp_path, media):
    def _copy(name: str, new_name: str | None = None) -> Path:
        dst = tmp_path / (new_name or name)
        shutil.copy(media / name, dst)
        return dst

    return _copy
