"""`unish infer VIDEO --out DIR`: run UniSH over a whole video, stitched into one world frame and one metric scale.

What happens, window by window (memory stays at one window whatever the video's length):
1. `tasks.decode.segment_video` decodes the video once and hands over windows of `window` frames at 6 fps and
   the model size (518x294 or 294x518), each starting `stride` frames after the previous one, so consecutive
   windows share `window - stride` frames (default 30 and 25: 5 shared frames, 0.83 s).  A window with a shot cut
   is skipped (its frames get no result) and the next window is chained on the cameras (see `unish_model.stitch`).
2. The person: per window, the labelling stage's detector (`yolo`: YOLO + ByteTrack, the paper's choice;
   `hog`: OpenCV HOG, lite; `frame`: the whole frame, for smoke tests) and its tracker; the track that best
   continues the previous window's person (box IoU on the shared frames) is kept, else the most prominent
   (largest box area x score over the window).  Frames where it is missing take the box interpolated from its
   neighbours.  Its mask comes from a masks labelling stage (`--masks mediapipe|sam2`) run on the window's
   tracked boxes, or is the box itself (`--masks box`, the default; also the fallback, logged, when the
   stage loses the mask in a window).
3. `UniSH.infer` on the window; `Stitcher` fits the similarity from the window's frame to the first window's on
   the shared frames' point maps; only frames not already written are spooled to disk.
4. At the end: one metric scale (median of the windows' estimates), then the outputs are written from the spool:
   `unish.npz` (every array, plain), `points.ply` (fused, confidence-masked, voxel-subsampled), `scene.glb`
   (SMPL meshes and camera frusta over time) and `recording.rrd` (Rerun: points, cameras, SMPL on a timeline).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import typer
from rich.console import Console

console = Console(stderr=True)

ARRAY_DOC = {
    "images": "(F, H, W, 3) uint8 model-size RGB frames",
    "world_points": "(F, H, W, 3) float32 metres, stitched world frame (OpenCV axes; the first window's first camera)",
    "local_points": "(F, H, W, 3) float32 metres, camera frame, before the z-shift",
    "depth": "(F, H, W) float32 metres, local z + shift",
    "point_conf": "(F, H, W) float32 sigmoid confidence",
    "masks": "(F, H, W) bool confident and in front of the camera",
    "person_box": "(F, 4) float32 xyxy pixels of the chosen person",
    "person_present": "(F,) bool the detector saw the person in this frame (else interpolated)",
    "person_mask": "(F, H, W) bool the person's mask (the masks stage's, or the box)",
    "c2w": "(F, 4, 4) float32 camera-to-world, metres",
    "intrinsics": "(F, 3, 3) float32 pixels",
    "focal": "(F,) float32 relative to the half image diagonal",
    "shift": "(F,) float32 metres",
    "pose_cam": "(F, 72) float32 SMPL axis-angle, root in the camera frame",
    "pose_world": "(F, 72) float32 SMPL axis-angle, root in the world frame",
    "betas": "(F, 10) float32 SMPL shape (the window's mean)",
    "trans_cam": "(F, 3) float32 metres, SMPL translation in the camera frame (z includes + shift, as official)",
    "trans_world": "(F, 3) float32 metres, SMPL translation in the world frame (exact: rotation about the pelvis)",
    "joints_world": "(F, 24, 3) float32 metres, SMPL joints in the world frame (empty without a body model)",
    "frame_index": "(F,) int64 index at the sampling rate (time = index / fps from the start)",
    "frame_time_s": "(F,) float64 source time of each frame",
    "window_index": "(F,) int32 window each frame came from",
    "window_start_frame": "(K,) int64 first frame index of each window",
    "window_similarity": "(K, 4, 4) float64 window frame -> world frame before the metric scale",
    "window_metric_scale": "(K,) float64 UniSH's own metric factor per window",
    "window_metres_per_unit": "(K,) float64 each window's estimate of the world unit in metres",
    "window_overlap": "(K,) int32 frames shared with the previous window",
    "window_inlier_share": "(K,) float64 share of overlap pixel pairs kept by the robust fit",
    "window_residual_rms": "(K,) float64 RMS alignment residual (world units)",
    "metric_scale": "() float64 metres per world unit applied to every length",
    "smpl_faces": "(13776, 3) int32 body-model triangles (empty without a body model)",
}

# spooled arrays that carry a length (multiplied by the metric scale at the end); c2w: translation only
_LENGTHS = ("world_points", "local_points", "depth", "shift", "trans_cam")


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
    ply_conf: float = 0.1  # confidence a pixel needs for the fused cloud
    voxel_size: float | None = None  # metres; None: 1/200 of the first frame's median depth
    max_cloud_points: int = 1_000_000
    rrd_points_per_frame: int = 20_000
    glb_max_frames: int = 60

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


# ----------------------------------------------------------------------------------------------- person


def make_segmenter(config: InferConfig) -> Any:
    """The masks labelling stage (set up now, so missing weights fail before decoding), or None for boxes."""
    if config.masks == "box":
        return None
    from tasks.stage import build_stage

    stage = build_stage(f"masks:{config.masks}")
    stage.setup()
    return stage


def person_masks(segmenter: Any, frames: np.ndarray, boxes: np.ndarray, present: np.ndarray,
                 log: Callable[[str], None]) -> np.ndarray:
    """(T, H, W) bool: the masks stage's mask of the tracked person, else the boxes as masks."""
    from shards.mask_codec import unpack_masks
    from tasks.stage import ClipRejected, ClipWindow
    from unish_model.boxes import box_masks

    height, width = frames.shape[1:3]
    if segmenter is None:
        return box_masks(boxes, height, width)

    clip = ClipWindow(key="infer", source_id="infer", start_s=0.0, end_s=0.0, frames=frames,
                      frame_times_s=np.zeros(len(frames)),
                      labels={"people": {"box": boxes.astype(np.float32), "present": present.astype(bool)}})
    try:
        return unpack_masks(segmenter(clip).labels["masks"])
    except ClipRejected as e:
        log(f"  person mask lost ({e.rule}: {e.detail[:120]}); using the box")
        return box_masks(boxes, height, width)


# ----------------------------------------------------------------------------------------------- model, body


def load_model(weights: Path | None, tiny_random: bool, device: str, seed: int = 0) -> Any:
    """The official weights (a file, or the registry's `unish_release`), or a tiny random model (smoke tests)."""
    import torch

    from unish_model.pipeline import UniSH, UniSHConfig, load_unish

    if tiny_random:
        torch.manual_seed(seed)
        return UniSH(UniSHConfig.tiny()).to(device).eval()
    if weights is None:
        from tasks.weights import require

        weights = require("unish_release")
    return load_unish(weights, device=device)


def load_body_model(path: Path | None, tiny_random: bool, scratch: Path) -> Any:
    """The SMPL body model for meshes and world joints: --body-model, else the weights folder's
    SMPL_NEUTRAL.npz (the registry's `smpl_neutral`; converted from a SMPL_NEUTRAL.pkl beside it on first use),
    else with --tiny-random a synthetic model in SMPL's layout; None when the user passes `none`."""
    from unish_model.body import BodyModel, write_synthetic_body_model

    if path is not None and str(path).lower() == "none":
        return None
    if path is not None:
        return BodyModel.from_file(path)
    from tasks.weights import weights_path

    npz = weights_path("smpl_neutral")  # SMPL_NEUTRAL.npz in the weights folder
    pkl = npz.with_suffix(".pkl")
    if npz.is_file():
        return BodyModel.from_file(npz)
    if pkl.is_file():
        from unish_model.body import convert_smpl_pickle

        console.print(f"converting {pkl} to {npz} (restricted reader, once)", markup=False, highlight=False)
        return BodyModel.from_file(convert_smpl_pickle(pkl, npz))
    if tiny_random:
        return BodyModel.from_file(write_synthetic_body_model(scratch / "synthetic_smpl.npz"))
    raise FileNotFoundError(
        f"no SMPL body model: pass --body-model FILE.npz (SMPL's layout, see unish_model.body), or put the "
        f"official SMPL neutral .pkl (register at https://smpl.is.tue.mpg.de) at {pkl} (converted on first use), "
        f"or pass --body-model none for no meshes")


# ----------------------------------------------------------------------------------------------- one window


@dataclass
class WindowArrays:
    """One window's UniSH results, numpy, batch dimension dropped (metric, the window's own frame)."""

    world_points: np.ndarray
    local_points: np.ndarray
    depth: np.ndarray
    point_conf: np.ndarray
    masks: np.ndarray
    c2w: np.ndarray
    intrinsics: np.ndarray
    focal: np.ndarray
    shift: np.ndarray
    pose_cam: np.ndarray  # (T, 72) axis-angle
    betas: np.ndarray
    trans_cam: np.ndarray
    metric_scale: float


def run_window(model: Any, frames: np.ndarray, boxes: np.ndarray, config: InferConfig) -> WindowArrays:
    import torch

    from unish_model.pipeline import person_inputs

    device = torch.device(config.device)
    images = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div_(255)[None]
    patches, bbox_px = person_inputs(images, torch.from_numpy(boxes).float().to(device)[None], config.box_scale)
    out = model.infer(images, patches, bbox_px, fps=config.fps, solver=config.solver)

    def np_(x: torch.Tensor) -> np.ndarray:
        return x[0].detach().float().cpu().numpy() if x.dtype.is_floating_point else x[0].cpu().numpy()

    return WindowArrays(
        world_points=np_(out.world_points), local_points=np_(out.local_points), depth=np_(out.depth_map),
        point_conf=np_(out.point_conf), masks=np_(out.masks).astype(bool), c2w=np_(out.c2ws_cano),
        intrinsics=np_(out.intrinsics), focal=np_(out.focal), shift=np_(out.shift), pose_cam=np_(out.pose_cam),
        betas=np_(out.betas), trans_cam=np_(out.trans_cam), metric_scale=float(out.scale[0, 0]))


# ----------------------------------------------------------------------------------------------- the run


def run_infer(video: Path, out: Path, config: InferConfig, model: Any, body: Any,
              log: Callable[[str], None] = lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True)
              ) -> InferResult:
    from tasks.decode import frame_geometry, segment_video
    from tasks.probe import probe_video
    from tasks.shots import ShotParams, WindowParams, plan_windows
    from unish_model.export import FrameSpool
    from tasks.people.choice import choose_person, person_detector
    from unish_model.boxes import fill_boxes, whole_frame
    from unish_model.stitch import Stitcher, WindowGeometry, similarity_matrix, transform_poses

    out.mkdir(parents=True, exist_ok=True)
    info = probe_video(video)
    geometry = frame_geometry(info, config.long_side, config.short_side)
    windows = WindowParams(seconds=config.window / config.fps, fps=config.fps, frames=config.window,
                           stride_s=config.stride / config.fps)
    span = (config.start_s, config.end_s)
    span_start = 0.0 if config.start_s is None else config.start_s
    planned = plan_windows(span_start, info.duration_s if config.end_s is None else min(config.end_s, info.duration_s),
                           windows)
    if not planned:
        raise ValueError(f"{video}: shorter than one window ({config.window} frames at {config.fps} fps = "
                         f"{config.window / config.fps:.2f} s)")
    detector = person_detector(config.people, config.people_weights, config.device)
    segmenter = make_segmenter(config)
    spool = FrameSpool(out / ".spool")
    stitcher = Stitcher(keep_last=config.window - config.stride if config.stride < config.window else 1)
    state: dict[str, Any] = {"last_frame": -1, "prev_boxes": {}, "k": 0}
    skipped: list[dict[str, Any]] = []
    window_starts: list[int] = []
    similarities: list[np.ndarray] = []
    own_scales: list[float] = []

    def on_window(outcome: Any) -> None:
        k = state["k"]
        state["k"] += 1
        start_frame = int(round((outcome.start_s - span_start) * config.fps))
        if outcome.status != "ok":
            skipped.append({"window": k, "start_s": outcome.start_s, "status": outcome.status,
                            "reason": outcome.reason, "message": outcome.message})
            log(f"window {k + 1}/{len(planned)} skipped: {outcome.status} {outcome.reason} {outcome.message}")
            return
        frames = outcome.frames
        t_count, height, width = frames.shape[:3]
        index = start_frame + np.arange(t_count)
        previous = np.array([state["prev_boxes"].get(int(i), [np.nan] * 4) for i in index], np.float64)
        raw = choose_person(detector.detect(frames), previous, config.person_score)
        boxes, present = fill_boxes(raw, fallback=whole_frame(height, width))
        state["prev_boxes"] = {int(i): b for i, b, p in zip(index, boxes, present) if p}
        res = run_window(model, frames, boxes.astype(np.float32), config)

        stitched = stitcher.add(WindowGeometry(frames=index, c2w=res.c2w.astype(np.float64),
                                               points=res.world_points, conf=res.point_conf * res.masks,
                                               metric_scale=1.0))
        sim = stitched.to_global
        window_id = len(window_starts)
        window_starts.append(start_frame)
        similarities.append(similarity_matrix(sim))
        own_scales.append(res.metric_scale)
        new = index > state["last_frame"]
        if not new.any():
            return
        state["last_frame"] = int(index[-1])
        s = sim.scale
        spool.append("images", frames[new])
        spool.append("world_points", sim.apply(res.world_points[new]).astype(np.float32))
        spool.append("local_points", (res.local_points[new] * s).astype(np.float32))
        spool.append("depth", (res.depth[new] * s).astype(np.float32))
        spool.append("point_conf", res.point_conf[new].astype(np.float32))
        spool.append("masks", res.masks[new])
        spool.append("person_box", boxes[new].astype(np.float32))
        spool.append("person_present", present[new])
        spool.append("person_mask", person_masks(segmenter, frames, boxes, present, log)[new])
        spool.append("c2w", transform_poses(sim, res.c2w[new]).astype(np.float32))
        spool.append("intrinsics", res.intrinsics[new].astype(np.float32))
        spool.append("focal", res.focal[new].astype(np.float32))
        spool.append("shift", (res.shift[new] * s).astype(np.float32))
        spool.append("pose_cam", res.pose_cam[new].astype(np.float32))
        spool.append("betas", res.betas[new].astype(np.float32))
        spool.append("trans_cam", (res.trans_cam[new] * s).astype(np.float32))
        spool.append("frame_index", index[new].astype(np.int64))
        spool.append("frame_time_s", np.asarray(outcome.frame_times_s, np.float64)[new])
        spool.append("window_index", np.full(int(new.sum()), window_id, np.int32))
        log(f"window {k + 1}/{len(planned)}: frames {index[0]}-{index[-1]}, shared {stitched.overlap}, "
            f"scale to world {s:.4f}, inliers {stitched.inlier_share:.2f}, person seen in {int(present.sum())}/"
            f"{t_count} frames")

    report = segment_video(info, 0.0, span, on_window, windows=windows, shots=ShotParams(), geometry=geometry)
    if report.decode_error:
        log(f"warning: {report.decode_error}")
    if not window_starts:
        spool.remove()
        raise RuntimeError(f"{video}: no window could be processed ({skipped})")
    metres = stitcher.metric_scale()
    stats = [r.to_dict() for r in stitcher.results]
    per_window = {
        "window_start_frame": np.asarray(window_starts, np.int64),
        "window_similarity": np.stack(similarities),
        "window_metric_scale": np.asarray(own_scales, np.float64),
        "window_metres_per_unit": np.asarray([r.metres_per_unit for r in stitcher.results], np.float64),
        "window_overlap": np.asarray([r.overlap for r in stitcher.results], np.int32),
        "window_inlier_share": np.asarray([r.inlier_share for r in stitcher.results], np.float64),
        "window_residual_rms": np.asarray([r.residual_rms for r in stitcher.results], np.float64),
        "metric_scale": np.float64(metres),
    }
    files = write_outputs(out, spool, metres, per_window, body, config, info.path)
    result = InferResult(out, spool.frames("images"), len(window_starts), skipped, metres, files, stats)
    (out / "summary.json").write_text(json.dumps({
        "video": str(video), "frames": result.frames, "windows": result.windows, "skipped_windows": skipped,
        "metric_scale": metres, "window_stats": stats, "config": asdict(config),
        "files": {k: str(v) for k, v in files.items()}}, indent=2, default=str))
    spool.remove()
    return result


# ----------------------------------------------------------------------------------------------- outputs


def _frame_chunks(spool: Any, size: int) -> Iterator[tuple[int, int]]:
    n = spool.frames("images")
    for a in range(0, n, size):
        yield a, min(n, a + size)


def write_outputs(out: Path, spool: Any, metres: float, per_window: dict[str, Any], body: Any,
                  config: InferConfig, video_path: str) -> dict[str, Path]:
    """Second pass over the spool: world SMPL, .rrd, fused cloud, .glb, then the .npz (array by array)."""
    import torch

    from unish_model.export import GlbFrame, NpzWriter, RrdWriter, VoxelFusion, subsample_mask, vertex_normals, \
        write_glb, write_ply
    from unish_model.geometry import axis_angle_to_matrix, matrix_to_axis_angle
    from unish_model.stitch import body_to_world

    n = spool.frames("images")
    height, width = spool.entries["images"].frame_shape[:2]
    faces = None if body is None else body.faces.numpy().astype(np.int32)
    glb_step = max(1, math.ceil(n / config.glb_max_frames))
    glb_frames: list[GlbFrame] = []
    rrd = RrdWriter(out / "recording.rrd", faces=faces)
    fusion: VoxelFusion | None = None
    for a, b in _frame_chunks(spool, 16):
        chunk = {name: spool.read(name, a, b) for name in (
            "images", "world_points", "point_conf", "masks", "c2w", "intrinsics", "pose_cam", "trans_cam", "shift",
            "betas", "frame_index", "frame_time_s")}
        c2w = chunk["c2w"].astype(np.float64)
        c2w[:, :3, 3] *= metres
        spool.append("c2w_metric", c2w.astype(np.float32))
        pose_cam = torch.from_numpy(chunk["pose_cam"].astype(np.float64)).reshape(b - a, 24, 3)
        rot_cam = axis_angle_to_matrix(pose_cam)
        root_world = torch.from_numpy(c2w[:, :3, :3]) @ rot_cam[:, 0]
        pose_world = torch.cat([matrix_to_axis_angle(root_world)[:, None], pose_cam[:, 1:]], 1).reshape(b - a, 72)
        spool.append("pose_world", pose_world.float().numpy())
        shift = chunk["shift"].astype(np.float64) * metres
        # the official trans_cam carries + shift in z; the world frame uses the unshifted one (like the points)
        unshifted = chunk["trans_cam"].astype(np.float64) * metres
        unshifted[:, 2] -= shift
        betas = torch.from_numpy(chunk["betas"])
        vertices = None
        if body is not None:
            pelvis = body.rest_joints(betas)[:, 0].double().numpy()
            _, trans_world = body_to_world(c2w, rot_cam[:, 0].numpy(), unshifted, pelvis)
            posed = body(root_world.float(), rot_cam[:, 1:].float(), betas, torch.from_numpy(trans_world).float())
            vertices, joints = posed.vertices.numpy(), posed.joints.numpy()
        else:  # no body model: no pelvis offset known; the official R t + t_c2w
            trans_world = np.einsum("fij,fj->fi", c2w[:, :3, :3], unshifted) + c2w[:, :3, 3]
            joints = np.zeros((b - a, 24, 3), np.float32)
        spool.append("trans_world", trans_world.astype(np.float32))
        spool.append("joints_world", joints.astype(np.float32))

        for j in range(b - a):
            frame_world = chunk["world_points"][j] * np.float32(metres)
            good = chunk["masks"][j] & (chunk["point_conf"][j] >= config.ply_conf)
            if fusion is None:
                dist = np.linalg.norm(frame_world[good] - c2w[j, :3, 3], axis=1)
                median = float(np.median(dist)) if len(dist) else 1.0
                fusion = VoxelFusion(config.voxel_size or max(median / 200, 1e-6), max_points=config.max_cloud_points)
            flat = frame_world.reshape(-1, 3)
            rgb = chunk["images"][j].reshape(-1, 3)
            fusion.add(flat[good.reshape(-1)], rgb[good.reshape(-1)])
            pick = subsample_mask(good, config.rrd_points_per_frame)
            v = None if vertices is None else vertices[j]
            rrd.log_frame(int(chunk["frame_index"][j]), float(chunk["frame_time_s"][j]), c2w[j],
                          chunk["intrinsics"][j], image=chunk["images"][j], points=flat[pick], colors=rgb[pick],
                          vertices=v, vertex_normals=None if v is None else vertex_normals(v, faces))
            if (a + j) % glb_step == 0:
                # copies: a view would keep the whole chunk's arrays alive until the end
                glb_frames.append(GlbFrame(a + j, c2w[j].copy(), chunk["intrinsics"][j].astype(np.float64),
                                           None if v is None else v.copy()))
    assert fusion is not None
    cloud = fusion.result()
    trajectory = spool.read("c2w_metric")[:, :3, 3].astype(np.float64)
    rrd.log_static(fused=cloud, trajectory=trajectory,
                   info={"video": video_path, "frames": n, "metric_scale": float(metres)})
    rrd.close()
    files = {"rrd": out / "recording.rrd", "ply": write_ply(out / "points.ply", *cloud)}
    extent = float(np.linalg.norm(trajectory.max(0) - trajectory.min(0))) if n > 1 else 0.0
    depth_scale = float(np.nanmedian(spool.read("depth", 0, 1))) * metres
    frustum = max(0.05, min(0.2 * max(depth_scale, 1e-3), 0.3 * extent if extent > 0 else 1e9))
    files["glb"] = write_glb(out / "scene.glb", glb_frames, faces, (height, width), points=cloud,
                             frustum_depth=frustum, max_frames=config.glb_max_frames, frame_count=len(glb_frames))

    with NpzWriter(out / "unish.npz") as npz:
        for name, entry in spool.entries.items():
            if name in ("c2w",):
                continue
            target = "c2w" if name == "c2w_metric" else name
            scale = metres if name in _LENGTHS else None
            npz.add_chunks(target, (entry.frames, *entry.frame_shape), entry.dtype,
                           spool.chunks(name, 16, scale))
        for name, value in per_window.items():
            npz.add(name, value)
        npz.add("smpl_faces", faces if faces is not None else np.zeros((0, 3), np.int32))
        npz.add("fps", np.float64(config.fps))
        npz.add("array_doc", np.array([f"{k}: {v}" for k, v in ARRAY_DOC.items()]))
    files["npz"] = out / "unish.npz"
    return files


# ----------------------------------------------------------------------------------------------- CLI


def open_viewer(rrd: Path) -> None:
    """Start the Rerun viewer on the recording (its own process; we do not wait for it)."""
    subprocess.Popen([sys.executable, "-m", "rerun", str(rrd)])  # noqa: S603 - fixed argv, no shell


def infer(
    video: Path = typer.Argument(..., help="a video file"),
    out: Path = typer.Option(..., "--out", help="output folder: unish.npz, points.ply, scene.glb, recording.rrd"),
    weights: Optional[Path] = typer.Option(None, help="UniSH weights (default: the weights folder's unish_release)"),
    tiny_random: bool = typer.Option(False, "--tiny-random",
                                     help="tiny random model: smoke tests only, meaningless output"),
    body_model: Optional[Path] = typer.Option(None, help="SMPL .npz in SMPL's layout, or 'none' for no meshes"),
    window: int = typer.Option(30, min=2, help="frames per window"),
    stride: int = typer.Option(25, min=1, help="frames between window starts (window - stride frames shared)"),
    fps: float = typer.Option(6.0, help="sampling rate inside a window"),
    long_side: int = typer.Option(518, help="model input, long side (multiple of 14)"),
    short_side: int = typer.Option(294, help="model input, short side (multiple of 14)"),
    people: str = typer.Option("yolo", help="person detector: yolo (paper), hog (lite), frame (whole frame)"),
    people_weights: str = typer.Option("yolo11n", help="YOLO weights: registry name or .pt file"),
    masks: str = typer.Option("box", help="person mask: mediapipe (lite), sam2 (paper) or box"),
    start: Optional[float] = typer.Option(None, help="start time (s)"),
    end: Optional[float] = typer.Option(None, help="end time (s)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    view: bool = typer.Option(False, "--view", help="open the Rerun viewer on the recording"),
) -> None:
    """Reconstruct the scene, cameras and the person's SMPL body from a video, in one world frame and scale."""
    from tasks.probe import UnreadableVideo

    try:
        config = InferConfig(window=window, stride=stride, fps=fps, long_side=long_side, short_side=short_side,
                             people=people, people_weights=people_weights, masks=masks, start_s=start, end_s=end,
                             device=device)
    except ValueError as e:
        console.print(str(e), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if tiny_random:
        console.print("[yellow]--tiny-random: a tiny model with random weights; the output is meaningless[/yellow]")
    try:
        with tempfile.TemporaryDirectory(prefix="unish-body-") as scratch:
            body = load_body_model(body_model, tiny_random, Path(scratch))
            model = load_model(weights, tiny_random, device)
            result = run_infer(video, out, config, model, body)
    except (FileNotFoundError, UnreadableVideo, ValueError, RuntimeError) as e:
        console.print(str(e), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"{result.frames} frames from {result.windows} windows, metric scale {result.metric_scale:.4f}")
    for kind, path in result.files.items():
        console.print(f"  {kind}: {path}", markup=False, highlight=False)
    if view:
        open_viewer(result.files["rrd"])
