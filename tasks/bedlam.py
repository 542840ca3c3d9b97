"""BEDLAM's released layout -> clip windows with ground truth, as plain functions on paths and arrays (the flow that
runs them is flows/bedlam.py).

Layout (BEDLAM v1 as its download page and its `data_processing` tools leave it; registration at
https://bedlam.is.tue.mpg.de):

    ROOT/<scene>/png/<seq>/<seq>_<NNNN>.png                frames, 30 fps (1280x720); scenes whose name contains
                                                            "closeup" are stored rotated (portrait content)
    ROOT/<scene>/depth/<seq>/<seq>_<NNNN>_depth.exr         depth: one 32-bit float channel named "Depth",
                                                            centimetres, z along the camera's axis
    ROOT/<scene>/masks/<seq>/<seq>_<NNNN>_<AA>_<part>.png   optional: per-actor masks (AA the actor, part body,
                                                            clothing or hair; greyscale 0 / 255)
    LABELS/<scene>.npz                                      the processed labels (BEDLAM's df_full_body.py, or
                                                            df_full_body_smpl.py for SMPL)

The npz has one row per (person, labelled frame), every 5th frame (6 fps): `imgname` ("<seq>/<file>.png"),
`pose_cam` (SMPL-X (N, 165) or SMPL (N, 72) axis-angle, root in the camera frame), `shape` (N, 11) SMPL-X or (N, 10)
SMPL, `trans_cam` (N, 3), `cam_int` (N, 3, 3) pixels of the upright frame, `cam_ext` (N, 4, 4) world-to-camera, and
`gender`, `sub` (the subject), ...  BEDLAM adds the camera's translation after the body model: camera-frame vertices
= body(pose_cam, shape, transl=trans_cam) + cam_ext[:3, 3].  Object arrays (strings) are read with a restricted
unpickler (`unish_model.benchmarks.safe_unpickle.load_string_array`); nothing else is unpickled.  The camera CSVs
(`ground_truth/camera/<seq>_camera.csv`) are not read: `cam_int` / `cam_ext` hold what they say.
Closeups: BEDLAM's tools turn the png 90 degrees clockwise (cv2.ROTATE_90_CLOCKWISE) and their labels are for the
upright frame; depth and masks are turned the same way here, and the frame geometry records rotation 270 (as
`np.rot90(frame, 270 // 90)`, the curation's convention).

One clip = one person of one sequence over `window_frames` labelled frames at `window_fps` (by default 30 frames
at 6 fps: 5 s), at the model's size (`tasks.decode.geometry_for_size`: 518x294, or 294x518 for closeups).  Label
families (`FAMILIES`), every array in model pixels of the clip:

    gt.pose        (T, 72) float32   SMPL axis-angle; root rotation in the camera frame (OpenCV: x right, y down,
                                     z ahead)
    gt.betas       (T, 10) float32   SMPL shape (one value per clip for SMPL-X fits: one person)
    gt.trans       (T, 3) float32    metres, camera frame, SMPL's `transl`: camera-frame vertices =
                                     BodyModel(pose[:, :3], pose[:, 3:], betas, transl=trans).vertices (the root
                                     turns about the rest pelvis, then the body moves by `trans`)
    gt.intrinsics  (T, 3, 3) float32 pixels of the clip's frames (after rotation, scale and crop)
    gt.extrinsics  (T, 4, 4) float32 world-to-camera, BEDLAM's `cam_ext` (its world: origin at the body's placement,
                                     y down; BEDLAM folds the camera's yaw into it)
    gt.fit_error   (T,) float32      metres: mean per-vertex distance of the SMPL fit to the mapped SMPL-X vertices
                                     (0 for labels that are SMPL already)
    gt.info        json              body, gender, subject, scene, sequence, person, images, fit, conventions
    gt_depth.*     the depth codec's entries (`shards.depth_codec`): metres, camera z, 0 / invalid beyond
                   `depth_max_m` (sky) ; intrinsics as gt.intrinsics
    masks.*        `shards.mask_codec.pack_masks` + stats: BEDLAM's actor masks (body, clothing and hair) of the
                   actor that best matches the person's body, where the layout has masks/<seq>; else the SMPL mesh
                   (fitted or given) rasterised with the GT camera where the GT depth does not put something in
                   front of it (`occlusion_tolerance_m`)
    people.*       box (T, 4) float32 xyxy (the mask's bounding box, pixel edges; NaN where absent), present (T,)
                   bool, score (T,) float32 (1 present, 0 absent), track_id (T,) int64 (the person's index in its
                   sequence), stats
"""
from __future__ import annotations

import re
import zipfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shards import depth_codec
from shards.mask_codec import pack_masks
from shards.schema import GT, GT_DEPTH, MASKS, PEOPLE, STATUS_OK, STATUS_REJECTED, clip_key, safe_id
from tasks.decode import FrameGeometry, geometry_for_size
from tasks.stage import ClipRejected

__all__ = [
    "BEDLAM_VERSION", "FAMILIES", "ROTATED_SCENE_MARK", "BedlamInputError", "BedlamLabels", "BedlamParams", "Bodies",
    "ClipResult", "Scene", "Track", "convert_window", "find_tracks", "list_scenes", "plan_windows", "read_depth_exr",
    "read_labels",
]

BEDLAM_VERSION = "1"  # version of every family this converter writes: bump when the output changes
FAMILIES = (GT, GT_DEPTH, MASKS, PEOPLE)
ROTATED_SCENE_MARK = "closeup"
UPRIGHT_ROTATION = 270  # np.rot90(stored, 3): 90 degrees clockwise
REQUIRED_KEYS = ("imgname", "pose_cam", "shape", "trans_cam", "cam_int", "cam_ext")
OPTIONAL_STRING_KEYS = ("gender", "sub")
SMPLX_POSE, SMPL_POSE = 165, 72
_FRAME_NUMBER = re.compile(r"(\d+)\.png$")


class BedlamInputError(ValueError):
    """Bad input (a missing or unreadable file, labels that do not fit the layout): recorded with `reason`, the
    message names the file; the other clips go on."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BedlamParams:
    """Everything that changes what a clip holds (part of its fingerprint)."""

    window_frames: int = 30
    window_fps: float = 6.0
    source_fps: float = 30.0  # BEDLAM renders at 30 fps; the labels sample every 5th frame
    stride_s: float | None = None  # between window starts (default: back to back)
    jpeg_quality: int = 92
    max_fit_error_m: float = 0.02  # a clip with a frame whose SMPL fit is worse is rejected (fit_error)
    fit_iterations: int = 30
    fit_max_vertices: int = 1800
    depth_max_m: float = 1000.0  # farther depth (Unreal's sky) is invalid
    occlusion_tolerance_m: float = 0.10  # rasterised body behind the GT depth by more than this is hidden
    mask_min_iou: float = 0.3  # BEDLAM actor mask accepted for the person from this IoU with its visible body
    min_mask_pixels: int = 64  # fewer mask pixels: the person is absent from that frame
    max_absent_frames: int = 0  # more absent frames reject the clip (not_visible)

    @property
    def step(self) -> int:
        """Source frames between a window's samples."""
        step = self.source_fps / self.window_fps
        if abs(step - round(step)) > 1e-6 or round(step) < 1:
            raise ValueError(f"source fps {self.source_fps:g} / window fps {self.window_fps:g} is not a whole number")
        return int(round(step))

    @property
    def stride_frames(self) -> int:
        return self.window_frames * self.step if self.stride_s is None else max(1, round(self.stride_s * self.source_fps))

    @property
    def window_seconds(self) -> float:
        return self.window_frames / self.window_fps

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ the layout


@dataclass(frozen=True)
class Scene:
    name: str
    folder: Path | None  # ROOT/<scene> (None: labels without frames)
    labels: Path | None  # LABELS/<scene>.npz (None: frames without labels)

    @property
    def rotated(self) -> bool:
        return ROTATED_SCENE_MARK in self.name


def list_scenes(root: Path, labels_dir: Path) -> list[Scene]:
    """Every scene that has frames (ROOT/<scene>/png/) or labels (LABELS/<scene>.npz), sorted by name."""
    root, labels_dir = Path(root), Path(labels_dir)
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and (p / "png").is_dir()} if root.is_dir() else {}
    npzs = {p.stem: p for p in labels_dir.glob("*.npz") if p.is_file()} if labels_dir.is_dir() else {}
    return [Scene(name, folders.get(name), npzs.get(name)) for name in sorted(set(folders) | set(npzs))]


@dataclass(frozen=True)
class BedlamLabels:
    path: Path
    imgname: np.ndarray  # (N,) str "<seq>/<file>.png"
    pose_cam: np.ndarray  # (N, 165) SMPL-X or (N, 72) SMPL, float64
    shape: np.ndarray  # (N, B)
    trans_cam: np.ndarray  # (N, 3)
    cam_int: np.ndarray  # (N, 3, 3)
    cam_ext: np.ndarray  # (N, 4, 4)
    gender: np.ndarray | None  # (N,) str
    sub: np.ndarray | None  # (N,) str

    @property
    def body(self) -> str:
        return "smplx" if self.pose_cam.shape[1] == SMPLX_POSE else "smpl"

    def __len__(self) -> int:
        return len(self.imgname)


def _read_member(zf: zipfile.ZipFile, name: str, where: str) -> np.ndarray:
    """One `.npy` member: plain arrays with allow_pickle=False, object arrays through the string-only unpickler."""
    from unish_model.benchmarks.safe_unpickle import load_string_array

    with zf.open(name) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"{where}: .npy format version {version} is not supported")
        if dtype.hasobject:
            if dtype != np.dtype(object):
                raise ValueError(f"{where}: a structured array with objects is not supported")
            array = load_string_array(fp, where)
            if array.shape != tuple(shape):
                raise ValueError(f"{where}: pickled array of shape {array.shape}, the header says {tuple(shape)}")
            return array
    with zf.open(name) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def read_labels(path: Path) -> BedlamLabels:
    """A scene's processed npz, checked: every required array, one row each, the shapes BEDLAM writes.  Raises
    BedlamInputError (reason `labels`) naming the file and what is wrong."""
    from unish_model.benchmarks.safe_unpickle import UnsafePickleError

    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            missing = [k for k in REQUIRED_KEYS if k not in members]
            if missing:
                raise BedlamInputError("labels", f"{path}: no {', '.join(missing)} (has: {', '.join(sorted(members))})")
            for key in (*REQUIRED_KEYS, *OPTIONAL_STRING_KEYS):
                if key in members:
                    arrays[key] = _read_member(zf, members[key], f"{path}:{key}")
    except BedlamInputError:
        raise
    except UnsafePickleError as e:
        raise BedlamInputError("labels", f"refused: {e}") from None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise BedlamInputError("labels", f"{path}: not a readable npz ({type(e).__name__}: {e})") from None
    n = len(arrays["imgname"])
    want = {"pose_cam": (n, None), "shape": (n, None), "trans_cam": (n, 3), "cam_int": (n, 3, 3), "cam_ext": (n, 4, 4)}
    out: dict[str, np.ndarray] = {}
    for key, shape in want.items():
        a = arrays[key]
        if a.dtype.kind not in "fiu" or a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            raise BedlamInputError("labels", f"{path}: {key} is {a.dtype} {a.shape}, expected numbers of shape "
                                   f"{tuple('N' if s is None else s for s in shape)} with N = {n} rows (imgname)")
        out[key] = a.astype(np.float64)
    if out["pose_cam"].shape[1] not in (SMPLX_POSE, SMPL_POSE):
        raise BedlamInputError("labels", f"{path}: pose_cam has {out['pose_cam'].shape[1]} values per row: expected "
                               f"{SMPLX_POSE} (SMPL-X) or {SMPL_POSE} (SMPL)")
    if out["pose_cam"].shape[1] == SMPL_POSE and out["shape"].shape[1] != 10:
        raise BedlamInputError("labels", f"{path}: SMPL labels with {out['shape'].shape[1]} betas; SMPL labels are "
                               "taken as they are, which needs 10")
    strings = {}
    for key in ("imgname", *OPTIONAL_STRING_KEYS):
        if key in arrays:
            a = arrays[key]
            if a.dtype.kind not in "US" or a.shape != (n,):
                raise BedlamInputError("labels", f"{path}: {key} is {a.dtype} {a.shape}, expected {n} strings")
            strings[key] = a.astype(str)
    return BedlamLabels(path, strings["imgname"], out["pose_cam"], out["shape"], out["trans_cam"], out["cam_int"],
                        out["cam_ext"], strings.get("gender"), strings.get("sub"))


# ------------------------------------------------------------------------------------------------ people


@dataclass(frozen=True)
class Track:
    """One person of one sequence: the label rows, in frame order."""

    scene: str
    sequence: str
    person: int  # order of first appearance in the sequence's rows
    subject: str  # `sub`, or a name made from the shape when the npz has no `sub`
    rows: tuple[int, ...]
    frames: tuple[int, ...]  # 30 fps frame numbers, ascending

    @property
    def source_id(self) -> str:
        return safe_id(f"{self.scene}_{self.sequence}_p{self.person}", max_len=160)

    @property
    def source(self) -> str:
        """As outputs record it: relative to ROOT, never an absolute path."""
        return f"{self.scene}/png/{self.sequence}"


def find_tracks(labels: BedlamLabels, scene: str) -> list[Track]:
    """The persons of every sequence of a scene (by `sub`, else by identical shape), sorted by sequence, person."""
    groups: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    order: dict[str, list[str]] = defaultdict(list)
    for i, name in enumerate(labels.imgname):
        seq, _, file = str(name).replace("\\", "/").rpartition("/")
        m = _FRAME_NUMBER.search(file)
        if not seq or m is None:
            raise BedlamInputError("labels", f"{labels.path}: imgname {name!r} is not '<seq>/<name>_<frame>.png'")
        who = str(labels.sub[i]) if labels.sub is not None else \
            "shape_" + "_".join(f"{b:.4f}" for b in labels.shape[i][:4])
        if who not in order[seq]:
            order[seq].append(who)
        groups[(seq, who)].append((int(m.group(1)), i))
    tracks = []
    for (seq, who), items in groups.items():
        items.sort()
        frames = [f for f, _ in items]
        twice = sorted({f for f in frames if frames.count(f) > 1})
        if twice:
            raise BedlamInputError("labels", f"{labels.path}: {seq} person {who!r} has several rows for frames {twice[:5]}")
        tracks.append(Track(scene, seq, order[seq].index(who), who, tuple(i for _, i in items), tuple(frames)))
    return sorted(tracks, key=lambda t: (t.sequence, t.person))


def plan_windows(track: Track, params: BedlamParams) -> list[dict]:
    """The track's windows, in order: dicts with key, start_s, end_s, status (ok, or rejected `frame_gap` where the
    labels skip a frame the window needs), reason, message, stats, and `frames` / `rows` of an ok window."""
    step, t = params.step, params.window_frames
    row_of = dict(zip(track.frames, track.rows))
    windows = []
    start = track.frames[0]
    while start + (t - 1) * step <= track.frames[-1]:
        frames = [start + k * step for k in range(t)]
        start_s = start / params.source_fps
        end_s = start_s + params.window_seconds
        w = {"key": clip_key(track.source_id, start_s, end_s), "start_s": round(start_s, 6), "end_s": round(end_s, 6),
             "status": STATUS_OK, "reason": "", "message": "", "stats": {}, "frames": frames}
        missing = [f for f in frames if f not in row_of]
        if missing:
            w.update(status=STATUS_REJECTED, reason="frame_gap", stats={"missing_frames": missing},
                     message=f"no label for person {track.person} in frames {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''} (BEDLAM labels a frame only when enough of "
                             "the body is in view)")
        else:
            w["rows"] = [row_of[f] for f in frames]
        windows.append(w)
        start += params.stride_frames
    return windows


# ------------------------------------------------------------------------------------------------ files


def read_frame(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB as stored."""
    if not path.is_file():
        raise BedlamInputError("missing_file", f"{path}: frame missing")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BedlamInputError("unreadable", f"{path}: not a readable image")
    return bgr[..., ::-1]


def read_depth_exr(path: Path, channel: str = "Depth") -> np.ndarray:
    """(H, W) float32 in the file's unit (BEDLAM: centimetres) from the channel named `channel`."""
    import OpenEXR

    if not path.is_file():
        raise BedlamInputError("missing_file", f"{path}: depth file missing")
    try:
        with OpenEXR.File(str(path), separate_channels=True, num_threads=1) as f:
            channels = f.channels()
            if channel not in channels:
                raise BedlamInputError("unreadable", f"{path}: no '{channel}' channel (has: {', '.join(sorted(channels))})")
            return np.asarray(channels[channel].pixels, dtype=np.float32)
    except BedlamInputError:
        raise
    except Exception as e:  # OpenEXR raises RuntimeError / OSError for damaged files
        raise BedlamInputError("unreadable", f"{path}: not a readable EXR file ({e})") from None


def read_actor_masks(folder: Path, stem: str) -> dict[int, np.ndarray]:
    """actor index -> (H, W) bool union of that actor's body, clothing and hair masks for one frame."""
    out: dict[int, np.ndarray] = {}
    for p in sorted(folder.glob(f"{stem}_[0-9][0-9]_*.png")):
        actor = int(p.name[len(stem) + 1:len(stem) + 3])
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise BedlamInputError("unreadable", f"{p}: not a readable mask image")
        out[actor] = out.get(actor, np.zeros(img.shape, bool)) | (img > 127)
    return out


# ------------------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class PixelMap:
    """Upright source pixels -> model pixels: continuous u_model = u_src * sx - crop_x (pixel centres at +0.5)."""

    geometry: FrameGeometry
    sx: float
    sy: float

    @classmethod
    def for_upright(cls, width: int, height: int, rotation: int) -> PixelMap:
        g = geometry_for_size(width, height, rotation)
        sw, sh = g.scaled_size
        sw, sh = max(sw, g.out_width), max(sh, g.out_height)
        return cls(g, sw / width, sh / height)

    @property
    def scaled(self) -> tuple[int, int]:
        return round(self.geometry.src_width * self.sx), round(self.geometry.src_height * self.sy)

    def frame(self, upright: np.ndarray) -> np.ndarray:
        g = self.geometry
        scaled = cv2.resize(np.ascontiguousarray(upright), self.scaled, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(scaled[g.crop_y:g.crop_y + g.out_height, g.crop_x:g.crop_x + g.out_width])

    def sample(self, upright: np.ndarray) -> np.ndarray:
        """Nearest source pixel at each model pixel's centre (for depth and masks: no mixing across edges)."""
        g = self.geometry
        cols = np.floor((np.arange(g.out_width) + 0.5 + g.crop_x) / self.sx).astype(np.int64)
        rows = np.floor((np.arange(g.out_height) + 0.5 + g.crop_y) / self.sy).astype(np.int64)
        cols = cols.clip(0, upright.shape[1] - 1)
        rows = rows.clip(0, upright.shape[0] - 1)
        return upright[rows[:, None], cols[None, :]]

    def intrinsics(self, k: np.ndarray) -> np.ndarray:
        """(..., 3, 3) upright-frame pixel intrinsics -> model pixels."""
        s = np.array([[self.sx, 0.0, -self.geometry.crop_x], [0.0, self.sy, -self.geometry.crop_y], [0, 0, 1]])
        return s @ k


def _upright(image: np.ndarray, rotated: bool) -> np.ndarray:
    return np.rot90(image, UPRIGHT_ROTATION // 90) if rotated else image


# ------------------------------------------------------------------------------------------------ one clip


@dataclass
class Bodies:
    """The body models a conversion uses: SMPL (float32 for meshes, float64 for fits), and for SMPL-X labels the
    SMPL-X model and the (V_smpl, V_smplx) vertex map."""

    smpl: Any  # unish_model.body.BodyModel, float32
    smpl64: Any  # the same, float64
    smplx: Any = None  # unish_model.body.SmplxModel
    smplx2smpl: Any = None  # torch tensor, dense or sparse


@dataclass
class ClipResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    meta: dict[str, Any]
    labels: dict[str, dict[str, Any]]  # family -> entries
    stats: dict[str, Any] = field(default_factory=dict)  # what the index's stats column keeps


def _body_gt(labels: BedlamLabels, rows: list[int], bodies: Bodies, params: BedlamParams) -> dict[str, Any]:
    """SMPL pose / betas / trans in the camera frame for the rows, with the fit error (see the module docstring)."""
    import torch

    from unish_model.benchmarks.rich import map_vertices
    from unish_model.body.fit import FitParams, fit_smpl, smpl_pose_from_smplx

    pose = labels.pose_cam[rows]
    shape = labels.shape[rows]
    cam_t = labels.cam_ext[rows, :3, 3]
    trans = labels.trans_cam[rows] + cam_t  # BEDLAM adds the camera translation after the body model
    if labels.body == "smpl":
        return {"pose": pose, "betas": shape, "trans": trans, "fit_error": np.zeros(len(rows)), "fit": None}
    if bodies.smplx is None or bodies.smplx2smpl is None:
        raise BedlamInputError("labels", f"{labels.path}: SMPL-X labels need the SMPL-X model and the SMPL-X -> SMPL "
                               "vertex map (--smplx, --smplx2smpl)")
    with torch.no_grad():
        verts_x = bodies.smplx.posed_vertices(pose, shape, trans)
        target = map_vertices(bodies.smplx2smpl, verts_x.to(bodies.smplx2smpl.dtype)).to(torch.float64)
    fit = fit_smpl(bodies.smpl64, target, smpl_pose_from_smplx(torch.from_numpy(pose)),
                   FitParams(iterations=params.fit_iterations, max_vertices=params.fit_max_vertices))
    return {"pose": fit.pose.numpy(), "betas": fit.betas.numpy(), "trans": fit.transl.numpy(),
            "fit_error": fit.error.numpy(),
            "fit": {"iterations": fit.iterations, "mean_error_m": float(fit.error.mean()),
                    "max_error_m": float(fit.error.max()), "max_vertex_error_m": float(fit.max_error.max())}}


def _round(values: np.ndarray, digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in values]


def convert_window(scene: Scene, track: Track, window: dict, labels: BedlamLabels, bodies: Bodies,
                   params: BedlamParams) -> ClipResult:
    """One ok window of `plan_windows` -> its frames, meta.json and label entries (see the module docstring).
    Raises ClipRejected (`fit_error`, `not_visible`) or BedlamInputError (a missing or unreadable file, camera
    intrinsics that do not fit the frames)."""
    import torch

    from unish_model.losses.raster import rasterize

    assert scene.folder is not None
    rows = list(window["rows"])
    images = [str(labels.imgname[r]).replace("\\", "/") for r in rows]
    t = len(rows)
    # -- frames
    stored = [read_frame(scene.folder / "png" / name) for name in images]
    sizes = {f.shape[:2] for f in stored}
    if len(sizes) != 1:
        raise BedlamInputError("unreadable", f"{scene.folder / 'png' / track.sequence}: frames of several sizes {sorted(sizes)}")
    h_stored, w_stored = stored[0].shape[:2]
    upright = [_upright(f, scene.rotated) for f in stored]
    hu, wu = upright[0].shape[:2]
    pmap = PixelMap.for_upright(wu, hu, UPRIGHT_ROTATION if scene.rotated else 0)
    geom = pmap.geometry
    frames = np.stack([pmap.frame(f) for f in upright])
    # -- cameras
    k_src = labels.cam_int[rows]
    off = np.abs(k_src[:, :2, 2] - np.array([wu / 2, hu / 2])).max(0)
    if off[0] > 0.02 * wu or off[1] > 0.02 * hu:
        raise BedlamInputError("labels", f"{labels.path}: cam_int's principal point {k_src[0, :2, 2].tolist()} does not "
                               f"fit the {wu}x{hu} upright frames of {track.source} (rotated: {scene.rotated}; scenes "
                               f"whose name contains {ROTATED_SCENE_MARK!r} are turned upright)")
    k_model = pmap.intrinsics(k_src)
    # -- body
    body = _body_gt(labels, rows, bodies, params)
    fit_error = np.asarray(body["fit_error"], np.float64)
    if fit_error.max() > params.max_fit_error_m:
        worst = int(fit_error.argmax())
        raise ClipRejected("fit_error", f"SMPL fit error {fit_error[worst] * 1000:.1f} mm in frame {images[worst]} "
                           f"(bound {params.max_fit_error_m * 1000:g} mm)", {"fit_error_m": _round(fit_error, 6)})
    # -- depth
    depth = np.zeros((t, geom.out_height, geom.out_width), np.float32)
    for i, name in enumerate(images):
        stem = Path(name).stem
        path = scene.folder / "depth" / track.sequence / f"{stem}_depth.exr"
        cm = read_depth_exr(path)
        if cm.shape != (h_stored, w_stored):
            raise BedlamInputError("unreadable", f"{path}: {cm.shape[1]}x{cm.shape[0]} depth for "
                                   f"{w_stored}x{h_stored} frames")
        depth[i] = pmap.sample(_upright(cm, scene.rotated)) / 100.0  # centimetres -> metres
    valid = np.isfinite(depth) & (depth > 0) & (depth < params.depth_max_m)
    depth = np.where(valid, depth, 0).astype(np.float32)
    # -- the person's pixels: the body mesh, hidden where the GT depth is nearer
    with torch.no_grad():
        smpl = bodies.smpl
        verts = smpl(torch.from_numpy(body["pose"][:, :3]).float(), torch.from_numpy(body["pose"][:, 3:]).float(),
                     torch.from_numpy(body["betas"]).float(), torch.from_numpy(body["trans"]).float()).vertices
        raster = rasterize(verts, smpl.faces, torch.from_numpy(k_model), (geom.out_height, geom.out_width))
    on_body = (raster.face_index >= 0).numpy()
    behind = valid & (raster.depth.numpy() > depth + params.occlusion_tolerance_m)
    visible_body = on_body & ~behind
    mask_folder = scene.folder / "masks" / track.sequence
    mask_stats: dict[str, Any]
    if mask_folder.is_dir():
        masks = np.zeros_like(visible_body)
        actors, ious = [], []
        for i, name in enumerate(images):
            best, best_iou = None, 0.0
            for actor, m in read_actor_masks(mask_folder, Path(name).stem).items():
                if m.shape != (h_stored, w_stored):
                    raise BedlamInputError("unreadable", f"{mask_folder}: {Path(name).stem} masks are {m.shape[1]}x"
                                           f"{m.shape[0]}, the frames {w_stored}x{h_stored}")
                sampled = pmap.sample(_upright(m, scene.rotated))
                union = (sampled | visible_body[i]).sum()
                iou = float((sampled & visible_body[i]).sum() / union) if union else 0.0
                if iou > best_iou:
                    best, best_iou = (actor, sampled), iou
            if best is not None and best_iou >= params.mask_min_iou:
                masks[i] = best[1]
                actors.append(best[0])
            else:
                actors.append(None)
            ious.append(round(best_iou, 4))
        mask_stats = {"source": "bedlam_masks", "actor": actors, "iou_with_body": ious}
    else:
        masks = visible_body
        mask_stats = {"source": "raster", "mesh": "smpl", "hidden_by_depth_px": behind.sum((1, 2)).tolist()}
    area = masks.sum((1, 2))
    present = area >= params.min_mask_pixels
    absent = [i for i in range(t) if not present[i]]
    if len(absent) > params.max_absent_frames:
        raise ClipRejected("not_visible", f"person {track.person} is not visible in {len(absent)} of {t} frames "
                           f"(e.g. {images[absent[0]]}; at most {params.max_absent_frames} allowed)",
                           {"absent_frames": absent, "mask_px": area.tolist(), "mask": mask_stats})
    boxes = np.full((t, 4), np.nan, np.float32)
    for i in np.nonzero(present)[0]:
        ys, xs = np.nonzero(masks[i])
        boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # -- the clip
    frame_times = [round(f / params.source_fps, 6) for f in window["frames"]]
    gender = str(labels.gender[rows[0]]) if labels.gender is not None else None
    meta = {
        "key": window["key"], "source": track.source, "source_id": track.source_id, "start_s": window["start_s"],
        "end_s": window["end_s"], "frame_times_s": frame_times, "fps": params.window_fps, "width": geom.out_width,
        "height": geom.out_height, "geometry": geom.to_dict(), "source_fps": params.source_fps, "codec": "png",
        "jpeg_quality": params.jpeg_quality,
        "bedlam": {"scene": track.scene, "sequence": track.sequence, "person": track.person, "subject": track.subject,
                   "gender": gender, "body": labels.body, "rotated": scene.rotated, "images": images,
                   "stored_size": [w_stored, h_stored]},
    }
    info = {
        "body": "SMPL fitted to SMPL-X (smplx2smpl map)" if labels.body == "smplx" else "SMPL as labelled",
        "labels_body": labels.body, "gender": gender, "subject": track.subject, "scene": track.scene,
        "sequence": track.sequence, "person": track.person, "images": images,
        "pose": "SMPL axis-angle (T, 72), root in the camera frame (OpenCV: x right, y down, z ahead)",
        "trans": "metres, camera frame, SMPL transl: vertices = BodyModel(pose[:, :3], pose[:, 3:], betas, trans)",
        "intrinsics": "pixels of the clip's frames", "extrinsics": "BEDLAM cam_ext, world-to-camera",
        "fit": body["fit"] and {**body["fit"], "bound_m": params.max_fit_error_m},
    }
    k32 = k_model.astype(np.float32)
    gt = {"pose": np.asarray(body["pose"], np.float32), "betas": np.asarray(body["betas"], np.float32),
          "trans": np.asarray(body["trans"], np.float32), "intrinsics": k32,
          "extrinsics": labels.cam_ext[rows].astype(np.float32), "fit_error": fit_error.astype(np.float32),
          "info": info}
    depth_stats = {"source": "BEDLAM depth EXR, channel Depth, centimetres", "unit": "m",
                   "valid_fraction": round(float(valid.mean()), 6), "max_m": params.depth_max_m}
    gt_depth = depth_codec.to_entries(depth_codec.encode(depth, valid), k32, depth_stats)
    people = {"box": boxes, "present": present.astype(bool), "score": present.astype(np.float32),
              "track_id": np.full(t, track.person, np.int64),
              "stats": {"from": "mask bounding box", "mask_px": area.tolist(), "subject": track.subject}}
    stats = {"fit_error_max_m": round(float(fit_error.max()), 6), "mask_source": mask_stats["source"],
             "depth_valid_fraction": depth_stats["valid_fraction"]}
    labels_out = {GT: gt, GT_DEPTH: gt_depth, MASKS: {**pack_masks(masks.astype(bool)), "stats": mask_stats},
                  PEOPLE: people}
    return ClipResult(frames, meta, labels_out, stats)


def provenance(family: str, weights: dict[str, str], package: str, params: BedlamParams) -> dict[str, Any]:
    """A family's provenance record (what curation's stages record: backend, weights, package, params, version)."""
    return {"backend": "bedlam_gt", "weights": sorted(weights), "weights_sha256": dict(sorted(weights.items())),
            "package_version": package, "params": params.to_dict(), "version": BEDLAM_VERSION, "family": family}

