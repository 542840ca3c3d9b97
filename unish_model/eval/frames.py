"""Frame sources for the evaluation: a benchmark sequence's frames read on demand, one window at a time.

`ImageFrames` (one image file per frame) and `VideoFrames` (chosen frames of a video, decoded forward once, a
window's overlap served from a small cache) both satisfy `FrameSource`.  `read_image` reads an image with OpenCV
when it is installed, else Pillow (RGB, or as stored for depth PNGs); `resize_frames` resizes with torch so the
result does not depend on which image library is installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

__all__ = ["read_image", "read_rgb", "resize_frames", "FrameSource", "ImageFrames", "VideoFrames"]


def read_image(path: str | Path, unchanged: bool = False) -> NDArray[np.generic]:
    """An image file as an array, colour as RGB (OpenCV when installed, else Pillow): (H, W, 3) uint8 by default;
    with `unchanged`, as stored (a 16-bit depth PNG stays (H, W) uint16; OpenCV drops an alpha channel)."""
    path = Path(path)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: not a readable image")
        if img.ndim == 3 and img.shape[-1] >= 3:
            img = img[..., 2::-1]  # BGR(A) -> RGB
        return np.ascontiguousarray(img)
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im if unchanged else im.convert("RGB")).copy()
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err


def read_rgb(path: str | Path) -> NDArray[np.uint8]:
    """An image file as (H, W, 3) uint8 RGB."""
    return read_image(path)


def resize_frames(frames: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8, bilinear with antialiasing (torch, so the result does not depend
    on which image library is installed)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == tuple(size):
        return np.ascontiguousarray(frames, dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class FrameSource(Protocol):
    """Random access to a sequence's frames (indices increase from window to window)."""

    def __len__(self) -> int: ...

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames `read` returns."""
        ...

    def read(self, indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        """(T, H, W, 3) uint8 RGB."""
        ...


@dataclass
class ImageFrames:
    """Frames stored as image files, one per frame."""

    paths: Sequence[Path]
    _size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            h, w = read_rgb(self.paths[0]).shape[:2]
            self._size = (int(h), int(w))
        return self._size

    def read(self, indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        frames = [read_rgb(self.paths[int(i)]) for i in indices]
        for i, f in zip(indices, frames):
            if f.shape[:2] != self.size:
                raise ValueError(f"{self.paths[int(i)]}: size {f.shape[1]}x{f.shape[0]} differs from the "
                                 f"sequence's {self.size[1]}x{self.size[0]}")
        return np.stack(frames)


class VideoFrames:
    """Chosen frames (`frame_ids`, increasing) of a video file, decoded forward once (OpenCV); windows may go back
    by their overlap, which is served from a small cache of recent frames."""

    def __init__(self, path: str | Path, frame_ids: NDArray[np.int64]) -> None:
        self.path = Path(path)
        self.frame_ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        if len(self.frame_ids) and (np.diff(self.frame_ids) <= 0).any():
            raise ValueError(f"{self.path}: frame ids must increase")
        self._cap: Any = None
        self._next = 0  # index of the next video frame the decoder returns
        self._cache: dict[int, NDArray[np.uint8]] = {}  # sequence index -> frame
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def _open(self) -> Any:
        try:
            import cv2
        except ImportError as err:
            raise ImportError(f"reading {self.path} needs OpenCV (pip install opencv-python-headless)") from err
        if not self.path.is_file():
            raise FileNotFoundError(f"video {self.path} not found")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise ValueError(f"{self.path}: OpenCV cannot open this video")
        return cap

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            frame = self.read(np.zeros(1, dtype=np.int64))[0]
            self._size = (int(frame.shape[0]), int(frame.shape[1]))
        return self._size

    def read(self, indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        indices = np.asarray(indices, dtype=np.int64)
        for i in sorted(set(int(i) for i in indices) - set(self._cache)):
            target = int(self.frame_ids[i])
            if self._cap is None or target < self._next:
                if self._cap is not None:
                    self._cap.release()
                self._cap, self._next = self._open(), 0
            while True:
                ok, bgr = self._cap.read()
                if not ok:
                    raise ValueError(f"{self.path}: has no frame {target} (ends at {self._next - 1})")
                self._next += 1
                if self._next - 1 == target:
                    self._cache[i] = np.ascontiguousarray(bgr[..., ::-1])
                    break
        out = np.stack([self._cache[int(i)] for i in indices])
        lowest = int(indices.min())
        for k in [k for k in self._cache if k < lowest]:
            del self._cache[k]
        return out
