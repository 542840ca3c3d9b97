"""yt-dlp for real against an HTTP server on loopback serving a real mp4 (generic extractor)."""
import shutil

import pytest

from http_fixture import VideoServer
from tasks.fetch import (ERROR_CLASSES, UNKNOWN_ERROR, PermanentFetchError, TransientFetchError, classify_download_error,
                         fetch_source, host_key)
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


def test_connection_reset_is_transient_and_names_host_and_port(server, tmp_path):
    with pytest.raises(TransientFetchError, match="reset") as err:
        fetch_source(row(server.url("/flaky/5/v.mp4")), tmp_path / "dl")
    assert err.value.reason == "network" and err.value.host == f"127.0.0.1:{server.port}"


def test_host_key_is_host_and_port():
    assert host_key("http://127.0.0.1:8000/a.mp4") != host_key("http://127.0.0.1:8001/a.mp4")
    assert host_key("https://www.youtube.com/watch?v=x") == "www.youtube.com:443"


def test_local_path_is_used_in_place(media, tmp_path):
    p = str(media / "vtest_20s.mp4")
    got = fetch_source(ManifestRow(1, p, "path", "v", None, None), tmp_path)
    assert got.path == p and not got.downloaded
    with pytest.raises(PermanentFetchError) as err:
        fetch_source(ManifestRow(1, str(tmp_path / "nope.mp4"), "path", "v", None, None), tmp_path)
    assert err.value.reason == "missing_file"
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(PermanentFetchError, match="folder, not a video file") as err:
        fetch_source(ManifestRow(1, str(tmp_path / "folder.mp4"), "path", "v", None, None), tmp_path)
    assert err.value.reason == "not_a_file"


# One message per class, as yt-dlp and the HTTP stack word them (after yt-dlp's "ERROR: " prefix).
@pytest.mark.parametrize("message,reason,transient", [
    ("[youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable", False),
    ("Unable to download webpage: HTTP Error 404: Not Found", "unavailable", False),
    ("[youtube] abc: Private video. Sign in if you've been granted access to this video", "private", False),
    ("[youtube] abc: Join this channel to get access to members-only content", "private", False),
    ("Unable to download webpage: HTTP Error 403: Forbidden", "forbidden", False),
    ("[youtube] abc: Sign in to confirm your age. This video may be inappropriate", "forbidden", False),
    ("Unsupported URL: https://example.org/page", "unsupported", False),
    ("[youtube] abc: Requested format is not available", "unsupported", False),
    ("Unable to download webpage: HTTP Error 429: Too Many Requests", "rate_limited", True),
    ("[youtube] abc: Sign in to confirm you're not a bot", "bot_check", True),
    ("Unable to download webpage: HTTP Error 503: Service Unavailable", "server_error", True),
    ("Unable to download webpage: The read operation timed out", "timeout", True),
    ("Unable to download webpage: <urlopen error [Errno 111] Connection refused>", "network", True),
    ("Unable to download webpage: <urlopen error [Errno -3] Temporary failure in name resolution>", "network", True),
    ("Unable to download webpage: [SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred", "network", True),
    ("Postprocessing: Conversion failed!", "fetch_failed", False),  # unknown: recorded, not retried blind
])
def test_error_classification(message, reason, transient):
    err = classify_download_error("abc", message, "host:1")
    assert (err.reason, err.transient, err.host) == (reason, transient, "host:1")
    assert isinstance(err, TransientFetchError if transient else PermanentFetchError)


def test_every_error_class_has_a_case():
    """The parametrised cases above cover every class (a new class needs its own case)."""
    covered = {classify_download_error("abc", m).reason for m, _, _ in test_error_classification.pytestmark[0].args[1]}
    assert covered == {c.reason for c in ERROR_CLASSES} | {UNKNOWN_ERROR.reason}
