"""Bonn RGB-D Dynamic, read the way the video-depth peers (pi3, CUT3R, MonST3R) read it.

Layout: `<root>/rgbd_bonn_<seq>/{rgb/*.png, depth/*.png, rgb.txt, depth.txt, groundtruth.txt}`
(TUM layout, files named by timestamp), 640x480. Depth PNGs are uint16, metres * 5000, 0 where
there is no measurement. The evaluation takes sorted()[30:140] of rgb and of depth and pairs them
by index. Folders `rgb_110/` and `depth_110/`, which the peers' preparation script writes with
exactly those frames, are used as they are when present. `bonn_sequences` is what the evaluation reads: the chosen
sequences, with a layout error that names what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from unish_model.benchmarks.layout import BenchmarkLayoutError, benchmark_root
from unish_model.eval.frames import read_image

BONN_SEQUENCES: tuple[str, ...] = ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")
BONN_FIRST_FRAME = 30
BONN_END_FRAME = 140  # exclusive: 110 frames
BONN_DEPTH_SCALE = 5000.0
# fx, fy, cx, cy of the Bonn RGB-D camera.
BONN_INTRINSICS = np.array(
    [[542.822841, 0.0, 315.593520], [0.0, 542.576870, 237.756098], [0.0, 0.0, 1.0]]
)


def read_depth_png(path: str | Path, scale: float = BONN_DEPTH_SCALE) -> NDArray[np.float64]:
    """16-bit depth PNG -> float64 metres; 0 stays 0 (invalid)."""
    path = Path(path)
    raw = read_image(path, unchanged=True)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel 16-bit depth PNG, got {raw.dtype} {raw.shape}")
    return raw.astype(np.float64) / scale


@dataclass(frozen=True)
class BonnSequence:
    """One evaluation sequence: the 110 paired frames and the camera."""

    name: str
    folder: Path
    rgb_paths: tuple[Path, ...]
    depth_paths: tuple[Path, ...]
    intrinsics: NDArray[np.float64]

    def load_depth(self) -> NDArray[np.float64]:
        """(F, H, W) float64 metres, 0 = invalid."""
        return np.stack([read_depth_png(p) for p in self.depth_paths])

    def load_rgb(self) -> NDArray[np.uint8]:
        """(F, H, W, 3) uint8 RGB."""
        frames = [read_image(p, unchanged=True) for p in self.rgb_paths]
        for p, f in zip(self.rgb_paths, frames):
            if f.dtype != np.uint8 or f.ndim != 3:
                raise ValueError(f"{p}: expected an 8-bit colour image, got {f.dtype} {f.shape}")
        return np.stack([f[..., :3] for f in frames])


def read_bonn_sequence(root: str | Path, name: str) -> BonnSequence:
    """The evaluation frames of `<root>/rgbd_bonn_<name>`."""
    folder = Path(root) / f"rgbd_bonn_{name}"
    if not folder.is_dir():
        raise FileNotFoundError(f"Bonn sequence {name!r}: no folder {folder}")
    n_eval = BONN_END_FRAME - BONN_FIRST_FRAME
    prepared = (folder / "rgb_110", folder / "depth_110")
    if all(d.is_dir() for d in prepared):
        rgb = sorted(prepared[0].glob("*.png"))
        depth = sorted(prepared[1].glob("*.png"))
    else:
        rgb_all = sorted((folder / "rgb").glob("*.png"))
        depth_all = sorted((folder / "depth").glob("*.png"))
        if min(len(rgb_all), len(depth_all)) < BONN_END_FRAME:
            raise ValueError(
                f"{folder}: needs at least {BONN_END_FRAME} rgb and depth PNGs, "
                f"found {len(rgb_all)} rgb and {len(depth_all)} depth"
            )
        rgb = rgb_all[BONN_FIRST_FRAME:BONN_END_FRAME]
        depth = depth_all[BONN_FIRST_FRAME:BONN_END_FRAME]
    if len(rgb) != n_eval or len(depth) != n_eval:
        raise ValueError(f"{folder}: expected {n_eval} frames, found {len(rgb)} rgb / {len(depth)} depth")
    return BonnSequence(name, folder, tuple(rgb), tuple(depth), BONN_INTRINSICS.copy())


def list_bonn(root: str | Path, names: tuple[str, ...] = BONN_SEQUENCES) -> list[BonnSequence]:
    """The benchmark's five sequences (or `names`), in order."""
    return [read_bonn_sequence(root, n) for n in names]


def bonn_sequences(root: str | Path, names: Sequence[str] | None = None, max_sequences: int | None = None
                   ) -> list[BonnSequence]:
    """The benchmark's sequences (all five, or `names`, the first `max_sequences`); layout errors name the folder."""
    root = benchmark_root(root, "Bonn")
    chosen = list(names) if names else list(BONN_SEQUENCES)
    unknown = [n for n in chosen if n not in BONN_SEQUENCES]
    if unknown:
        raise BenchmarkLayoutError(f"not Bonn evaluation sequences: {unknown}; the benchmark's are {BONN_SEQUENCES}")
    if max_sequences is not None:
        chosen = chosen[:max_sequences]
    missing = [n for n in chosen if not (root / f"rgbd_bonn_{n}").is_dir()]
    if missing:
        raise BenchmarkLayoutError(
            f"{root} does not have the Bonn RGB-D Dynamic layout: missing "
            f"{', '.join(f'rgbd_bonn_{n}/' for n in missing)} (each with rgb/ and depth/ PNGs, TUM layout; "
            "download from https://www.ipb.uni-bonn.de/data/rgbd-dynamic-dataset/)")
    try:
        return [read_bonn_sequence(root, n) for n in chosen]
    except (FileNotFoundError, ValueError) as err:
        raise BenchmarkLayoutError(str(err)) from err


def bonn_depth_of(sequences: Sequence[BonnSequence]) -> Callable[[str], NDArray[np.float64]]:
    """GT depth by sequence name (for `unish_model.eval.predictors.GroundTruthPredictor`)."""
    by_name = {s.name: s for s in sequences}
    return lambda name: by_name[name].load_depth()
