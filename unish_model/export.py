"""Writers for UniSH results: `.npz` (plain arrays), fused point cloud `.ply`, `.glb` scene, Rerun `.rrd`.

Everything streams: arrays can be written chunk by chunk into the `.npz` (`NpzWriter.add_chunks`), per-frame
results can be spooled to disk (`FrameSpool`) and read back in frame ranges, the point cloud is fused voxel by
voxel (`VoxelFusion`, bounded by `max_points`), and the `.rrd` is logged frame by frame to a file sink
(`RrdWriter`).  Only the `.glb` is built in memory, from at most `max_frames` frames.

Conventions: world and camera frames use OpenCV axes (x right, y down, z forward); poses are 4x4
camera-to-world; intrinsics are in pixels.  The `.npz`, `.ply` and `.rrd` keep these axes (the `.rrd` declares
them with `ViewCoordinates.RDF`); the `.glb` is turned into glTF's y-up axes by (x, y, z) -> (x, -y, -z).
What `unish infer` writes with them (which arrays, in which units) is `unish_model.reconstruction`.
"""
from __future__ import annotations

import json
import shutil
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "NpzWriter", "write_npz", "FrameSpool", "VoxelFusion", "write_ply", "vertex_normals", "frustum_segments",
    "GlbFrame",
    "write_glb", "add_frame_animation", "RrdWriter", "OPENCV_TO_GLTF", "subsample_mask",
]

OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0])


# ----------------------------------------------------------------------------------------------- npz


class NpzWriter:
    """An uncompressed `.npz` written entry by entry (ZIP64), readable by `np.load(allow_pickle=False)`.

    `add(name, array)` writes a whole array; `add_chunks(name, shape, dtype, chunks)` streams one whose leading
    axis arrives in pieces.  Object arrays are refused (they would need pickle)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.names: list[str] = []

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(ok=exc_type is None)

    def add(self, name: str, array: ArrayLike) -> None:
        a = np.asarray(array)  # fixed-width strings (dtype U/S) are plain arrays too
        self.add_chunks(name, a.shape, a.dtype, [a] if a.ndim else [a.reshape(1)], scalar=a.ndim == 0)

    def add_chunks(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray],
                   scalar: bool = False) -> None:
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise TypeError(f"npz entry {name!r}: object arrays need pickle; store plain arrays")
        if name in self.names:
            raise ValueError(f"npz entry {name!r} written twice")
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        expected = int(np.prod(shape, dtype=np.int64))
        written = 0
        with self._zip.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in chunks:
                c = np.ascontiguousarray(chunk, dtype=dtype)
                if not scalar and c.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"npz entry {name!r}: chunk of shape {c.shape} for an array of shape {shape}")
                f.write(c.tobytes())
                written += c.size
        if written != expected:
            raise ValueError(f"npz entry {name!r}: wrote {written} values, the shape {shape} holds {expected}")
        self.names.append(name)

    def close(self, ok: bool = True) -> None:
        self._zip.close()
        if ok:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_npz(path: str | Path, arrays: Mapping[str, ArrayLike]) -> Path:
    with NpzWriter(path) as w:
        for k, v in arrays.items():
            w.add(k, v)
    return Path(path)


@dataclass
class _SpoolEntry:
    dtype: np.dtype
    frame_shape: tuple[int, ...]
    frames: int = 0


class FrameSpool:
    """Per-frame arrays appended to raw files in a folder and read back in frame ranges: memory stays at one
    window (or one chunk) whatever the video's length."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        shutil.rmtree(self.folder, ignore_errors=True)  # a crashed run's leftovers would be appended to
        self.folder.mkdir(parents=True)
        self.entries: dict[str, _SpoolEntry] = {}

    def append(self, name: str, frames: ArrayLike) -> None:
        """frames (T, ...) for T new frames of `name`."""
        a = np.ascontiguousarray(frames)
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries[name] = _SpoolEntry(a.dtype, tuple(a.shape[1:]))
        elif a.dtype != entry.dtype or tuple(a.shape[1:]) != entry.frame_shape:
            raise ValueError(f"spool {name!r}: got {a.dtype} {a.shape[1:]}, holds {entry.dtype} {entry.frame_shape}")
        with (self.folder / f"{name}.bin").open("ab") as f:
            f.write(a.tobytes())
        entry.frames += a.shape[0]

    def frames(self, name: str) -> int:
        return self.entries[name].frames

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) of `name`, read with plain file reads (not a memory map, whose touched pages
        would stay in the process's resident memory for the whole pass)."""
        e = self.entries[name]
        stop = e.frames if stop is None else min(stop, e.frames)
        start = min(max(start, 0), stop)
        per_frame = int(np.prod(e.frame_shape, dtype=np.int64))
        if stop == start or per_frame == 0:
            return np.zeros((stop - start, *e.frame_shape), e.dtype)
        with (self.folder / f"{name}.bin").open("rb") as f:
            f.seek(start * per_frame * e.dtype.itemsize)
            data = np.fromfile(f, dtype=e.dtype, count=(stop - start) * per_frame)
        return data.reshape(stop - start, *e.frame_shape)

    def chunks(self, name: str, frames_per_chunk: int = 16, scale: float | None = None) -> Iterator[np.ndarray]:
        for a in range(0, self.entries[name].frames, frames_per_chunk):
            chunk = self.read(name, a, a + frames_per_chunk)
            yield chunk if scale is None else (chunk * scale).astype(chunk.dtype)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- point cloud


def subsample_mask(mask: NDArray[np.bool_], max_points: int) -> NDArray[np.int64]:
    """Flat indices of the True pixels, thinned by a fixed stride to at most max_points (deterministic)."""
    idx = np.flatnonzero(mask)
    step = max(1, int(np.ceil(len(idx) / max(max_points, 1))))
    return idx[::step]


@dataclass
class VoxelFusion:
    """Fuses coloured points into one point per occupied voxel (mean position and colour).

    Memory is bounded: when more than `max_points` voxels are occupied the voxel size doubles and the voxels
    merge.  Points are buffered and merged every `merge_every` points."""

    voxel_size: float
    max_points: int = 1_000_000
    merge_every: int = 250_000
    _keys: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _xyz: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    _rgb: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    _count: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    _buffer: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    _buffered: int = 0

    def __post_init__(self) -> None:
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {self.voxel_size}")

    def add(self, xyz: ArrayLike, rgb: ArrayLike) -> None:
        p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        c = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
        ok = np.isfinite(p).all(1)
        self._buffer.append((p[ok], c[ok]))
        self._buffered += int(ok.sum())
        if self._buffered >= self.merge_every:
            self._merge()

    def _key(self, xyz: np.ndarray) -> NDArray[np.int64]:
        q = np.floor(xyz / self.voxel_size).astype(np.int64) + (1 << 20)
        if (q < 0).any() or (q >= (1 << 21)).any():
            raise ValueError("points span more than 2**21 voxels per axis: raise voxel_size")
        return (q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2]

    def _merge(self) -> None:
        if self._buffer:
            p = np.concatenate([b[0] for b in self._buffer])
            c = np.concatenate([b[1] for b in self._buffer])
            self._buffer, self._buffered = [], 0
            self._combine(np.concatenate([self._keys, self._key(p)]), np.concatenate([self._xyz, p]),
                          np.concatenate([self._rgb, c]), np.concatenate([self._count, np.ones(len(p))]))
        while len(self._keys) > self.max_points:
            self.voxel_size *= 2
            means = self._xyz / self._count[:, None]
            self._combine(self._key(means), self._xyz, self._rgb, self._count)

    def _combine(self, keys: np.ndarray, xyz_sum: np.ndarray, rgb_sum: np.ndarray, count: np.ndarray) -> None:
        # sums and counts add up per voxel; xyz/rgb hold sums so merging stays exact
        uniq, inv = np.unique(keys, return_inverse=True)
        self._keys = uniq
        self._xyz = np.stack([np.bincount(inv, xyz_sum[:, k], len(uniq)) for k in range(3)], 1)
        self._rgb = np.stack([np.bincount(inv, rgb_sum[:, k], len(uniq)) for k in range(3)], 1)
        self._count = np.bincount(inv, count, len(uniq))

    def result(self) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
        """(N, 3) float32 mean positions and (N, 3) uint8 mean colours."""
        self._merge()
        if len(self._keys) == 0:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        xyz = (self._xyz / self._count[:, None]).astype(np.float32)
        rgb = np.clip(np.round(self._rgb / self._count[:, None]), 0, 255).astype(np.uint8)
        return xyz, rgb


def write_ply(path: str | Path, xyz: ArrayLike, rgb: ArrayLike | None = None) -> Path:
    """Binary little-endian PLY point cloud (float32 x y z, uchar red green blue)."""
    p = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    c = np.full((len(p), 3), 200, np.uint8) if rgb is None else np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    if len(c) != len(p):
        raise ValueError(f"{len(p)} points but {len(c)} colours")
    rec = np.zeros(len(p), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                  ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = p[:, 0], p[:, 1], p[:, 2]
    rec["red"], rec["green"], rec["blue"] = c[:, 0], c[:, 1], c[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\ncomment unish fused point cloud (OpenCV axes, metres)\n"
              f"element vertex {len(p)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = Path(path)
    with path.open("wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())
    return path


# ----------------------------------------------------------------------------------------------- meshes, cameras, glb


def vertex_normals(vertices: ArrayLike, faces: ArrayLike) -> NDArray[np.float32]:
    """Area-weighted unit vertex normals (V, 3) of a triangle mesh."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    idx = f.reshape(-1)
    n = np.stack([np.bincount(idx, np.repeat(face_n[:, c], 3), len(v)) for c in range(3)], 1)
    return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def frustum_segments(c2w: ArrayLike, intrinsics: ArrayLike, image_hw: tuple[int, int], depth: float
                     ) -> NDArray[np.float64]:
    """World-space line segments (8, 2, 3) of a camera frustum cut at `depth`: 4 edges from the centre to the
    image corners and the 4 sides of the image rectangle (OpenCV camera axes)."""
    pose = np.asarray(c2w, dtype=np.float64)
    k = np.asarray(intrinsics, dtype=np.float64)
    h, w = image_hw
    pix = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    cam = np.stack([(pix[:, 0] - k[0, 2]) / k[0, 0], (pix[:, 1] - k[1, 2]) / k[1, 1], np.ones(4)], 1) * depth
    corners = cam @ pose[:3, :3].T + pose[:3, 3]
    centre = pose[:3, 3]
    edges = [(centre, corners[i]) for i in range(4)] + [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    return np.asarray(edges)


@dataclass
class GlbFrame:
    index: int
    c2w: NDArray[np.float64]  # (4, 4)
    intrinsics: NDArray[np.float64]  # (3, 3)
    vertices: NDArray[np.float32] | None = None  # (V, 3) SMPL vertices, world frame
    time_s: float | None = None  # the frame's time in the animation (None: index / 6 fps)


def _time_colour(t: float) -> NDArray[np.uint8]:
    # blue (early) to orange (late)
    a, b = np.array([60, 110, 220]), np.array([240, 140, 40])
    return np.append((a + (b - a) * t).round(), 255).astype(np.uint8)


def write_glb(path: str | Path, frames: Iterable[GlbFrame], faces: ArrayLike | None, image_hw: tuple[int, int],
              points: tuple[ArrayLike, ArrayLike] | None = None, frustum_depth: float = 0.3,
              max_frames: int = 60, frame_count: int | None = None) -> Path:
    """A glTF binary scene: per kept frame a node `smpl_{i:05d}` (SMPL mesh) and `camera_{i:05d}` (frustum
    lines), the camera path `trajectory`, and the fused cloud `points`; colours run blue->orange over time.

    The frames play as an animation (`frames`, one keyframe per kept frame at its `time_s`, see
    `add_frame_animation`): a viewer that plays glTF animations shows one body and one camera at a time; one that
    does not shows the first frame's.  Frames are kept every ceil(frame_count / max_frames) (frame_count: the
    number of frames `frames` yields, if known) so the file stays small for long videos.  Geometry is turned into
    glTF's y-up axes."""
    import trimesh

    scene = trimesh.Scene()
    step = 1 if frame_count is None else max(1, int(np.ceil(frame_count / max_frames)))
    centres = []
    kept = 0
    total = max(1, (frame_count or 1) - 1)
    keyframes: list[tuple[float, list[str]]] = []
    for n, fr in enumerate(frames):
        centres.append(np.asarray(fr.c2w, dtype=np.float64)[:3, 3])
        if n % step or kept >= max_frames:
            continue
        kept += 1
        colour = _time_colour(min(1.0, n / total) if frame_count else 0.0)
        seg = frustum_segments(fr.c2w, fr.intrinsics, image_hw, frustum_depth) @ OPENCV_TO_GLTF.T
        path3d = trimesh.load_path(seg)
        path3d.colors = np.tile(colour, (len(path3d.entities), 1))
        names = [f"camera_{fr.index:05d}"]
        scene.add_geometry(path3d, node_name=names[0], geom_name=names[0])
        if fr.vertices is not None and faces is not None:
            mesh = trimesh.Trimesh(np.asarray(fr.vertices, dtype=np.float64) @ OPENCV_TO_GLTF.T,
                                   np.asarray(faces), process=False)
            mesh.visual.face_colors = colour
            names.append(f"smpl_{fr.index:05d}")
            scene.add_geometry(mesh, node_name=names[1], geom_name=names[1])
        keyframes.append((fr.index / 6.0 if fr.time_s is None else float(fr.time_s), names))
    if len(centres) >= 2:
        scene.add_geometry(trimesh.load_path(np.asarray(centres) @ OPENCV_TO_GLTF.T), node_name="trajectory",
                           geom_name="trajectory")
    if points is not None and len(np.asarray(points[0])):
        xyz = np.asarray(points[0], dtype=np.float64) @ OPENCV_TO_GLTF.T
        rgb = np.asarray(points[1], dtype=np.uint8)
        colours = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
        scene.add_geometry(trimesh.PointCloud(xyz, colors=colours), node_name="points", geom_name="points")
    path = Path(path)
    path.write_bytes(add_frame_animation(scene.export(file_type="glb"), keyframes))
    return path


def _glb_chunks(glb: bytes) -> tuple[dict[str, Any], bytes]:
    magic, version, _length = struct.unpack_from("<4sII", glb, 0)
    if magic != b"glTF" or version != 2:
        raise ValueError("not a glTF 2.0 binary")
    json_len, json_type = struct.unpack_from("<I4s", glb, 12)
    if json_type != b"JSON":
        raise ValueError("a GLB's first chunk must be JSON")
    tree = json.loads(glb[20:20 + json_len])
    binary = b""
    if 20 + json_len < len(glb):
        bin_len, bin_type = struct.unpack_from("<I4s", glb, 20 + json_len)
        if bin_type != b"BIN\0":
            raise ValueError("a GLB's second chunk must be BIN")
        binary = glb[28 + json_len:28 + json_len + bin_len]
    return tree, binary


def _glb_bytes(tree: dict[str, Any], binary: bytes) -> bytes:
    content = json.dumps(tree, separators=(",", ":")).encode()
    content += b" " * (-len(content) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<I4s", len(content), b"JSON") + content
    if binary:
        chunks += struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def add_frame_animation(glb: bytes, keyframes: list[tuple[float, list[str]]], name: str = "frames") -> bytes:
    """Make a GLB's per-frame nodes play over time: `keyframes` = [(time_s, node names shown at that time)].

    glTF core only (no extension): one animation `name` whose samplers share one input (the K keyframe times,
    seconds) and have STEP interpolation; sampler k's output is K scales, (1,1,1) at keyframe k and (0,0,0)
    elsewhere, and drives the `scale` of every node of keyframe k.  Without playing, the nodes of keyframe 0 keep
    scale 1 and all others are scaled to 0, so a static viewer shows the first frame, not every frame overlaid.
    The animation's `extras.frame_times_s` repeats the times."""
    if not keyframes:
        return glb
    tree, binary = _glb_chunks(glb)
    nodes = tree.get("nodes", [])
    by_name = {n.get("name"): i for i, n in enumerate(nodes)}
    data = bytearray(binary)
    views = tree.setdefault("bufferViews", [])
    accessors = tree.setdefault("accessors", [])

    def accessor(array: np.ndarray, kind: str, bounds: bool) -> int:
        data.extend(b"\0" * (-len(data) % 4))
        views.append({"buffer": 0, "byteOffset": len(data), "byteLength": array.nbytes})
        data.extend(array.tobytes())
        acc: dict[str, Any] = {"bufferView": len(views) - 1, "componentType": 5126, "count": len(array),
                               "type": kind}
        if bounds:
            acc["min"], acc["max"] = [float(array.min())], [float(array.max())]
        accessors.append(acc)
        return len(accessors) - 1

    times = np.asarray([t for t, _ in keyframes], np.float32)
    if np.any(np.diff(times) <= 0):
        raise ValueError("keyframe times must increase")
    time_acc = accessor(times, "SCALAR", bounds=True)
    samplers, channels = [], []
    for k, (_, names) in enumerate(keyframes):
        scales = np.zeros((len(keyframes), 3), np.float32)
        scales[k] = 1.0
        samplers.append({"input": time_acc, "output": accessor(scales, "VEC3", bounds=False),
                         "interpolation": "STEP"})
        for node_name in names:
            if node_name not in by_name:
                raise KeyError(f"the GLB has no node {node_name!r}")
            node = nodes[by_name[node_name]]
            matrix = node.pop("matrix", None)  # animated nodes carry TRS, never a matrix
            if matrix is not None and not np.allclose(matrix, np.eye(4).reshape(-1)):
                raise ValueError(f"node {node_name!r} has a transform: animate a parent node instead")
            if k:
                node["scale"] = [0.0, 0.0, 0.0]
            channels.append({"sampler": k, "target": {"node": by_name[node_name], "path": "scale"}})
    tree.setdefault("animations", []).append({"name": name, "samplers": samplers, "channels": channels,
                                              "extras": {"frame_times_s": times.tolist()}})
    tree["buffers"] = [{**(tree.get("buffers") or [{}])[0], "byteLength": len(data)}]
    return _glb_bytes(tree, bytes(data))


# ----------------------------------------------------------------------------------------------- rerun


class RrdWriter:
    """A Rerun recording streamed to an `.rrd` file (no viewer): timeline `frame` (sequence) and `time`
    (seconds); entities `world/points` (this frame's cloud), `world/camera` (pose) with `world/camera/image`
    (pinhole + image) and `world/camera/image/mask` (the person), `world/smpl` (mesh), static `world/fused` /
    `world/trajectory` at the end, and the per-window plots under `plots/` (`log_windows`).  `blueprint` (a
    `rerun.blueprint.Blueprint`, e.g. `unish_model.viewer.infer_blueprint()`) is saved in the file, active and
    default, so the viewer opens with that layout.  Entities and layout: `unish_model.viewer.INFER_ENTITIES`."""

    def __init__(self, path: str | Path, application_id: str = "unish", faces: ArrayLike | None = None,
                 jpeg_quality: int | None = 85, blueprint: Any | None = None) -> None:
        import rerun as rr

        from unish_model.viewer import mask_context

        self.rr = rr
        self.path = Path(path)
        self.jpeg_quality = jpeg_quality
        self.rec = rr.RecordingStream(application_id, recording_id=self.path.stem)
        self.rec.save(self.path)
        if blueprint is not None:
            self.rec.send_blueprint(blueprint, make_active=True, make_default=True)
        self.rec.log("world", rr.ViewCoordinates.RDF, static=True)
        self.rec.log("world/camera/image/mask", mask_context(), static=True)
        if faces is not None:
            self.rec.log("world/smpl", rr.Mesh3D.from_fields(triangle_indices=np.asarray(faces, dtype=np.uint32)),
                         static=True)

    def log_frame(self, index: int, time_s: float | None, c2w: ArrayLike, intrinsics: ArrayLike,
                  image: np.ndarray | None = None, points: ArrayLike | None = None, colors: ArrayLike | None = None,
                  vertices: ArrayLike | None = None, vertex_normals: ArrayLike | None = None,
                  image_hw: tuple[int, int] | None = None, mask: np.ndarray | None = None) -> None:
        rr, rec = self.rr, self.rec
        rec.set_time("frame", sequence=int(index))
        if time_s is not None and np.isfinite(time_s):
            rec.set_time("time", duration=float(time_s))
        pose = np.asarray(c2w, dtype=np.float32)
        rec.log("world/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
        hw = image_hw if image_hw is not None else (image.shape[:2] if image is not None else None)
        k = np.asarray(intrinsics, dtype=np.float32)
        # a camera with a non-positive or non-finite focal (a random model's) cannot be drawn: the viewer would
        # show neither its frustum nor its image; without the pinhole the frame still shows in 2D
        if hw is not None and np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0:
            rec.log("world/camera/image", rr.Pinhole(image_from_camera=k, resolution=[hw[1], hw[0]],
                                                     camera_xyz=rr.ViewCoordinates.RDF))
        if image is not None:
            img = rr.Image(np.asarray(image, dtype=np.uint8))
            rec.log("world/camera/image", img.compress(self.jpeg_quality) if self.jpeg_quality else img)
        if mask is not None:
            rec.log("world/camera/image/mask", rr.SegmentationImage(np.asarray(mask).astype(np.uint8), opacity=0.5))
        if points is not None:
            rec.log("world/points", rr.Points3D(np.asarray(points, dtype=np.float32),
                                                colors=None if colors is None else np.asarray(colors, np.uint8)))
        if vertices is not None:
            rec.log("world/smpl", rr.Mesh3D.from_fields(
                vertex_positions=np.asarray(vertices, dtype=np.float32),
                vertex_normals=None if vertex_normals is None else np.asarray(vertex_normals, dtype=np.float32)))

    def log_static(self, fused: tuple[ArrayLike, ArrayLike] | None = None, trajectory: ArrayLike | None = None,
                   info: Mapping[str, Any] | None = None) -> None:
        rr, rec = self.rr, self.rec
        if fused is not None and len(np.asarray(fused[0])):
            rec.log("world/fused", rr.Points3D(np.asarray(fused[0], np.float32), colors=np.asarray(fused[1], np.uint8)),
                    static=True)
        if trajectory is not None and len(np.asarray(trajectory)) >= 2:
            rec.log("world/trajectory", rr.LineStrips3D([np.asarray(trajectory, np.float32)]), static=True)
        if info:
            rec.log("info", rr.TextDocument(json.dumps(dict(info), indent=2, default=str), media_type="text/markdown"),
                    static=True)

    def log_windows(self, start_frames: ArrayLike, metres_per_unit: ArrayLike, metric_scale: float,
                    residual_rms: ArrayLike, inlier_share: ArrayLike, start_times_s: ArrayLike | None = None) -> None:
        """The per-window plots, one point per window at its first frame: the metric scale each window estimated
        and the one applied (`plots/metric_scale/*`), and the stitching fit's RMS residual and inlier share
        (`plots/stitching/*`)."""
        rr, rec = self.rr, self.rec
        series = {"plots/metric_scale/window": ("window estimate", (60, 110, 220)),
                  "plots/metric_scale/applied": ("applied (median)", (200, 200, 200)),
                  "plots/stitching/residual_rms": ("RMS residual", (220, 80, 60)),
                  "plots/stitching/inlier_share": ("inlier share", (60, 170, 90))}
        for entity, (name, colour) in series.items():
            rec.log(entity, rr.SeriesLines(names=name, colors=colour), rr.SeriesPoints(names=name, colors=colour,
                                                                                        marker_sizes=4), static=True)
        starts = np.asarray(start_frames, np.int64)
        times = None if start_times_s is None else np.asarray(start_times_s, np.float64)
        values = zip(starts, np.asarray(metres_per_unit, float), np.asarray(residual_rms, float),
                     np.asarray(inlier_share, float))
        for k, (start, estimate, rms, share) in enumerate(values):
            rec.set_time("frame", sequence=int(start))
            if times is not None and np.isfinite(times[k]):
                rec.set_time("time", duration=float(times[k]))
            rec.log("plots/metric_scale/window", rr.Scalars(estimate))
            rec.log("plots/metric_scale/applied", rr.Scalars(float(metric_scale)))
            rec.log("plots/stitching/residual_rms", rr.Scalars(rms))
            rec.log("plots/stitching/inlier_share", rr.Scalars(share))

    def close(self) -> None:
        self.rec.flush()
        self.rec.disconnect()
