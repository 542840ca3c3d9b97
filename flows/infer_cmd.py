"""`unish infer VIDEO --out DIR`: run UniSH over a whole video, stitched into one world frame and one metric scale.

The command only wires the parts together, window by window (memory stays at one window whatever the video's
length):
1. `tasks.decode.segment_video` decodes the video once and hands over windows of `window` frames at 6 fps and
   the model size (518x294 or 294x518), each starting `stride` frames after the previous one, so consecutive
   windows share `window - stride` frames (default 30 and 25: 5 shared frames, 0.83 s).  A window with a shot cut
   is skipped (its frames get no result) and the next window is chained on the cameras (see `unish_model.stitch`).
2. The person (`tasks.people.choice`): per window, a people backend's detector and tracker (`yolo`, the paper's
   choice; `hog`, lite; `frame`, the whole frame, for smoke tests), the track that continues the previous
   window's person, else the most prominent; frames where it is missing take the box interpolated from its
   neighbours (`unish_model.boxes.fill_boxes`).  Its mask (`tasks.masks.person_masks`) comes from a masks stage
   (`--masks mediapipe|sam2`) run on the window's tracked boxes, or is the box itself (`--masks box`, the
   default; also the fallback, logged, when the stage loses the mask in a window).
3. The window runner (`unish_model.runner.WindowRunner`): `UniSH.infer` on the window, stitched onto the previous
   windows; only frames not already written are spooled to disk (`unish_model.reconstruction.spool_step`).
4. At the end: one metric scale (median of the windows' estimates), then `unish_model.reconstruction.write_outputs`
   writes `unish.npz`, `points.ply`, `scene.glb` and `recording.rrd` from the spool.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console

from unish_model.reconstruction import OutputOptions

console = Console(stderr=True)
MIN_WINDOW_FRAMES = 2  # a video shorter than one window runs as one shorter window of at least this many frames


@dataclass
class InferConfig:
    window: int = 30  # frames per window (the paper: 30)
    stride: int = 25  # frames between window starts; window - stride frames are shared
    fps: float = 6.0
    long_side: int = 518
    short_side: int = 294
    people: str = "yolo"  # yolo | hog | frame
    people_weights: str = "yolo11n"  # registry name, .pt file, or a .yaml (random weights: tests only)
    masks: str = "box"  # box | mediapipe | sam2: the labelling stage that masks the person
    person_score: float = 0.3  # detections below this are ignored when choosing the person
    box_scale: float = 1.0
    device: str = "cpu"
    solver: str = "torch"
    start_s: float | None = None
    end_s: float | None = None
    # what the output files keep (meaning and defaults: unish_model.reconstruction.OutputOptions)
    ply_conf: float = OutputOptions.ply_conf
    voxel_size: float | None = OutputOptions.voxel_size
    max_cloud_points: int = OutputOptions.max_cloud_points
    rrd_points_per_frame: int = OutputOptions.rrd_points_per_frame
    glb_max_frames: int = OutputOptions.glb_max_frames

    def output_options(self) -> OutputOptions:
        return OutputOptions(fps=self.fps, ply_conf=self.ply_conf, voxel_size=self.voxel_size,
                             max_cloud_points=self.max_cloud_points, rrd_points_per_frame=self.rrd_points_per_frame,
                             glb_max_frames=self.glb_max_frames)

    def __post_init__(self) -> None:
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"stride must be in 1..window ({self.window}), got {self.stride}")
        if self.long_side % 14 or self.short_side % 14:
            raise ValueError(f"model size must be multiples of 14, got {self.long_side}x{self.short_side}")
        if self.people not in ("yolo", "hog", "frame"):
            raise ValueError(f"people must be yolo, hog or frame, got {self.people!r}")
        if self.masks not in ("box", "mediapipe", "sam2"):
            raise ValueError(f"masks must be box, mediapipe or sam2, got {self.masks!r}")


@dataclass
class InferResult:
    out: Path
    frames: int
    windows: int
    skipped_windows: list[dict[str, Any]]
    metric_scale: float
    files: dict[str, Path]
    window_stats: list[dict[str, float | int]] = field(default_factory=list)


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def run_infer(video: Path, out: Path, config: InferConfig, model: Any, body: Any, log: Callable[[str], None] = _say,
              settings: dict[str, Any] | None = None) -> InferResult:
    """Run the model over `video` into `out`; `settings` (the weights and body model the command used) are written
    with `config` into summary.json's `infer`: the run's effective configuration, a `--config` file itself."""
    from tasks.decode import frame_geometry, segment_video
    from tasks.masks import person_mask_stage, person_masks
    from tasks.people.choice import choose_person, person_detector
    from tasks.probe import probe_video
    from tasks.shots import ShotParams, WindowParams, plan_windows
    from unish_model.boxes import fill_boxes, whole_frame
    from unish_model.export import FrameSpool
    from unish_model.reconstruction import spool_step, window_arrays, write_outputs
    from unish_model.runner import UniSHPredictor, Window, WindowRunner

    out.mkdir(parents=True, exist_ok=True)
    info = probe_video(video)
    geometry = frame_geometry(info, config.long_side, config.short_side)
    windows = WindowParams(seconds=config.window / config.fps, fps=config.fps, frames=config.window,
                           stride_s=config.stride / config.fps)
    span = (config.start_s, config.end_s)
    span_start = 0.0 if config.start_s is None else config.start_s
    span_end = info.duration_s if config.end_s is None else min(config.end_s, info.duration_s)
    planned = plan_windows(span_start, span_end, windows)
    if not planned:  # shorter than one window: one shorter window (the model takes any number of frames)
        frames = int(math.floor(max(0.0, span_end - span_start) * config.fps + 1e-6))
        if frames < MIN_WINDOW_FRAMES:
            raise ValueError(f"{video}: {max(0.0, span_end - span_start):.2f} s holds {frames} frame(s) at "
                             f"{config.fps:g} fps; at least {MIN_WINDOW_FRAMES} are needed")
        log(f"{video.name}: {span_end - span_start:.2f} s is shorter than one window ({config.window} frames at "
            f"{config.fps:g} fps = {config.window / config.fps:.2f} s): running one window of {frames} frames")
        config = replace(config, window=frames, stride=frames)
        windows = replace(windows, seconds=frames / config.fps, frames=frames, stride_s=frames / config.fps)
        planned = plan_windows(span_start, span_end, windows)
    detector = person_detector(config.people, config.people_weights, config.device)
    mask_stage = person_mask_stage(config.masks)
    spool = FrameSpool(out / ".spool")
    runner = WindowRunner(UniSHPredictor(model, config.device, config.solver, config.box_scale),
                          keep_last=config.window - config.stride if config.stride < config.window else 1)
    state: dict[str, Any] = {"prev_boxes": {}, "k": 0}
    skipped: list[dict[str, Any]] = []

    def on_window(outcome: Any) -> None:
        k = state["k"]
        state["k"] += 1
        if outcome.status != "ok":
            skipped.append({"window": k, "start_s": outcome.start_s, "status": outcome.status,
                            "reason": outcome.reason, "message": outcome.message})
            log(f"window {k + 1}/{len(planned)} skipped: {outcome.status} {outcome.reason} {outcome.message}")
            return
        frames = outcome.frames
        t_count, height, width = frames.shape[:3]
        index = int(round((outcome.start_s - span_start) * config.fps)) + np.arange(t_count)
        previous = np.array([state["prev_boxes"].get(int(i), [np.nan] * 4) for i in index], np.float64)
        raw = choose_person(detector.detect(frames), previous, config.person_score)
        boxes, present = fill_boxes(raw, fallback=whole_frame(height, width))
        state["prev_boxes"] = {int(i): b for i, b, p in zip(index, boxes, present) if p}
        step = runner.run(Window(video.name, index, frames, boxes.astype(np.float32), config.fps))
        if not step.new.any():
            return
        mask = person_masks(mask_stage, frames, boxes, present, log)
        spool_step(spool, step, boxes, present, mask, outcome.frame_times_s)
        log(f"window {k + 1}/{len(planned)}: frames {index[0]}-{index[-1]}, shared {step.stitched.overlap}, "
            f"scale to world {step.stitched.to_global.scale:.4f}, inliers {step.stitched.inlier_share:.2f}, "
            f"person seen in {int(present.sum())}/{t_count} frames")

    report = segment_video(info, 0.0, span, on_window, windows=windows, shots=ShotParams(), geometry=geometry)
    if report.decode_error:
        log(f"warning: {report.decode_error}")
    if not runner.starts:
        spool.remove()
        raise RuntimeError(f"{video}: no window could be processed ({skipped})")
    metres = runner.metric_scale()
    stats = [r.to_dict() for r in runner.results]
    files = write_outputs(out, spool, metres, window_arrays(runner), body, config.output_options(), info.path)
    result = InferResult(out, spool.frames("images"), len(runner.starts), skipped, metres, files, stats)
    (out / "summary.json").write_text(json.dumps({
        "video": str(video), "frames": result.frames, "windows": result.windows, "skipped_windows": skipped,
        "metric_scale": metres, "window_stats": stats, "infer": {**asdict(config), **(settings or {})},
        "files": {k: str(v) for k, v in files.items()}}, indent=2, default=str))
    spool.remove()
    return result


# ----------------------------------------------------------------------------------------------- CLI


def open_viewer(rrd: Path) -> None:
    """Start the Rerun viewer on the recording (its own process; we do not wait for it)."""
    subprocess.Popen([sys.executable, "-m", "rerun", str(rrd)])  # noqa: S603 - fixed argv, no shell


from flows.infer_cli import infer  # noqa: E402  (the command itself: flows/infer_cli.py, importable without torch)

__all__ = ["InferConfig", "InferResult", "infer", "open_viewer", "run_infer"]
