"""RICH test set as GVHMR/WHAM prepare it: one torch file of labels, loaded with weights_only.

`rich_test_labels.pt`: {"test/<seq>/cam_XX": {"gt_smplx_params": {global_orient (F,3),
body_pose (F,63), betas (F,10) or (10,), transl (F,3)}, "gender": str, "frame_id": (F,)}},
SMPL-X in the world frame. Cameras are static; GVHMR's `cam2params.pt` maps a camera key to
(T_w2c (4,4), K (3,3)). Evaluation joints: gendered SMPL-X vertices -> SMPL vertices through a
(6890, 10475) map -> SMPL J_regressor (24 joints).

For the world-motion evaluation (`unish_model.eval.motion`): `find_rich` locates the files GVHMR prepares
(`hmr4d_support/`: labels, `rich_test_preproc.pt` person boxes, `video/`), and `rich_motion_sequence` makes a
sequence ready to run: every labelled frame at 30 fps, the person boxes from `bbx_xys` (square boxes in
full-resolution pixels, scaled to the frames read; without that file, the whole frame), and the ground-truth
joints: gendered SMPL-X (hands at the model's mean pose, as GVHMR's `rich-smplx`) -> SMPL vertices through the
smplx2smpl map -> the evaluation's SMPL J_regressor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from unish_model.benchmarks.layout import BenchmarkLayoutError, benchmark_root
from unish_model.body import BodyModel, SmplxModel
from unish_model.boxes import fill_boxes, whole_frame
from unish_model.eval.frames import FrameSource, ImageFrames, VideoFrames
from unish_model.eval.motion import MotionSequence, SmplParams
from unish_model.metrics.motion import SMPL_FOOT_VERTICES

RICH_FPS = 30.0


@dataclass(frozen=True)
class RichSequence:
    vid: str  # "test/<seq>/cam_XX"
    gender: str
    frame_id: NDArray[np.int64]  # (F,)
    global_orient: NDArray[np.float64]  # (F, 3)
    body_pose: NDArray[np.float64]  # (F, 63)
    betas: NDArray[np.float64]  # (F, 10) or (10,)
    transl: NDArray[np.float64]  # (F, 3)


def _np(value: Any, dtype: Any = np.float64) -> NDArray[Any]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # torch announces its (wanted) sparse invariant check
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # unpickling errors come in several types
        raise ValueError(f"{path}: cannot load with weights_only=True: {err}") from err


def read_rich_labels(path: str | Path) -> dict[str, RichSequence]:
    """All sequences of a `rich_test_labels.pt`, keyed by vid, in file order."""
    path = Path(path)
    raw = _load(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict of sequences, got {type(raw).__name__}")
    out: dict[str, RichSequence] = {}
    for vid, label in raw.items():
        try:
            params = label["gt_smplx_params"]
            seq = RichSequence(
                vid=str(vid),
                gender=str(label["gender"]),
                frame_id=_np(label["frame_id"], np.int64).reshape(-1),
                global_orient=_np(params["global_orient"]).reshape(-1, 3),
                body_pose=_np(params["body_pose"]).reshape(-1, 63),
                betas=_np(params["betas"]),
                transl=_np(params["transl"]).reshape(-1, 3),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: sequence {vid!r} is malformed: {err!r}") from err
        n = len(seq.frame_id)
        if not (len(seq.global_orient) == len(seq.body_pose) == len(seq.transl) == n):
            raise ValueError(f"{path}: sequence {vid!r} has inconsistent frame counts")
        out[seq.vid] = seq
    return out


def read_rich_cameras(path: str | Path) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """GVHMR's `cam2params.pt`: camera key -> (T_w2c (4, 4), K (3, 3))."""
    path = Path(path)
    raw = _load(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict of cameras, got {type(raw).__name__}")
    out = {}
    for key, (t_w2c, k) in raw.items():
        out[str(key)] = (_np(t_w2c).reshape(4, 4), _np(k).reshape(3, 3))
    return out


def map_vertices(mapping: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """(S, X) map @ (N, X, 3) vertices -> (N, S, 3), in one (sparse) matmul."""
    n, x = verts.shape[:2]
    flat = verts.permute(1, 0, 2).reshape(x, n * 3)
    out = torch.sparse.mm(mapping, flat) if mapping.is_sparse else mapping @ flat
    return out.reshape(-1, n, 3).permute(1, 0, 2)


def smplx_to_smpl_vertices(vertices: Any, mapping: Any) -> NDArray[np.float64]:
    """(F, 10475, 3) SMPL-X vertices -> (F, 6890, 3) SMPL vertices through a (6890, 10475) map.

    The map may be a dense numpy array, a scipy sparse matrix or a (sparse) torch tensor.
    """
    if isinstance(mapping, torch.Tensor):
        return map_vertices(mapping, torch.as_tensor(np.asarray(vertices), dtype=mapping.dtype)).numpy().astype(
            np.float64)
    verts = np.asarray(vertices, dtype=np.float64)
    return np.stack([np.asarray(mapping @ frame) for frame in verts])


def load_smplx2smpl(path: str | Path) -> torch.Tensor:
    """The (6890, V_smplx) map from SMPL-X to SMPL vertices: GVHMR's `smplx2smpl_sparse.pt` (a sparse torch tensor,
    loaded with weights_only) or an `.npz` / `.npy` with one dense array (key `matrix` if several)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"smplx2smpl map {path} not found")
    if path.suffix in (".npz", ".npy"):
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                key = "matrix" if "matrix" in data.files else data.files[0]
                data = data[key]
        return torch.from_numpy(np.asarray(data, dtype=np.float64))
    m = _load(path)
    if not isinstance(m, torch.Tensor) or m.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D tensor, got {type(m).__name__}")
    return m.double().coalesce() if m.is_sparse else m.double()


@dataclass
class RichData:
    """Where RICH's prepared files are (GVHMR's `hmr4d_support` layout)."""

    root: Path
    labels: Path
    preproc: Path | None  # rich_test_preproc.pt (person boxes), optional
    video_dir: Path | None  # <support>/video/<vid>/video.mp4 (frames indexed by frame_id)
    images_dir: Path | None  # <root>/images/<vid>/*.jpg|png (one image per label frame, or indexed by frame_id)


def find_rich(root: str | Path) -> RichData:
    """Where RICH's files are under `root`; a layout error says what is missing and where to get it."""
    root = benchmark_root(root, "RICH")
    for support in (root / "hmr4d_support", root):
        if (support / "rich_test_labels.pt").is_file():
            break
    else:
        raise BenchmarkLayoutError(
            f"{root} does not have RICH as GVHMR prepares it: no hmr4d_support/rich_test_labels.pt (nor "
            "rich_test_labels.pt); get RICH from https://rich.is.tue.mpg.de (registration) and GVHMR's "
            "hmr4d_support files (rich_test_labels.pt, rich_test_preproc.pt, video/)")
    preproc = support / "rich_test_preproc.pt"
    video_dir = support / "video"
    images_dir = root / "images"
    if not video_dir.is_dir() and not images_dir.is_dir():
        raise BenchmarkLayoutError(f"{root}: no frames: expected {video_dir}/<vid>/video.mp4 (GVHMR) or "
                                   f"{images_dir}/<vid>/ image folders")
    return RichData(root, support / "rich_test_labels.pt", preproc if preproc.is_file() else None,
                    video_dir if video_dir.is_dir() else None, images_dir if images_dir.is_dir() else None)


def rich_sequences(data: RichData, names: Sequence[str] | None = None, max_sequences: int | None = None
                   ) -> list[RichSequence]:
    """The labelled sequences (all, or `names`, the first `max_sequences`)."""
    try:
        labels = read_rich_labels(data.labels)
    except (FileNotFoundError, ValueError) as err:
        raise BenchmarkLayoutError(str(err)) from err
    if names:
        missing = sorted(set(names) - set(labels))
        if missing:
            raise BenchmarkLayoutError(f"{data.labels}: no sequence {missing}")
    seqs = [s for vid, s in labels.items() if not names or vid in set(names)]
    if not seqs:
        raise BenchmarkLayoutError(f"{data.labels}: no sequences")
    return seqs[:max_sequences] if max_sequences is not None else seqs


def load_rich_preproc(path: Path | None) -> Mapping[str, Any]:
    """GVHMR's `rich_test_preproc.pt` (person boxes by sequence), or nothing without the file."""
    if path is None:
        return {}
    raw = _load(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict of sequences, got {type(raw).__name__}")
    return raw


def rich_frames(data: RichData, seq: RichSequence) -> FrameSource:
    """The labelled frames of a sequence: from GVHMR's video (by frame_id), else from an image folder."""
    if data.video_dir is not None and (data.video_dir / seq.vid / "video.mp4").is_file():
        return VideoFrames(data.video_dir / seq.vid / "video.mp4", seq.frame_id)
    if data.images_dir is not None and (data.images_dir / seq.vid).is_dir():
        folder = data.images_dir / seq.vid
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(paths) == len(seq.frame_id):
            return ImageFrames(paths)
        if len(paths) > int(seq.frame_id.max()):
            return ImageFrames([paths[int(i)] for i in seq.frame_id])
        raise BenchmarkLayoutError(f"{data.images_dir / seq.vid}: {len(paths)} images for {len(seq.frame_id)} "
                                   f"labelled frames (ids up to {int(seq.frame_id.max())})")
    raise BenchmarkLayoutError(f"RICH {seq.vid}: no video.mp4 under {data.video_dir} and no image folder under "
                               f"{data.images_dir}")


def rich_gt_smpl(seq: RichSequence) -> SmplParams:
    """RICH's SMPL-X parameters read as SMPL ones (identity hands): the oracle's input."""
    return SmplParams.make(seq.global_orient, seq.body_pose, seq.betas[..., :10], seq.transl)


def rich_motion_sequence(data: RichData, seq: RichSequence, preproc: Mapping[str, Any], smplx: SmplxModel,
                         smplx2smpl: torch.Tensor, eval_body: BodyModel, chunk: int = 64) -> MotionSequence:
    frames = rich_frames(data, seq)
    h, w = frames.size
    entry = preproc.get(seq.vid)
    if entry is not None and "bbx_xys" in entry:
        xys = np.asarray(torch.as_tensor(entry["bbx_xys"]).double().numpy()).reshape(-1, 3)
        full_w = float(np.asarray(torch.as_tensor(entry["img_wh"]).double().numpy()).reshape(-1)[0]) \
            if "img_wh" in entry else float(w)
        s = w / full_w
        boxes = np.stack([xys[:, 0] - xys[:, 2] / 2, xys[:, 1] - xys[:, 2] / 2,
                          xys[:, 0] + xys[:, 2] / 2, xys[:, 1] + xys[:, 2] / 2], axis=1) * s
        boxes, _ = fill_boxes(boxes, fallback=whole_frame(h, w))
        box_source = "rich_test_preproc.pt bbx_xys"
    else:
        boxes = np.tile(whole_frame(h, w), (len(frames), 1))
        box_source = "whole frame (no rich_test_preproc.pt entry)"
    if smplx2smpl.shape[1] != smplx.num_vertices or smplx2smpl.shape[0] != eval_body.num_vertices:
        raise ValueError(f"smplx2smpl map {tuple(smplx2smpl.shape)} does not fit SMPL-X ({smplx.num_vertices}) -> "
                         f"SMPL ({eval_body.num_vertices})")
    joints, feet = [], []
    with_feet = eval_body.num_vertices > max(SMPL_FOOT_VERTICES)
    reg = eval_body.J_regressor.double()
    betas = seq.betas if seq.betas.ndim == 1 else seq.betas.reshape(len(seq.frame_id), -1)
    for a in range(0, len(seq.frame_id), chunk):
        sl = slice(a, a + chunk)
        vx = smplx.vertices(seq.global_orient[sl], seq.body_pose[sl], betas if betas.ndim == 1 else betas[sl],
                            seq.transl[sl])
        vs = map_vertices(smplx2smpl, vx)
        joints.append(torch.einsum("jv,fvc->fjc", reg, vs).numpy())
        if with_feet:
            feet.append(vs[:, list(SMPL_FOOT_VERTICES)].numpy())
    return MotionSequence(seq.vid, frames, boxes, np.concatenate(joints),
                          np.concatenate(feet) if with_feet else None, None, RICH_FPS,
                          {"fps": RICH_FPS, "gender": seq.gender, "boxes": box_source})
