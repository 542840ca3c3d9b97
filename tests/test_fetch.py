"""yt-dlp for real against an HTTP server on loopback serving a real mp4 (generic extractor)."""
import shutil

import pytest

from http_fixture import VideoServer
from tasks.fetch import PermanentFetchError, TransientFetchError, classify_download_error, fetch_source
from tasks.manifest import ManifestRow
from tasks.probe import probe_video


@pytest.fixture
def server(tmp_path, media):
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(media / "vtest_20s.mp4", root / "v.mp4")
    with VideoServer(root) as s:
        yield s


def row(url, start=None, end=None, sid="vid"):
    return ManifestRow(1, url, "url", sid, start, end)


def test_section_download_is_padded_exact_and_never_repeated(server, tmp_path):
    r = row(server.url("/files/v.mp4"), 6.0, 11.0)
    got = fetch_source(r, tmp_path / "dl", pad_s=2.0)
    assert got.downloaded and got.section_start_s == 4.0
    info = probe_video(got.path)
    assert info.duration_s == pytest.approx(9.0, abs=0.15)  # 4..13 s of the source
    hits = dict(server.hits)
    again = fetch_source(r, tmp_path / "dl", pad_s=2.0)
    assert not again.downloaded and again.path == got.path and server.hits == hits


def test_whole_file_download(server, tmp_path):
    got = fetch_source(row(server.url("/files/v.mp4")), tmp_path / "dl")
    assert got.section_start_s == 0.0
    assert probe_video(got.path).duration_s == pytest.approx(20.0, abs=0.1)


def test_404_is_permanent(server, tmp_path):
    with pytest.raises(PermanentFetchError, match="404"):
        fetch_source(row(server.url("/missing.mp4")), tmp_path / "dl")
    assert not any((tmp_path / "dl").rglob("*.mp4"))


def test_connection_reset_is_transient(server, tmp_path):
    with pytest.raises(TransientFetchError, match="reset"):
        fetch_source(row(server.url("/flaky/5/v.mp4")), tmp_path / "dl", backoff_s=0)


def test_local_path_is_used_in_place(media, tmp_path):
    p = str(media / "vtest_20s.mp4")
    got = fetch_source(ManifestRow(1, p, "path", "v", None, None), tmp_path)
    assert got.path == p and not got.downloaded
    with pytest.raises(PermanentFetchError):
        fetch_source(ManifestRow(1, str(tmp_path / "nope.mp4"), "path", "v", None, None), tmp_path)


@pytest.mark.parametrize("message,kind", [
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", PermanentFetchError),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", PermanentFetchError),
    ("ERROR: [youtube] abc: Sign in to confirm you're not a bot", TransientFetchError),
    ("HTTP Error 429: Too Many Requests", TransientFetchError),
    ("HTTP Error 503: Service Unavailable", TransientFetchError),
    ("HTTP Error 404: Not Found", PermanentFetchError),
])
def test_error_classification(message, kind):
    assert type(classify_download_error("abc", message)) is kind
