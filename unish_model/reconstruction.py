"""One video's reconstruction on disk, as `unish infer` writes it from the window runner's steps
(`unish_model.runner`).

While the windows run, `spool_step` appends each window's new frames to a `FrameSpool` (memory stays at one
window whatever the video's length): points, cameras and SMPL moved into the world frame by the window's
stitching similarity, lengths in world units.  At the end, with the one metric scale known, `write_outputs` makes a
second pass over the spool: world SMPL (`runner.smpl_to_world`), then `recording.rrd` (Rerun: points, cameras,
person mask, SMPL on a timeline, per-window plots, and its saved layout `unish_model.viewer.infer_blueprint`),
`points.ply` (fused, confidence-masked, voxel-subsampled), `scene.glb` (SMPL meshes and camera frusta as a glTF
animation, one keyframe per kept frame) and `unish.npz` (every array in metres, documented in `ARRAY_DOC`),
through the writers of `unish_model.export`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from numpy.typing import NDArray

from unish_model.export import (FrameSpool, GlbFrame, NpzWriter, RrdWriter, VoxelFusion, subsample_mask,
                                vertex_normals, write_glb, write_ply)
from unish_model.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from unish_model.runner import WindowRunner, WindowStep, smpl_to_world
from unish_model.stitch import similarity_matrix, transform_poses
from unish_model.viewer import infer_blueprint

__all__ = ["ARRAY_DOC", "LENGTHS", "OutputOptions", "spool_step", "window_arrays", "write_outputs"]

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

# spooled arrays that carry a length (multiplied by the metric scale at the end); c2w: translation only
LENGTHS = ("world_points", "local_points", "depth", "shift", "trans_cam")


@dataclass(frozen=True)
class OutputOptions:
    fps: float = 6.0  # the sampling rate the frames came at (frame time = index / fps from the start)
    ply_conf: float = 0.1  # confidence a pixel needs for the fused cloud
    voxel_size: float | None = None  # metres; None: 1/200 of the first frame's median depth
    max_cloud_points: int = 1_000_000
    rrd_points_per_frame: int = 20_000
    glb_max_frames: int = 60


def spool_step(spool: FrameSpool, step: WindowStep, person_box: NDArray[np.floating],
               person_present: NDArray[np.bool_], person_mask: NDArray[np.bool_],
               frame_times_s: NDArray[np.floating]) -> None:
    """Append the window's new frames (`step.new`) to the spool, in the world frame and world units; the person
    arrays (T, ...) cover the whole window."""
    pred, sim, new = step.prediction, step.stitched.to_global, step.new
    assert pred.local_points is not None and pred.depth is not None and pred.point_conf is not None \
        and pred.masks is not None and pred.intrinsics is not None and pred.focal is not None \
        and pred.shift is not None and pred.pose_cam is not None and pred.betas is not None \
        and pred.trans_cam is not None, "the outputs need every array UniSHPredictor gives"
    s = sim.scale
    spool.append("images", step.window.images[new])
    spool.append("world_points", sim.apply(pred.world_points[new]).astype(np.float32))
    spool.append("local_points", (pred.local_points[new] * s).astype(np.float32))
    spool.append("depth", (pred.depth[new] * s).astype(np.float32))
    spool.append("point_conf", pred.point_conf[new].astype(np.float32))
    spool.append("masks", pred.masks[new])
    spool.append("person_box", person_box[new].astype(np.float32))
    spool.append("person_present", person_present[new])
    spool.append("person_mask", person_mask[new])
    spool.append("c2w", transform_poses(sim, pred.c2w[new]).astype(np.float32))
    spool.append("intrinsics", pred.intrinsics[new].astype(np.float32))
    spool.append("focal", pred.focal[new].astype(np.float32))
    spool.append("shift", (pred.shift[new] * s).astype(np.float32))
    spool.append("pose_cam", pred.pose_cam[new].astype(np.float32))
    spool.append("betas", pred.betas[new].astype(np.float32))
    spool.append("trans_cam", (pred.trans_cam[new] * s).astype(np.float32))
    spool.append("frame_index", step.window.frame_index[new].astype(np.int64))
    spool.append("frame_time_s", np.asarray(frame_times_s, np.float64)[new])
    spool.append("window_index", np.full(int(new.sum()), step.index, np.int32))


def window_arrays(runner: WindowRunner) -> dict[str, Any]:
    """The per-window arrays of `unish.npz` and the metric scale, once every window ran."""
    results = runner.results
    return {
        "window_start_frame": np.asarray(runner.starts, np.int64),
        "window_similarity": np.stack([similarity_matrix(r.to_global) for r in results]),
        "window_metric_scale": np.asarray(runner.own_scales, np.float64),
        "window_metres_per_unit": np.asarray([r.metres_per_unit for r in results], np.float64),
        "window_overlap": np.asarray([r.overlap for r in results], np.int32),
        "window_inlier_share": np.asarray([r.inlier_share for r in results], np.float64),
        "window_residual_rms": np.asarray([r.residual_rms for r in results], np.float64),
        "metric_scale": np.float64(runner.metric_scale()),
    }


def _frame_chunks(spool: FrameSpool, size: int) -> Iterator[tuple[int, int]]:
    n = spool.frames("images")
    for a in range(0, n, size):
        yield a, min(n, a + size)


def write_outputs(out: Path, spool: FrameSpool, metres: float, per_window: dict[str, Any], body: Any,
                  options: OutputOptions, video_path: str) -> dict[str, Path]:
    """Second pass over the spool: world SMPL, .rrd, fused cloud, .glb, then the .npz (array by array)."""
    n = spool.frames("images")
    height, width = spool.entries["images"].frame_shape[:2]
    faces = None if body is None else body.faces.numpy().astype(np.int32)
    glb_step = max(1, math.ceil(n / options.glb_max_frames))
    glb_frames: list[GlbFrame] = []
    rrd = RrdWriter(out / "recording.rrd", faces=faces, blueprint=infer_blueprint())
    fusion: VoxelFusion | None = None
    for a, b in _frame_chunks(spool, 16):
        chunk = {name: spool.read(name, a, b) for name in (
            "images", "world_points", "point_conf", "masks", "c2w", "intrinsics", "pose_cam", "trans_cam", "shift",
            "betas", "frame_index", "frame_time_s", "person_mask")}
        c2w = chunk["c2w"].astype(np.float64)
        c2w[:, :3, 3] *= metres
        spool.append("c2w_metric", c2w.astype(np.float32))
        pose_cam = torch.from_numpy(chunk["pose_cam"].astype(np.float64)).reshape(b - a, 24, 3)
        rot_cam = axis_angle_to_matrix(pose_cam)
        shift = chunk["shift"].astype(np.float64) * metres
        # the official trans_cam carries + shift in z; the world frame uses the unshifted one (like the points)
        unshifted = chunk["trans_cam"].astype(np.float64) * metres
        unshifted[:, 2] -= shift
        root, trans_world = smpl_to_world(c2w, rot_cam[:, 0].numpy(), unshifted, chunk["betas"], body)
        root_world = torch.from_numpy(root)
        pose_world = torch.cat([matrix_to_axis_angle(root_world)[:, None], pose_cam[:, 1:]], 1).reshape(b - a, 72)
        spool.append("pose_world", pose_world.float().numpy())
        vertices = None
        if body is not None:
            betas = torch.from_numpy(chunk["betas"])
            posed = body(root_world.float(), rot_cam[:, 1:].float(), betas, torch.from_numpy(trans_world).float())
            vertices, joints = posed.vertices.numpy(), posed.joints.numpy()
        else:  # no body model: no meshes, no joints
            joints = np.zeros((b - a, 24, 3), np.float32)
        spool.append("trans_world", trans_world.astype(np.float32))
        spool.append("joints_world", joints.astype(np.float32))

        for j in range(b - a):
            frame_world = chunk["world_points"][j] * np.float32(metres)
            good = chunk["masks"][j] & (chunk["point_conf"][j] >= options.ply_conf)
            if fusion is None:
                dist = np.linalg.norm(frame_world[good] - c2w[j, :3, 3], axis=1)
                median = float(np.median(dist)) if len(dist) else 1.0
                fusion = VoxelFusion(options.voxel_size or max(median / 200, 1e-6),
                                     max_points=options.max_cloud_points)
            flat = frame_world.reshape(-1, 3)
            rgb = chunk["images"][j].reshape(-1, 3)
            fusion.add(flat[good.reshape(-1)], rgb[good.reshape(-1)])
            pick = subsample_mask(good, options.rrd_points_per_frame)
            v = None if vertices is None else vertices[j]
            rrd.log_frame(int(chunk["frame_index"][j]), float(chunk["frame_time_s"][j]), c2w[j],
                          chunk["intrinsics"][j], image=chunk["images"][j], points=flat[pick], colors=rgb[pick],
                          vertices=v, vertex_normals=None if v is None else vertex_normals(v, faces),
                          mask=chunk["person_mask"][j])
            if (a + j) % glb_step == 0:
                # copies: a view would keep the whole chunk's arrays alive until the end
                glb_frames.append(GlbFrame(a + j, c2w[j].copy(), chunk["intrinsics"][j].astype(np.float64),
                                           None if v is None else v.copy(),
                                           time_s=float(chunk["frame_index"][j]) / options.fps))
    assert fusion is not None
    cloud = fusion.result()
    trajectory = spool.read("c2w_metric")[:, :3, 3].astype(np.float64)
    rrd.log_static(fused=cloud, trajectory=trajectory,
                   info={"video": video_path, "frames": n, "metric_scale": float(metres)})
    index_of = spool.read("frame_index")
    time_of = dict(zip(index_of.tolist(), spool.read("frame_time_s").tolist()))
    starts = np.asarray(per_window["window_start_frame"], np.int64)
    rrd.log_windows(starts, per_window["window_metres_per_unit"], float(metres), per_window["window_residual_rms"],
                    per_window["window_inlier_share"], [time_of.get(int(f), np.nan) for f in starts])
    rrd.close()
    files = {"rrd": out / "recording.rrd", "ply": write_ply(out / "points.ply", *cloud)}
    extent = float(np.linalg.norm(trajectory.max(0) - trajectory.min(0))) if n > 1 else 0.0
    depth_scale = float(np.nanmedian(spool.read("depth", 0, 1))) * metres
    frustum = max(0.05, min(0.2 * max(depth_scale, 1e-3), 0.3 * extent if extent > 0 else 1e9))
    files["glb"] = write_glb(out / "scene.glb", glb_frames, faces, (height, width), points=cloud,
                             frustum_depth=frustum, max_frames=options.glb_max_frames, frame_count=len(glb_frames))

    with NpzWriter(out / "unish.npz") as npz:
        for name, entry in spool.entries.items():
            if name in ("c2w",):
                continue
            target = "c2w" if name == "c2w_metric" else name
            scale = metres if name in LENGTHS else None
            npz.add_chunks(target, (entry.frames, *entry.frame_shape), entry.dtype,
                           spool.chunks(name, 16, scale))
        for name, value in per_window.items():
            npz.add(name, value)
        npz.add("smpl_faces", faces if faces is not None else np.zeros((0, 3), np.int32))
        npz.add("fps", np.float64(options.fps))
        npz.add("array_doc", np.array([f"{k}: {v}" for k, v in ARRAY_DOC.items()]))
    files["npz"] = out / "unish.npz"
    return files
