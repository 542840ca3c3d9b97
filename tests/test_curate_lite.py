"""`unish curate --profile lite` on the multi-person example video: windows rejected, rules counted."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shards.index import compute_funnel, read_index
from tasks.people import HogBackend

REPO = Path(__file__).resolve().parents[1]
PEOPLE_RULES = {"multi_person", "no_person", "inconsistent", "small", "truncated", "occluded"}


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory, media, prefect_api):
    try:
        HogBackend().setup()
    except Exception as e:  # pragma: no cover - depends on the OpenCV build
        pytest.skip(f"HOG detector unavailable: {e}")
    d = tmp_path_factory.mktemp("lite")
    for name in ("vtest_20s.mp4", "sports2d_demo.mp4"):
        shutil.copy(media / name, d / name)
    manifest = d / "m.csv"
    manifest.write_text("source,id\nvtest_20s.mp4,vtest\nsports2d_demo.mp4,sports2d\n")
    out = d / "out"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(manifest), "--out", str(out),
                        "--profile", "lite", "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_multi_person_windows_are_rejected_with_a_named_rule(lite_run):
    out, stdout = lite_run
    index, _ = read_index(out)
    rows = index.to_pylist()
    assert len(rows) == 5  # 4 windows of vtest, 1 of sports2d
    for r in rows:
        assert r["status"] == "rejected", r
        assert r["reason"] in PEOPLE_RULES
        assert r["message"]  # says why, with the numbers
        stats = json.loads(r["stats"])["people"]
        assert stats["backend"] == "hog" and stats["num_frames"] == 30
    funnel = compute_funnel(*read_index(out))
    assert sum(funnel.rejected.values()) == 5 and funnel.clips_written == 0
    for rule in funnel.rejected:
        assert f"rejected: {rule}" in stdout  # the closing funnel shows the count per rule
