"""RICH test set as GVHMR/WHAM prepare it: one torch file of labels, loaded with weights_only.

`rich_test_labels.pt`: {"test/<seq>/cam_XX": {"gt_smplx_params": {global_orient (F,3),
body_pose (F,63), betas (F,10) or (10,), transl (F,3)}, "gender": str, "frame_id": (F,)}},
SMPL-X in the world frame. Cameras are static; GVHMR's `cam2params.pt` maps a camera key to
(T_w2c (4,4), K (3,3)). Evaluation joints: gendered SMPL-X vertices -> SMPL vertices through a
(6890, 10475) map -> SMPL J_regressor (24 joints).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from numpy.typing import NDArray

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


def smplx_to_smpl_vertices(vertices: Any, mapping: Any) -> NDArray[np.float64]:
    """(F, 10475, 3) SMPL-X vertices -> (F, 6890, 3) SMPL vertices through a (6890, 10475) map.

    The map may be a dense numpy array, a scipy sparse matrix or a (sparse) torch tensor.
    """
    if isinstance(mapping, torch.Tensor):
        frames = []
        for frame in torch.as_tensor(np.asarray(vertices), dtype=mapping.dtype):
            out = mapping @ frame
            frames.append((out.to_dense() if out.is_sparse else out).numpy())
        return np.stack(frames).astype(np.float64)
    verts = np.asarray(vertices, dtype=np.float64)
    return np.stack([np.asarray(mapping @ frame) for frame in verts])
