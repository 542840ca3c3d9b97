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
    # Variable frame rate with a hole: no frame between 3.0 s and 6.4 s (a 3.4 s gap), one continuous shot.
    gap = d / "gap_3s.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=11",
           "-vf", "setpts='if(gte(T,3),PTS+3.4/TB,PTS)'", "-fps_mode", "passthrough", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(gap))
    return {"cut": cut, "rotated": rotated, "clean": clean, "gap": gap}


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory, media) -> dict[str, Path]:
    """The bad-input corpus: each must end as a recorded error, never a crash."""
    d = tmp_path_factory.mktemp("bad")
    (d / "zero_bytes.mp4").write_bytes(b"")
    data = (media / "vtest_20s.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "aac", str(d / "audio_only.mp4"))
    # The index (moov) at the front, the data cut at 40%: it opens and states 20 s, but holds about 8.
    whole = d / "faststart.mp4.src"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=20", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", "-f", "mp4", str(whole))
    data = whole.read_bytes()
    (d / "truncated_front_index.mp4").write_bytes(data[: len(data) * 4 // 10])
    whole.unlink()
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


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount a tmpfs of a given size (optionally read-only) under tmp_path: a real full or read-only disk.
    Skipped, with the reason, where mounting is not allowed (it needs root or CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def make(name: str, size_kb: int, read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        opts = f"size={size_kb}k" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root or CAP_SYS_ADMIN")
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path, small_tmpfs):
    """A folder no process of ours can write: chmod where permissions bind (not root), else a read-only mount."""
    if os.geteuid() != 0:
        d = tmp_path / "read_only"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    yield small_tmpfs("read_only", 1024, read_only=True)
