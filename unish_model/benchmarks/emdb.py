"""EMDB, read from its per-sequence annotation pickles with the restricted unpickler.

Layout: `<root>/P<k>/<NN_name>/{images/%05d.jpg, P<k>_<NN_name>_data.pkl}`. Each pickle is a dict
of numpy arrays and plain values: gender, name, emdb1/emdb2 flags, n_frames, good_frames_mask,
camera {intrinsics (3,3), extrinsics (F,4,4) world-to-camera}, smpl {poses_root (F,3),
poses_body (F,69), trans (F,3), betas (10,)}, kp2d, bboxes {bboxes (F,4)}. World is Y-up,
30 fps, SMPL of the annotated gender. EMDB-2 = the sequences whose emdb2 flag is set.

For the world-motion evaluation (`unish_model.eval.motion`), `emdb_motion_sequence` makes a sequence ready to run:
the frames, the annotation's person boxes (a frame whose box is invalid, i.e. empty or outside
`good_frames_mask`, takes the box interpolated from its neighbours: `unish_model.boxes.fill_boxes`; no box at all:
the whole frame) and the ground-truth joints: the annotated SMPL (of the annotated gender when that model is
given, else the neutral one) regressed with the evaluation's J_regressor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from unish_model.benchmarks.layout import BenchmarkLayoutError, benchmark_root
from unish_model.benchmarks.safe_unpickle import safe_load_path
from unish_model.body import BodyModel
from unish_model.boxes import fill_boxes, whole_frame
from unish_model.eval.frames import ImageFrames
from unish_model.eval.motion import MotionSequence, SmplParams, smpl_joints

EMDB_FPS = 30.0


@dataclass(frozen=True)
class EmdbSequence:
    """Raw GT of one EMDB sequence (arrays as stored, float64 / bool)."""

    name: str
    folder: Path
    gender: str
    emdb1: bool
    emdb2: bool
    n_frames: int
    good_frames_mask: NDArray[np.bool_]  # (F,)
    intrinsics: NDArray[np.float64]  # (3, 3)
    world_to_camera: NDArray[np.float64]  # (F, 4, 4)
    poses_root: NDArray[np.float64]  # (F, 3) axis-angle
    poses_body: NDArray[np.float64]  # (F, 69)
    trans: NDArray[np.float64]  # (F, 3)
    betas: NDArray[np.float64]  # (10,)
    kp2d: NDArray[np.float64] | None  # (F, 24, 2)
    bboxes: NDArray[np.float64] | None  # (F, 4)

    @property
    def image_paths(self) -> list[Path]:
        return sorted((self.folder / "images").glob("*.jpg"))


def _get(d: Mapping[str, Any], key: str, where: Path) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ValueError(f"{where}: missing key {key!r}")
    return d[key]


def _array(value: Any, shape: tuple[int | None, ...], key: str, where: Path, dtype: Any = np.float64) -> NDArray[Any]:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        raise ValueError(f"{where}: {key} has shape {arr.shape}, expected {shape}")
    return arr


def read_emdb_pickle(path: str | Path) -> EmdbSequence:
    """One `P?_<NN_name>_data.pkl`, validated."""
    path = Path(path)
    raw = safe_load_path(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict, got {type(raw).__name__}")
    n = int(_get(raw, "n_frames", path))
    cam = _get(raw, "camera", path)
    smpl = _get(raw, "smpl", path)
    kp2d = raw.get("kp2d")
    boxes = raw.get("bboxes")
    return EmdbSequence(
        name=str(_get(raw, "name", path)),
        folder=path.parent,
        gender=str(_get(raw, "gender", path)),
        emdb1=bool(raw.get("emdb1", False)),
        emdb2=bool(raw.get("emdb2", False)),
        n_frames=n,
        good_frames_mask=_array(_get(raw, "good_frames_mask", path), (n,), "good_frames_mask", path, bool),
        intrinsics=_array(_get(cam, "intrinsics", path), (3, 3), "camera.intrinsics", path),
        world_to_camera=_array(_get(cam, "extrinsics", path), (n, 4, 4), "camera.extrinsics", path),
        poses_root=_array(_get(smpl, "poses_root", path), (n, 3), "smpl.poses_root", path),
        poses_body=_array(_get(smpl, "poses_body", path), (n, 69), "smpl.poses_body", path),
        trans=_array(_get(smpl, "trans", path), (n, 3), "smpl.trans", path),
        betas=_array(_get(smpl, "betas", path), (None,), "smpl.betas", path),
        kp2d=None if kp2d is None else _array(kp2d, (n, None, 2), "kp2d", path),
        bboxes=None if boxes is None else _array(_get(boxes, "bboxes", path), (n, 4), "bboxes.bboxes", path),
    )


def list_emdb(root: str | Path, split: int | None = 2) -> list[EmdbSequence]:
    """All sequences under root (sorted by name); split 1 or 2 keeps that subset's flag."""
    if split not in (None, 1, 2):
        raise ValueError(f"EMDB split must be 1, 2 or None, got {split}")
    paths = sorted(Path(root).glob("P*/*/P*_data.pkl"))
    seqs = [read_emdb_pickle(p) for p in paths]
    if split == 1:
        seqs = [s for s in seqs if s.emdb1]
    elif split == 2:
        seqs = [s for s in seqs if s.emdb2]
    return sorted(seqs, key=lambda s: s.name)


def emdb_sequences(root: str | Path, split: int | None = 2, names: Sequence[str] | None = None,
                   max_sequences: int | None = None) -> list[EmdbSequence]:
    """The evaluation's sequences (those of `split`, or `names`, the first `max_sequences`); layout errors name
    what is missing."""
    root = benchmark_root(root, "EMDB")
    if not any(root.glob("P*/*/P*_data.pkl")):
        raise BenchmarkLayoutError(
            f"{root} does not have the EMDB layout: no P<k>/<sequence>/P<k>_<sequence>_data.pkl files (with images/ "
            "next to each); download EMDB from https://eth-ait.github.io/emdb/ (registration required)")
    try:
        seqs = list_emdb(root, split)
    except ValueError as err:
        raise BenchmarkLayoutError(str(err)) from err
    if names:
        missing = sorted(set(names) - {s.name for s in seqs})
        if missing:
            raise BenchmarkLayoutError(f"{root}: no EMDB{split or ''} sequence named {missing}")
        seqs = [s for s in seqs if s.name in set(names)]
    if not seqs:
        raise BenchmarkLayoutError(f"{root}: no sequence has the emdb{split} flag set")
    return seqs[:max_sequences] if max_sequences is not None else seqs


def emdb_gt_smpl(seq: EmdbSequence) -> SmplParams:
    """The annotation's SMPL parameters (world frame): the oracle's input."""
    return SmplParams.make(seq.poses_root, seq.poses_body, seq.betas, seq.trans)


def emdb_motion_sequence(seq: EmdbSequence, gt_body: BodyModel, eval_body: BodyModel, gt_body_name: str = ""
                         ) -> MotionSequence:
    """GT joints from the annotation's SMPL (gt_body, of the annotated gender when available) regressed with the
    evaluation J_regressor (eval_body's, SMPL neutral as GVHMR); boxes from the annotation."""
    paths = seq.image_paths
    if len(paths) != seq.n_frames:
        raise BenchmarkLayoutError(f"{seq.folder}/images: {len(paths)} jpg files for {seq.n_frames} annotated frames")
    frames = ImageFrames(paths)
    h, w = frames.size
    if seq.bboxes is not None:
        boxes, valid = fill_boxes(seq.bboxes, seq.good_frames_mask, fallback=whole_frame(h, w))
        box_source = "annotation"
    else:
        boxes, valid = fill_boxes(np.full((seq.n_frames, 4), np.nan), fallback=whole_frame(h, w))
        box_source = "whole frame (no bboxes in the annotation)"
    joints, feet = smpl_joints(gt_body, emdb_gt_smpl(seq), regressor=eval_body.J_regressor)
    return MotionSequence(seq.name, frames, boxes, joints, feet, seq.good_frames_mask.copy(), EMDB_FPS, {
        "fps": EMDB_FPS, "gender": seq.gender, "gt_body": gt_body_name or seq.gender, "boxes": box_source,
        "valid_boxes": int(valid.sum())})
