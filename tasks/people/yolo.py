"""`people:yolo` (paper profile): an Ultralytics YOLO detection checkpoint from the weights folder, persons only,
with Ultralytics' ByteTrack over the window's frames (a fresh tracker per window).

Ultralytics is made offline, install-free and weights-only (`tasks.weights.prepare_ultralytics_env`) when
`tasks.people` is imported, before anything can import it; `_enforce_ultralytics_switches` applies the same
switches in place if it was imported earlier.  A `.yaml` as weights builds the architecture with random weights:
for tests of the plumbing only, never a default.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.people.stage import PeopleStage
from tasks.people_filters import FrameDetections, PeopleFilterParams
from tasks.stage import LabelStage, package_version, register_stage, split_params
from tasks.weights import REGISTRY, Need, need_file, registry_or_file, sha256_file

__all__ = ["YoloConfig", "YoloBackend", "yolo_people_stage"]

log = logging.getLogger(__name__)


@dataclass
class YoloConfig:
    # A registry name (file in the weights folder), a local .pt path, or a model .yaml. A .yaml builds
    # random weights: for tests of the plumbing only, never a default.
    weights: str = "yolo11n"
    person_class: int | None = None  # None: the class the checkpoint names "person"
    imgsz: int = 640
    # Raw detections down to this score go to ByteTrack, whose second association uses the low-score
    # ones (Ultralytics' own `track()` default); the filters count people at their own threshold.
    detect_conf: float = 0.1
    nms_iou: float = 0.7
    max_det: int = 300
    device: str | None = None  # None: Ultralytics picks (first GPU, else CPU)
    fp16: bool = False  # half-precision compute on a GPU (Ultralytics' `quantize=16`)
    batch: int = 30  # frames per forward pass
    tracker: str = "bytetrack.yaml"
    tracker_overrides: dict[str, float] = field(default_factory=dict)


def _resolve_yolo_weights(weights: str) -> tuple[str, Path | None]:
    """(what to hand to YOLO(), local file or None for a yaml); never lets Ultralytics download."""
    if weights.endswith((".yaml", ".yml")) and weights not in REGISTRY:
        return weights, None
    path = registry_or_file(weights, "YOLO", "yolo11n", choices=[n for n in REGISTRY if "yolo" in n])
    return str(path), path


def _enforce_ultralytics_switches() -> None:
    """If ultralytics was imported before this module set its switches, apply them to the live modules."""
    import ultralytics.nn.tasks as un_tasks
    import ultralytics.utils as un_utils
    import ultralytics.utils.checks as un_checks

    if not un_tasks.SAFE_LOAD or un_checks.AUTOINSTALL:
        log.warning("ultralytics was imported before unish set its switches; applying them in place")
        un_tasks.SAFE_LOAD = un_utils.SAFE_LOAD = True
        un_checks.AUTOINSTALL = un_utils.AUTOINSTALL = False


class YoloBackend:
    name = "yolo"

    def __init__(self, config: YoloConfig | None = None):
        self.config = config or YoloConfig()
        self.model: Any = None
        self.person_class: int = -1
        self.weights_sha256: str | None = None
        self._tracker_cfg: Any = None

    def weights_needed(self) -> list[Need]:
        """The checkpoint setup() will load (none for a model .yaml: random weights, tests only)."""
        w = self.config.weights
        if w.endswith((".yaml", ".yml")) and w not in REGISTRY:
            return []
        return [need_file(w, "people:yolo", "YOLO", "yolo11n", choices=[n for n in REGISTRY if "yolo" in n])]

    def setup(self) -> None:
        if self.model is not None:
            return
        source, path = _resolve_yolo_weights(self.config.weights)  # raises before ultralytics loads anything
        from ultralytics import YOLO
        from ultralytics.utils import YAML, IterableSimpleNamespace
        from ultralytics.utils.checks import check_yaml

        _enforce_ultralytics_switches()
        model = YOLO(source)
        if model.task != "detect":
            raise ValueError(f"{source}: a {model.task} model; people:yolo needs a detection checkpoint")
        names = {int(k): str(v) for k, v in model.names.items()}
        if self.config.person_class is not None:
            if self.config.person_class not in names:
                raise ValueError(f"person_class {self.config.person_class} not among the model's {len(names)} classes")
            self.person_class = self.config.person_class
        else:
            matches = [k for k, v in names.items() if v.lower() == "person"]
            if not matches:
                raise ValueError(
                    f"{source}: no class named 'person' (classes {list(names.values())[:5]}...); pass person_class"
                )
            self.person_class = matches[0]
        cfg = dict(YAML.load(check_yaml(self.config.tracker)))
        cfg.update(self.config.tracker_overrides)
        if cfg.get("tracker_type") != "bytetrack":
            raise ValueError(f"people:yolo tracks with ByteTrack; {self.config.tracker} is {cfg.get('tracker_type')!r}")
        self._tracker_cfg = IterableSimpleNamespace(**cfg)
        self.weights_sha256 = sha256_file(path) if path is not None else None
        self.model = model

    def new_tracker(self) -> Any:
        from ultralytics.trackers.byte_tracker import BYTETracker

        return BYTETracker(args=self._tracker_cfg)

    def predict(self, frames: np.ndarray) -> list[Any]:
        """Ultralytics' predictor on RGB frames (it expects BGR arrays); one Results per frame."""
        self.setup()
        c = self.config
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        results: list[Any] = []
        for i in range(0, len(bgr), max(1, c.batch)):
            results += self.model.predict(
                bgr[i : i + c.batch],
                imgsz=c.imgsz,
                conf=c.detect_conf,
                iou=c.nms_iou,
                classes=[self.person_class],
                max_det=c.max_det,
                device=c.device,
                verbose=False,
                **({"quantize": 16} if c.fp16 else {}),
            )
        return results

    def detect(self, frames: np.ndarray) -> list[FrameDetections]:
        results = self.predict(frames)
        # A fresh ByteTrack per window. (`YOLO.track()` on a list of frames would reset its tracker at
        # every frame, since each list item counts as a new source; so we drive the tracker ourselves.)
        tracker = self.new_tracker()
        out: list[FrameDetections] = []
        for res in results:
            boxes = res.boxes.cpu().numpy()
            ids = np.full(len(boxes), -1, np.int64)
            tracks = tracker.update(boxes, res.orig_img)  # rows: x1 y1 x2 y2 id score cls det_index
            for row in np.asarray(tracks).reshape(-1, 8):
                ids[int(row[7])] = int(row[4])
            out.append(FrameDetections.make(boxes.xyxy, boxes.conf, ids))
        return out

    def provenance(self) -> dict[str, Any]:
        import ultralytics

        return {
            "backend": self.name,
            "weights": self.config.weights,
            "weights_sha256": self.weights_sha256,
            "package_version": package_version("ultralytics", module=ultralytics),
            "detector": {**asdict(self.config), "person_class": self.person_class},
        }


@register_stage("people:yolo")
def yolo_people_stage(**params: Any) -> LabelStage:
    """people with YOLO + ByteTrack; params are YoloConfig and PeopleFilterParams fields."""
    config, filters = split_params("people:yolo", params, YoloConfig, PeopleFilterParams)
    return PeopleStage(YoloBackend(config), filters)
