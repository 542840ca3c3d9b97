"""What the Rerun recordings of unish hold, and how the viewer lays them out (saved blueprints).

Two recordings:
- `unish infer`'s `recording.rrd` (written by `unish_model.export.RrdWriter` from `unish_model.reconstruction`):
  entities `INFER_ENTITIES`, opened with `infer_blueprint()`: the 3D world (this frame's points, the fused cloud,
  the camera with its frustum and image, the trajectory, the SMPL mesh) beside the frame with the person mask over
  it, and two plots over the windows: the metric scale (each window's estimate and the one applied) and the
  stitching (RMS residual and share of inliers of each window's fit).
- `unish view RUN`'s recording of one curated clip (`write_clip_recording`): entities `CLIP_ENTITIES`, opened
  with `clip_blueprint()`: the depth back-projected with the clip's intrinsics as a point cloud in the camera's
  frame (3D), the frame with the person box, mask and keypoints on SMPL's skeleton (2D), and the depth map (2D),
  so pseudo-labels can be checked in 3D, frame by frame.

Both use the timelines `frame` (index) and `time` (seconds of the source video).  Axes are OpenCV's (x right,
y down, z forward: `ViewCoordinates.RDF`).  Torch-free except for SMPL's kinematic tree (`unish_model.body`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INFER_ENTITIES", "INFER_VIEWS", "CLIP_ENTITIES", "CLIP_VIEWS", "infer_blueprint", "clip_blueprint",
           "skeleton_context", "write_clip_recording", "MASK_CLASSES"]

# entity path -> what it holds (the README's table; tests check a recording against it)
INFER_ENTITIES: dict[str, str] = {
    "/world": "the world frame's axes (OpenCV: RDF), static",
    "/world/points": "this frame's point map (confident pixels), coloured by the frame",
    "/world/fused": "the fused cloud of the whole video (as points.ply), static",
    "/world/trajectory": "the camera path, static",
    "/world/camera": "this frame's camera pose (camera to world)",
    "/world/camera/image": "the pinhole (intrinsics, drawn as the frustum) and the frame",
    "/world/camera/image/mask": "the person mask (segmentation over the frame)",
    "/world/smpl": "the SMPL mesh in the world (faces static, vertices per frame)",
    "/plots/metric_scale/window": "each window's metric scale estimate (metres per world unit), at its first frame",
    "/plots/metric_scale/applied": "the one metric scale applied to every length (the windows' median)",
    "/plots/stitching/residual_rms": "each window's RMS alignment residual on the shared frames (world units)",
    "/plots/stitching/inlier_share": "each window's share of shared-frame pixel pairs the robust fit kept",
    "/info": "the video, frame count and metric scale, static",
}
# view name -> (Rerun view class, origin)
INFER_VIEWS: dict[str, tuple[str, str]] = {
    "World": ("3D", "/world"),
    "Frame and person mask": ("2D", "/world/camera/image"),
    "Metric scale": ("TimeSeries", "/plots/metric_scale"),
    "Stitching residuals": ("TimeSeries", "/plots/stitching"),
}

CLIP_ENTITIES: dict[str, str] = {
    "/clip": "the camera's frame (OpenCV: RDF), static",
    "/clip/points": "the depth back-projected with the intrinsics, coloured by the frame",
    "/clip/camera": "the pinhole (the depth label's intrinsics, else a default focal) and the frame",
    "/clip/camera/mask": "the person mask",
    "/clip/camera/box": "the people stage's tracked box",
    "/clip/camera/keypoints": "the 2D keypoints on SMPL's skeleton (confidence 0: not drawn)",
    "/clip/depth": "the depth map (metres)",
    "/info": "the clip's key, source, times and label provenance, static",
}
CLIP_VIEWS: dict[str, tuple[str, str]] = {
    "Depth as points": ("3D", "/clip"),
    "Frame and labels": ("2D", "/clip/camera"),
    "Depth": ("2D", "/clip/depth"),
}

MASK_CLASSES = ((0, "background", (0, 0, 0, 0)), (1, "person", (0, 200, 255, 150)))


# what a view leaves out of its origin's subtree (a depth image has no pinhole above it: not drawable in 3D)
_EXCLUDED = {"Depth as points": ["/clip/depth"]}


def _views(spec: dict[str, tuple[str, str]]) -> dict[str, Any]:
    import rerun.blueprint as rrb

    kinds = {"3D": rrb.Spatial3DView, "2D": rrb.Spatial2DView, "TimeSeries": rrb.TimeSeriesView}
    return {name: kinds[kind](name=name, origin=origin,
                              contents=["$origin/**", *(f"- {e}" for e in _EXCLUDED.get(name, []))])
            for name, (kind, origin) in spec.items()}


def infer_blueprint() -> Any:
    """The layout `recording.rrd` opens with: the world on the left, the frame and the two plots on the right."""
    import rerun.blueprint as rrb

    v = _views(INFER_VIEWS)
    layout = rrb.Horizontal(
        v["World"],
        rrb.Vertical(v["Frame and person mask"], v["Metric scale"], v["Stitching residuals"], row_shares=[2, 1, 1]),
        column_shares=[3, 2])
    return rrb.Blueprint(layout, rrb.BlueprintPanel(expanded=False), rrb.SelectionPanel(expanded=False),
                         rrb.TimePanel(expanded=True))


def clip_blueprint() -> Any:
    import rerun.blueprint as rrb

    v = _views(CLIP_VIEWS)
    layout = rrb.Horizontal(v["Depth as points"], rrb.Vertical(v["Frame and labels"], v["Depth"]),
                            column_shares=[3, 2])
    return rrb.Blueprint(layout, rrb.BlueprintPanel(expanded=False), rrb.SelectionPanel(expanded=False),
                         rrb.TimePanel(expanded=True))


def mask_context() -> Any:
    import rerun as rr

    return rr.AnnotationContext([rr.AnnotationInfo(id=i, label=name, color=colour) for i, name, colour in MASK_CLASSES])


def skeleton_context() -> Any:
    """Class 0 "person": SMPL's 24 joints by name, connected child to parent."""
    import rerun as rr

    from unish_model.body.model import SMPL_JOINT_NAMES, SMPL_PARENTS

    return rr.AnnotationContext([rr.ClassDescription(
        info=rr.AnnotationInfo(id=0, label="person", color=(255, 255, 255)),
        keypoint_annotations=[rr.AnnotationInfo(id=i, label=n) for i, n in enumerate(SMPL_JOINT_NAMES)],
        keypoint_connections=[(j, p) for j, p in enumerate(SMPL_PARENTS) if p >= 0])])


def _intrinsics(labels: dict[str, Any], t: int, h: int, w: int) -> tuple[np.ndarray, str]:
    k = labels.get("depth", {}).get("intrinsics")
    if k is not None:
        k = np.asarray(k, np.float64)
        if k.shape == (3, 3):
            k = np.broadcast_to(k, (t, 3, 3))
        if k.shape == (t, 3, 3) and np.isfinite(k).all():
            if np.all(np.abs(k[:, 0, 2]) <= 2) and np.all(np.abs(k[:, 1, 2]) <= 2):  # normalised (MoGe's): to pixels
                k = k * np.array([w, h, 1.0])[None, :, None]
            return k.astype(np.float32), "the depth label's"
    f = float(np.hypot(w, h))  # a 53 degree diagonal field of view, as the keypoints stage assumes without depth
    default = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float32)
    return np.repeat(default[None], t, 0), "a default (the image diagonal as focal)"


def write_clip_recording(clip: Any, path: str | Path, max_points: int = 60_000) -> Path:
    """One curated clip (`shards.sample.ClipSample`) as a Rerun recording with `clip_blueprint()`."""
    import json

    import rerun as rr

    from shards import depth_codec
    from shards.mask_codec import unpack_masks

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = clip.frames
    t, h, w = frames.shape[:3]
    labels = clip.labels
    k, k_source = _intrinsics(labels, t, h, w)
    depth = None
    if depth_codec.has_depth(labels.get("depth")):
        depth = depth_codec.from_entries(labels["depth"], clip.key)
    masks = unpack_masks(labels["masks"]) if "mask_bits" in labels.get("masks", {}) else None
    people, kp = labels.get("people", {}), labels.get("keypoints", {})
    times = clip.meta.get("frame_times_s", [])

    rec = rr.RecordingStream("unish-clip", recording_id=clip.key)
    rec.save(path)
    rec.send_blueprint(clip_blueprint(), make_active=True, make_default=True)
    rec.log("clip", rr.ViewCoordinates.RDF, static=True)
    rec.log("clip/camera/mask", mask_context(), static=True)
    rec.log("clip/camera/keypoints", skeleton_context(), static=True)
    info = {"key": clip.key, "source": clip.meta.get("source"), "start_s": clip.meta.get("start_s"),
            "end_s": clip.meta.get("end_s"), "intrinsics": k_source,
            "depth": "decoded" if depth is not None else "none in this clip",
            "labels": clip.meta.get("labels", {})}
    rec.log("info", rr.TextDocument("```json\n" + json.dumps(info, indent=2, default=str) + "\n```",
                                    media_type="text/markdown"), static=True)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(t):
        rec.set_time("frame", sequence=i)
        if i < len(times):
            rec.set_time("time", duration=float(times[i]))
        rec.log("clip/camera", rr.Pinhole(image_from_camera=k[i], resolution=[w, h], camera_xyz=rr.ViewCoordinates.RDF,
                                          image_plane_distance=0.3))
        rec.log("clip/camera", rr.Image(frames[i]).compress(85))
        if masks is not None:
            rec.log("clip/camera/mask", rr.SegmentationImage(masks[i].astype(np.uint8), opacity=0.5))
        if "box" in people and np.isfinite(people["box"][i]).all():
            b = np.asarray(people["box"][i], np.float32)
            rec.log("clip/camera/box", rr.Boxes2D(array=b, array_format=rr.Box2DFormat.XYXY, labels="person"))
        else:
            rec.log("clip/camera/box", rr.Clear(recursive=False))
        if "joints2d" in kp and (not len(kp.get("present", [])) or bool(kp["present"][i])):
            conf = np.asarray(kp.get("confidence", np.ones((t, len(kp["joints2d"][i])))))[i]
            ids = np.flatnonzero(conf > 0)
            rec.log("clip/camera/keypoints", rr.Points2D(np.asarray(kp["joints2d"][i], np.float32)[ids],
                                                         keypoint_ids=ids, class_ids=0, radii=3, show_labels=False))
        else:
            rec.log("clip/camera/keypoints", rr.Clear(recursive=False))
        if depth is not None:
            d, valid = depth.depth[i], depth.valid[i]
            rec.log("clip/depth", rr.DepthImage(d, meter=1.0, colormap="turbo"))
            idx = np.flatnonzero(valid)
            idx = idx[:: max(1, int(np.ceil(len(idx) / max_points)))]
            z = d.reshape(-1)[idx]
            x = (xx.reshape(-1)[idx] + 0.5 - k[i, 0, 2]) / k[i, 0, 0] * z
            y = (yy.reshape(-1)[idx] + 0.5 - k[i, 1, 2]) / k[i, 1, 1] * z
            rec.log("clip/points", rr.Points3D(np.stack([x, y, z], 1), colors=frames[i].reshape(-1, 3)[idx],
                                               radii=-1.5))
    rec.flush()
    rec.disconnect()
    return path
