"""Make the README's screenshots with the project's own commands on the bundled example media.

    python docs/screenshots.py [--work /tmp/unish-screenshots]

1. `unish curate` twice, as `make demo` and `examples/README.md` do: `examples/multi.csv` with `--profile lite`
   (HOG people: every window rejected, with the detections as evidence) and `examples/labels_manifest.csv` with the
   lite labellers (one kept clip with its MediaPipe mask and keypoints);
2. `unish report` of each; headless Chromium (DevTools protocol, `tests/chromium.py`) renders the pages, and the
   sections are cropped: `docs/report_overview.jpg` (funnel, outcomes, distributions), `docs/report_rejected.jpg`
   and `docs/report_kept.jpg` (contact sheets);
3. `unish infer --tiny-random` on the Pose2Sim clip and `unish view` of the kept clip; the Rerun viewer itself
   (`rerun FILE --screenshot-to`) renders each recording in a virtual X display (`xvfb-run`, Mesa's software
   Vulkan), opened with the saved blueprint: `docs/viewer_infer.jpg`, `docs/viewer_clip.jpg`.

Needs Debian's `chromium`, `xvfb`, `xauth` and `mesa-vulkan-drivers` (apt-get install -y ...).  The tiny random model
makes meaningless geometry: the infer screenshot shows the layout, not a reconstruction.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
WIDTH = 1200
JPEG_QUALITY = 80


def unish(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, check=True, env=env)


SECTIONS = """(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top + window.scrollY, r.width, r.height]; };
  const sheets = Array.from(document.querySelectorAll('.sheet'));
  return {funnel: box(document.getElementById('funnel')), distributions: box(document.querySelector('.charts')),
          sheets: sheets.map(s => ({outcome: s.dataset.outcome, box: box(s)})),
          legend: box(document.querySelector('.legend'))};
})()"""


def save_jpeg(img, path: Path, width: int = WIDTH) -> None:
    from PIL import Image

    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.convert("RGB").save(path, quality=JPEG_QUALITY, optimize=True, progressive=True)
    print(f"{path.relative_to(REPO)}: {img.width}x{img.height}, {path.stat().st_size / 1e3:.0f} KB")


def report_shots(chromium: str, page: Path, crops: dict[str, str]) -> None:
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from chromium import open_page

    result = open_page(chromium, page, SECTIONS)
    if result.console_errors:
        raise SystemExit(f"{page}: console errors {result.console_errors}")
    shot = Image.open(io.BytesIO(result.screenshot))
    boxes = result.value
    pad = 12
    for name, what in crops.items():
        if what == "overview":
            top, bottom = boxes["funnel"][1], boxes["distributions"][1] + boxes["distributions"][3]
        elif what == "kept":
            kept = [s["box"] for s in boxes["sheets"] if s["outcome"] == "ok"]
            top, bottom = boxes["legend"][1], kept[0][1] + kept[0][3]
        else:  # the rejected clips' sheets
            rejected = [s["box"] for s in boxes["sheets"] if s["outcome"] != "ok"]
            top, bottom = boxes["legend"][1], rejected[-1][1] + rejected[-1][3]
        save_jpeg(shot.crop((0, max(0, int(top) - pad), shot.width, min(shot.height, int(bottom) + pad))),
                  DOCS / name)


def viewer_shot(rrd: Path, png: Path, name: str) -> None:
    from PIL import Image

    # the screen is larger than the window, so the X pointer (at the screen's centre) hovers over nothing
    subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 3000x2000x24", sys.executable, "-m", "rerun", str(rrd),
                    "--window-size", "1400x800", "--screenshot-to", str(png)], check=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    save_jpeg(Image.open(png), DOCS / name, width=1400)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/unish-screenshots"))
    work = parser.parse_args().work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    chromium = shutil.which("chromium")
    if chromium is None or shutil.which("xvfb-run") is None:
        raise SystemExit("needs chromium and xvfb-run: apt-get install -y chromium xvfb xauth mesa-vulkan-drivers")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

    unish("curate", "examples/multi.csv", "--out", str(work / "multi"), "--profile", "lite", "--no-progress")
    unish("curate", "examples/labels_manifest.csv", "--out", str(work / "labels"),
          "--stages", "people:external,masks:mediapipe,depth:none,keypoints:mediapipe",
          "--stage-param", "people:external.detections=examples/pose2sim_detections.jsonl",
          "--window-seconds", "1.5", "--window-frames", "4", "--no-progress")
    for run in ("multi", "labels"):
        unish("report", str(work / run), "--out", str(work / f"{run}.html"))
    report_shots(chromium, work / "multi.html", {"report_overview.jpg": "overview", "report_rejected.jpg": "rejected"})
    report_shots(chromium, work / "labels.html", {"report_kept.jpg": "kept"})

    unish("infer", "examples/media/pose2sim_single_cam01.mp4", "--out", str(work / "infer"), "--tiny-random",
          "--people", "frame", "--masks", "mediapipe", "--window", "4", "--stride", "2")
    unish("view", str(work / "labels"), "--no-open", "--out", str(work / "clip.rrd"))
    viewer_shot(work / "infer" / "recording.rrd", work / "viewer_infer.png", "viewer_infer.jpg")
    viewer_shot(work / "clip.rrd", work / "viewer_clip.png", "viewer_clip.jpg")


if __name__ == "__main__":
    main()
