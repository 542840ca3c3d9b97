"""people: detect and track persons over a clip window, then apply the paper's filters.  One module per idea:

- `yolo.py`: `people:yolo` (paper profile), an Ultralytics YOLO checkpoint from the weights folder, persons
  only, with Ultralytics' ByteTrack;
- `hog.py`: `people:hog` (lite profile, offline, CPU), OpenCV's HOG people detector and the IoU tracker;
- `external.py`: `people:external`, detections made elsewhere (another detector's run, annotation), read
  from a file by source and time (`--stage-param people:external.detections=dets.parquet`);
- `stage.py`: the stage around any backend (`PeopleStage`, the `DetectorBackend` interface);
- `tracker.py`: the IoU tracker the backends without one of their own use;
- `choice.py`: one person through a whole video's windows, for `unish infer` (no filters, not a stage).

The filters themselves are `tasks.people_filters`; box arithmetic is `unish_model.boxes`.  Every window gets a
fresh tracker, so track ids start at 1 and nothing carries over from one video or window to the next.  Importing
this package registers the three stages and, first, makes Ultralytics offline, install-free and weights-only.
"""
from tasks.weights import prepare_ultralytics_env

prepare_ultralytics_env()  # before anything can import ultralytics

from tasks.people.external import (  # noqa: E402
    DETECTION_COLUMNS,
    DetectionsFileError,
    DetectionsNotFound,
    ExternalBackend,
    ExternalConfig,
    external_people_stage,
    load_detections,
    match_frame_times,
    source_to_model_boxes,
)
from tasks.people.hog import HogBackend, HogConfig, hog_descriptor_class, hog_people_stage  # noqa: E402
from tasks.people.stage import STAGE_VERSION, DetectorBackend, PeopleStage, PeopleStageParams  # noqa: E402
from tasks.people.tracker import IoUTracker  # noqa: E402
from tasks.people.yolo import YoloBackend, YoloConfig, yolo_people_stage  # noqa: E402

__all__ = [
    "DETECTION_COLUMNS",
    "DetectionsFileError",
    "DetectionsNotFound",
    "DetectorBackend",
    "ExternalBackend",
    "ExternalConfig",
    "HogBackend",
    "HogConfig",
    "IoUTracker",
    "PeopleStage",
    "PeopleStageParams",
    "STAGE_VERSION",
    "YoloBackend",
    "YoloConfig",
    "external_people_stage",
    "hog_descriptor_class",
    "hog_people_stage",
    "load_detections",
    "match_frame_times",
    "source_to_model_boxes",
    "yolo_people_stage",
]
