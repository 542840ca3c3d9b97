"""A small curated run for the report and `unish inspect`/`unish view` tests: every kind of row the report shows.

One 4 s synthetic video (320x180, 25 fps) cut into 0.5 s windows of 3 frames (8 windows), with person boxes given
as an external detections file (`people:external`), so each window's fate is known in advance:

    window  0    1             2    3          4      5    6          7
    fate    ok   multi_person  ok   truncated  small  ok   no_person  ok

and the cheap synthetic masks/depth/keypoints stages of `tests/train_data.py` on the kept clips.  A second,
zero-byte video ends as `error:unreadable` with its message.  Curating it takes a few seconds.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from train_data import SYNTHETIC_STAGES  # importing it registers the *:synthetic stages

SOURCE = "synth"
FATES = ("ok", "multi_person", "ok", "truncated", "small", "ok", "no_person", "ok")
WINDOW_S = 0.5
VIDEO_FPS = 25
SIZE = (320, 180)  # source W x H

# boxes in source pixels (x1, y1, x2, y2); the model frame is 518x294, a cover-and-crop of the 320x180 source
PERSON = (130.0, 30.0, 190.0, 160.0)  # 72% of the height, well inside
SECOND = (235.0, 40.0, 290.0, 160.0)  # another person, apart from the first
AT_BORDER = (0.0, 30.0, 60.0, 160.0)  # touches the left border
SMALL = (145.0, 90.0, 170.0, 135.0)  # 25% of the height


def detection_rows() -> list[dict]:
    rows = []
    for i in range(int(len(FATES) * WINDOW_S * VIDEO_FPS)):
        t = i / VIDEO_FPS
        fate = FATES[min(int(t / WINDOW_S), len(FATES) - 1)]
        boxes = {"ok": [PERSON], "multi_person": [PERSON, SECOND], "truncated": [AT_BORDER], "small": [SMALL],
                 "no_person": []}[fate]
        for b in boxes:
            rows.append({"source_id": SOURCE, "time_s": round(t, 6), "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3],
                         "score": 0.9})
    return rows


STAGES = ["people:external", *SYNTHETIC_STAGES]


def curate_report_run(d: Path, workers: int = 1) -> Path:
    """Curate the run into `d/run` (through the real flow; the caller provides the Prefect server)."""
    from flows.curate import run_curate
    from flows.params import CurateConfig

    d.mkdir(parents=True, exist_ok=True)
    video = d / f"{SOURCE}.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate={VIDEO_FPS}:duration={len(FATES) * WINDOW_S}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=True)
    (d / "broken.mp4").write_bytes(b"")
    dets = d / "detections.jsonl"
    dets.write_text("".join(json.dumps(r) + "\n" for r in detection_rows()))
    (d / "m.csv").write_text(f"source,id\n{video.name},{SOURCE}\nbroken.mp4,broken\n")
    config = CurateConfig(progress=False, workers=workers, stages=STAGES, window_seconds=WINDOW_S, window_frames=3,
                          stage_params={"people:external": {"detections": str(dets)}})
    run_curate(d / "m.csv", d / "run", config)
    return d / "run"
