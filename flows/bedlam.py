"""`unish bedlam ROOT --out DIR`: BEDLAM's released layout -> clips with ground truth, in curation's format.

The unit of work is one person of one sequence (a "track"; tasks/bedlam.py reads the layout and builds each clip).
A run goes scene by scene: read the scene's label npz, find its tracks, convert them (at most `workers` at once):
plan the windows, convert and stage each ok window (frames, meta.json and the gt, gt_depth, masks and people
families, written to a temporary folder and renamed), pack the staged clips into shards with curation's packer
(`tasks.pipeline.run_pack`: the same markers, digests and fault injection), and save the track's result.  Then the
index and videos tables (curation's `write_index`: one videos row per track, or per scene that could not be read),
and `bedlam.json` with the parameters and software.

The machinery is curation's: one writer per run folder (`shards.runfolder.run_lock`), the room check before any
work, atomic writes, completion markers checked first (a finished track whose shards are intact is not redone; a
clip staged before a crash is reused), tables written only when they change.  A killed run, rerun, ends as an
uninterrupted one; a finished run, rerun, does nothing and rewrites nothing.  Bad input (a scene without labels, an
unreadable npz, an object array that is not strings, a missing frame or depth file) is an error row naming the
file; the other scenes, tracks and clips go on.
"""
from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import flows.prefect_env  # noqa: F401  (sets Prefect defaults before it is imported)
import typer
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.params import ClipOutputConfig

BEDLAM_PARAMS_FILE = "bedlam.json"
WORK_SUBDIR = "bedlam"  # under _work: one folder per track
DEFAULT_LABELS_DIR = "processed_labels"
SMPLX_FILE = "SMPLX_NEUTRAL.npz"  # in the weights folder, when --smplx is not given
SMPLX2SMPL_FILE = "smplx2smpl_sparse.pt"
WHERE_SMPLX = ("register at https://smpl-x.is.tue.mpg.de and download the SMPL-X model (models_smplx_v1_1: "
               "SMPLX_NEUTRAL.npz, read without pickle); the SMPL-X -> SMPL vertex map (6890 x 10475) comes with "
               "the SMPL-X downloads' model-transfer data, or as GVHMR's smplx2smpl_sparse.pt (a sparse torch tensor; "
               "an .npz / .npy with one dense array also works)")


class BodyFilesMissing(FileNotFoundError):
    """A body-model file the labels need is not there (raised before any clip is converted)."""


class BedlamLayoutError(ValueError):
    """ROOT holds no BEDLAM scene, or a scene asked for is not there."""


class BedlamConfig(ClipOutputConfig):
    labels: str | None = Field(None, description="folder of <scene>.npz (default ROOT/processed_labels)")
    smpl: str | None = Field(None, description="SMPL .npz in unish's layout (default: the weights folder's)")
    smplx: str | None = Field(None, description=f"SMPL-X .npz (default: the weights folder's {SMPLX_FILE})")
    smplx2smpl: str | None = Field(None, description=f"SMPL-X -> SMPL map (default: the weights folder's "
                                   f"{SMPLX2SMPL_FILE})")
    scenes: list[str] | None = Field(None, description="only these scenes")
    workers: int = Field(2, ge=1, description="tracks converted at once")
    source_fps: float = Field(30.0, gt=0)
    max_fit_error_m: float = Field(0.02, gt=0)
    fit_iterations: int = Field(30, ge=1)
    fit_max_vertices: int = Field(1800, ge=100)
    depth_max_m: float = Field(1000.0, gt=0)
    occlusion_tolerance_m: float = Field(0.10, ge=0)
    mask_min_iou: float = Field(0.3, ge=0, le=1)
    min_mask_pixels: int = Field(64, ge=1)
    max_absent_frames: int = Field(0, ge=0)
    torch_threads: int = Field(1, ge=1, description="torch threads per run (tracks run in parallel: --workers)")

    def params(self) -> Any:
        from tasks.bedlam import BedlamParams

        return BedlamParams(
            window_frames=self.window_frames, window_fps=self.window_fps, source_fps=self.source_fps,
            stride_s=self.stride_s, jpeg_quality=self.jpeg_quality, max_fit_error_m=self.max_fit_error_m,
            fit_iterations=self.fit_iterations, fit_max_vertices=self.fit_max_vertices, depth_max_m=self.depth_max_m,
            occlusion_tolerance_m=self.occlusion_tolerance_m, mask_min_iou=self.mask_min_iou,
            min_mask_pixels=self.min_mask_pixels, max_absent_frames=self.max_absent_frames)

    def labels_dir(self, root: Path) -> Path:
        return Path(self.labels) if self.labels else Path(root) / DEFAULT_LABELS_DIR


# -- body models and labels, loaded once per process ---------------------------------------------------------

_CACHE_LOCK = threading.Lock()
_BODY_CACHE: dict[tuple, Any] = {}
_SHA_CACHE: dict[tuple, str] = {}
_LABELS_CACHE: dict[tuple, Any] = {}  # the current scene's labels (one at a time: scenes run one after another)


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _sha256(path: Path) -> str:
    from tasks.weights import sha256_file

    key = _file_key(path)
    with _CACHE_LOCK:
        if key not in _SHA_CACHE:
            _SHA_CACHE[key] = sha256_file(path)
        return _SHA_CACHE[key]


def body_files(config: BedlamConfig, need_smplx: bool) -> dict[str, Path]:
    """name -> file of every body-model file the run needs; BodyFilesMissing says which is missing and where it
    comes from."""
    from tasks.weights import weights_dir, weights_path

    files = {"smpl": Path(config.smpl) if config.smpl else weights_path("smpl_neutral")}
    if not files["smpl"].is_file():
        raise BodyFilesMissing(f"SMPL model {files['smpl']} not found: pass --smpl FILE.npz (register at "
                               "https://smpl.is.tue.mpg.de; convert the official .pkl once with `python -m "
                               "unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz`)")
    if need_smplx:
        files["smplx"] = Path(config.smplx) if config.smplx else weights_dir() / SMPLX_FILE
        files["smplx2smpl"] = Path(config.smplx2smpl) if config.smplx2smpl else weights_dir() / SMPLX2SMPL_FILE
        for name, option in (("smplx", "--smplx"), ("smplx2smpl", "--smplx2smpl")):
            if not files[name].is_file():
                raise BodyFilesMissing(f"the labels are SMPL-X, which needs {name} file {files[name]}: not found. "
                                       f"Pass {option} FILE; {WHERE_SMPLX}")
    return files


def load_bodies(files: dict[str, Path]) -> tuple[Any, dict[str, str]]:
    """(tasks.bedlam.Bodies, name -> sha256) for the files of `body_files`, loaded once per process."""
    import torch

    from tasks.bedlam import Bodies
    from unish_model.benchmarks.rich import load_smplx2smpl
    from unish_model.body import BodyModel, SmplxModel

    key = tuple(sorted((name, _file_key(path)) for name, path in files.items()))
    with _CACHE_LOCK:
        cached = _BODY_CACHE.get(key)
    if cached is None:
        smpl = BodyModel.from_file(files["smpl"])
        bodies = Bodies(smpl=smpl, smpl64=BodyModel.from_file(files["smpl"], dtype=torch.float64))
        if "smplx" in files:
            bodies.smplx = SmplxModel.from_file(files["smplx"])
            bodies.smplx2smpl = load_smplx2smpl(files["smplx2smpl"])
            want = (smpl.num_vertices, bodies.smplx.num_vertices)
            if tuple(bodies.smplx2smpl.shape) != want:
                raise ValueError(f"SMPL-X -> SMPL map {files['smplx2smpl']} is {tuple(bodies.smplx2smpl.shape)}; the "
                                 f"models given need {want} (SMPL vertices x SMPL-X vertices)")
        with _CACHE_LOCK:
            _BODY_CACHE.clear()
            _BODY_CACHE[key] = cached = bodies
    return cached, {name: _sha256(path) for name, path in files.items()}


def scene_labels(path: Path) -> Any:
    """The scene's labels (tasks.bedlam.read_labels), read once while its tracks convert."""
    from tasks.bedlam import read_labels

    key = _file_key(path)
    with _CACHE_LOCK:
        if key in _LABELS_CACHE:
            return _LABELS_CACHE[key]
    labels = read_labels(path)
    with _CACHE_LOCK:
        _LABELS_CACHE.clear()
        _LABELS_CACHE[key] = labels
    return labels


def labels_body(path: Path) -> str | None:
    """'smplx' or 'smpl' from the header of the npz's pose_cam alone (None when it cannot tell: the scene's
    conversion then reports the problem)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf, zf.open("pose_cam.npy") as fp:
            version = np.lib.format.read_magic(fp)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(fp)[0]
    except Exception:  # noqa: BLE001 (anything wrong is reported by the scene itself)
        return None
    return "smplx" if len(shape) == 2 and shape[1] == 165 else "smpl"


# -- one track ----------------------------------------------------------------------------------------------------


def _clip_done(clip_dir: Path, fingerprint: str, families: tuple[str, ...]) -> bool:
    from tasks import staging

    try:
        if not staging.is_ok(clip_dir):
            return False
        return all((staging.label_done(clip_dir, f) or {}).get("fingerprint") == fingerprint for f in families)
    except (OSError, ValueError):
        return False


def convert_track(out_dir: Path, scene: Any, track: Any, labels: Any, bodies: Any, weights: dict[str, str],
                  config: BedlamConfig, scene_row: int) -> dict:
    """Plan, convert, stage and pack one track; returns its videos row and index rows (and `skipped` when a
    finished result was reused, `repaired` when damaged shards of a finished track were found)."""
    from flows.curate import SHARD_DIR, VIDEO_MARKER, WORK_DIR, finished_video
    from shards.atomic import is_storage_error, write_json_atomic
    from shards.schema import STATUS_ERROR, STATUS_OK, STATUS_REJECTED
    from tasks import pipeline, staging
    from tasks.bedlam import (BEDLAM_VERSION, FAMILIES, UPRIGHT_ROTATION, BedlamInputError, convert_window,
                              plan_windows, provenance)
    from tasks.manifest import ManifestRow
    from tasks.stage import ClipRejected, package_version
    from unish_model.body.fit import FIT_VERSION

    params = config.params()
    limits = config.shard_limits()
    shard_dir = out_dir / SHARD_DIR
    workdir = out_dir / WORK_DIR / WORK_SUBDIR / track.source_id
    used = {k: v for k, v in weights.items() if k == "smpl" or labels.body == "smplx"}
    package = package_version("unish")
    fingerprint = pipeline.digest({
        "bedlam": BEDLAM_VERSION, "fit": FIT_VERSION, "params": params.to_dict(), "weights": used,
        "labels": list(_file_key(labels.path)[1:]), "rows": list(track.rows), "limits": asdict(limits)})
    row = ManifestRow(row=scene_row, source=track.source, kind="path", source_id=track.source_id, start_s=None,
                      end_s=None, recorded=track.source)
    saved, repaired = finished_video(workdir, shard_dir, fingerprint, config.verify_shards)
    if saved is not None:
        return {"video": saved["video"], "clips": saved["clips"], "skipped": True}
    windows = plan_windows(track, params)
    workdir.mkdir(parents=True, exist_ok=True)
    prov = {f: {**provenance(f, used, package, params), "fingerprint": fingerprint} for f in FAMILIES}
    for w in windows:
        clip_dir = workdir / "clips" / w["key"]
        if w["status"] != STATUS_OK:
            shutil.rmtree(clip_dir, ignore_errors=True)  # a verdict changed since: no stale clip may be packed
            continue
        if _clip_done(clip_dir, fingerprint, FAMILIES):
            continue  # staged by an earlier (interrupted) run with the same parameters
        try:
            result = convert_window(scene, track, w, labels, bodies, params)
        except ClipRejected as r:
            w.update(status=STATUS_REJECTED, reason=r.rule, message=r.detail, stats=r.stats)
        except BedlamInputError as e:
            w.update(status=STATUS_ERROR, reason=e.reason, message=str(e))
        except Exception as e:  # one clip's failure is recorded on that clip; the others go on
            if is_storage_error(e, out_dir):
                raise
            w.update(status=STATUS_ERROR, reason=type(e).__name__, message=str(e))
        else:
            staging.stage_window(clip_dir, result.frames, result.meta,
                                 {"status": STATUS_OK, "reason": "", "message": "", "stats": result.stats},
                                 params.jpeg_quality, labels={f: (result.labels[f], prov[f]) for f in FAMILIES})
            continue
        shutil.rmtree(clip_dir, ignore_errors=True)
    clips = pipeline.run_pack(row, workdir, windows, list(FAMILIES), shard_dir, limits, fingerprint)
    if windows:
        vrow = pipeline.video_row(row, STATUS_OK, path=track.source, clip_rows=clips)
    else:
        vrow = pipeline.video_row(row, STATUS_REJECTED, "too_short", f"person {track.person}'s labelled frames span "
                                  f"less than one {params.window_seconds:g} s window", path=track.source,
                                  clip_rows=clips)
    vrow.update(fps=params.source_fps, codec="png", rotation=UPRIGHT_ROTATION if scene.rotated else 0,
                duration_s=round((track.frames[-1] - track.frames[0] + 1) / params.source_fps, 6))
    if not any(c["status"] == STATUS_ERROR for c in clips):  # a clip error is retried by the next run
        write_json_atomic(workdir / VIDEO_MARKER, {"fingerprint": fingerprint, "video": vrow, "clips": clips})
    return {"video": vrow, "clips": clips, "repaired": repaired}


@task(name="bedlam-track", cache_policy=NO_CACHE, task_run_name="bedlam-{track.source_id}")
def track_task(out: str, scene: Any, track: Any, labels_path: str, files: dict[str, str], config: BedlamConfig,
               scene_row: int) -> dict:
    """One track; never raises for bad input (the error is the track's videos row and the others go on), only
    when the output's storage fails."""
    from shards.atomic import is_storage_error
    from shards.schema import STATUS_ERROR
    from tasks import pipeline
    from tasks.manifest import ManifestRow

    try:
        labels = scene_labels(Path(labels_path))
        bodies, weights = load_bodies({k: Path(v) for k, v in files.items()})
        return convert_track(Path(out), scene, track, labels, bodies, weights, config, scene_row)
    except Exception as e:  # an unexpected failure of one track must not stop the others
        if is_storage_error(e, Path(out)):
            raise
        row = ManifestRow(row=scene_row, source=track.source, kind="path", source_id=track.source_id, start_s=None,
                          end_s=None, recorded=track.source)
        reason = getattr(e, "reason", type(e).__name__)
        return {"video": pipeline.video_row(row, STATUS_ERROR, reason, str(e), path=track.source), "clips": []}


# -- the flow -----------------------------------------------------------------------------------------------------


def first_shard_bytes(config: BedlamConfig) -> int:
    return int(min(config.shard_max_mb * 2**20, config.shard_max_samples * 8 * 2**20))


def _scene_row(scene: Any, row: int, reason: str, message: str) -> dict:
    from shards.schema import STATUS_ERROR, safe_id

    source = f"{scene.name}/png" if scene.folder is not None else f"{scene.name}.npz"
    return {"source": source, "source_id": safe_id(scene.name, max_len=160), "row": row, "status": STATUS_ERROR,
            "reason": reason, "message": message, "path": ""}


def record_parameters(out_dir: Path, config: BedlamConfig, weights: dict[str, str]) -> bool:
    """bedlam.json (the conversion's parameters, body-model digests and software), written only if it changed."""
    import importlib.metadata

    from shards.atomic import write_json_atomic
    from tasks.bedlam import BEDLAM_VERSION

    software = {}
    for dist in ("unish", "numpy", "torch", "OpenEXR", "opencv-python-headless", "opencv-python", "webdataset"):
        try:
            software[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    record = {"params": {**config.params().to_dict(), "bedlam_version": BEDLAM_VERSION},
              "body_models_sha256": weights, "software": software}
    path = out_dir / BEDLAM_PARAMS_FILE
    try:
        if json.loads(path.read_text()) == record:
            return False
    except (OSError, ValueError):
        pass
    write_json_atomic(path, record)
    return True


@flow(name="bedlam", log_prints=False, validate_parameters=True)
def bedlam_flow(root: str, out: str, config: BedlamConfig = BedlamConfig()) -> dict:
    from shards.runfolder import check_writable, run_lock

    out_dir = Path(out)
    check_writable(out_dir, first_shard_bytes(config))
    with run_lock(out_dir, f"unish bedlam {root}") as lock:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(config.torch_threads)  # parallel tracks, not parallel ops: threads only fight here
        try:
            return _bedlam_locked(Path(root), out_dir, config, lock.took_over.describe() if lock.took_over else "")
        finally:
            torch.set_num_threads(threads)


def _bedlam_locked(root: Path, out_dir: Path, config: BedlamConfig, took_over: str) -> dict:
    from flows.curate import SHARD_DIR, set_aside_unindexed_shards, write_index
    from shards.atomic import remove_temp_files
    from tasks.bedlam import BedlamInputError, find_tracks, list_scenes

    logger = get_run_logger()
    if took_over:
        logger.warning("%s: taking over from %s, which ended without finishing", out_dir, took_over)
    remove_temp_files(out_dir / SHARD_DIR)  # we hold the lock: every temporary file is a dead writer's
    labels_dir = config.labels_dir(root)
    # a scene's row number is its place among all scenes under ROOT, whichever are converted now
    rows = {s.name: row for row, s in enumerate(list_scenes(root, labels_dir), start=1)}
    scenes = list_scenes(root, labels_dir)
    if config.scenes:
        unknown = sorted(set(config.scenes) - set(rows))
        if unknown:
            raise BedlamLayoutError(f"no scene {', '.join(unknown)} under {root} (frames) or {labels_dir} (labels)")
        scenes = [s for s in scenes if s.name in set(config.scenes)]
    if not scenes:
        raise BedlamLayoutError(f"{root} holds no BEDLAM scene: expected ROOT/<scene>/png/<seq>/*.png and "
                                f"{labels_dir}/<scene>.npz (see `unish bedlam --help`)")
    # fail before any clip is converted when the labels need body-model files that are not there
    need_smplx = any(s.folder is not None and s.labels is not None and labels_body(s.labels) == "smplx"
                     for s in scenes)
    files = body_files(config, need_smplx)
    _, weights = load_bodies(files)
    videos: list[dict] = []
    clips: list[dict] = []
    skipped = repaired = 0
    for scene in scenes:
        row = rows[scene.name]
        if scene.folder is None:
            videos.append(_scene_row(scene, row, "no_frames", f"labels {scene.labels} have no scene folder "
                                     f"{root / scene.name}/png"))
            continue
        if scene.labels is None:
            videos.append(_scene_row(scene, row, "no_labels", f"{root / scene.name}: no labels "
                                     f"{labels_dir / (scene.name + '.npz')}"))
            continue
        try:
            tracks = find_tracks(scene_labels(scene.labels), scene.name)
        except BedlamInputError as e:
            videos.append(_scene_row(scene, row, e.reason, str(e)))
            continue
        futures = [track_task.submit(str(out_dir), scene, t, str(scene.labels), {k: str(v) for k, v in files.items()},
                                     config, row) for t in tracks]
        for future in futures:
            result = future.result()
            videos.append(result["video"])
            clips.extend(result["clips"])
            skipped += bool(result.get("skipped"))
            for problem in result.get("repaired") or []:
                logger.warning("%s: repacking, shard damaged: %s", result["video"]["source_id"], problem)
            repaired += bool(result.get("repaired"))
    wrote = write_index(out_dir, videos, clips)
    record_parameters(out_dir, config, weights)
    moved = set_aside_unindexed_shards(out_dir, clips)
    return {"scenes": len(scenes), "tracks": sum(1 for v in videos if v.get("n_windows") is not None),
            "videos": len(videos), "clips": len(clips), "ok": sum(c["status"] == "ok" for c in clips),
            "skipped": skipped, "repaired": repaired, "tables_written": wrote, "set_aside": moved}


def run_bedlam(root: str | Path, out: str | Path, config: BedlamConfig = BedlamConfig()) -> dict:
    """Run the flow with `config.workers` tracks at once."""
    configured = bedlam_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.workers))
    return configured(str(root), str(out), config)


# -- command line ---------------------------------------------------------------------------------------------------


_DEFAULTS = BedlamConfig()  # the flags' defaults are the configuration's


def bedlam(
    root: Path = typer.Argument(..., help="BEDLAM root: ROOT/<scene>/png/<seq>/*.png, ROOT/<scene>/depth/<seq>/"
                                "*_depth.exr, optional ROOT/<scene>/masks/<seq>/*.png"),
    out: Path = typer.Option(..., "--out", help="output folder (shards/, index.parquet, videos.parquet)"),
    labels: Optional[Path] = typer.Option(None, help="folder of the processed label files <scene>.npz "
                                          "(default ROOT/processed_labels)"),
    smpl: Optional[Path] = typer.Option(None, help="SMPL model .npz in unish's layout (default: the weights "
                                        "folder's SMPL_NEUTRAL.npz; register at smpl.is.tue.mpg.de)"),
    smplx: Optional[Path] = typer.Option(None, help="SMPL-X model SMPLX_NEUTRAL.npz, for SMPL-X labels (register "
                                         "at smpl-x.is.tue.mpg.de; default: the weights folder's)"),
    smplx2smpl: Optional[Path] = typer.Option(None, help="SMPL-X -> SMPL vertex map (6890 x 10475): the SMPL-X "
                                              "downloads' transfer data or GVHMR's smplx2smpl_sparse.pt (default: "
                                              "the weights folder's)"),
    max_fit_error: float = typer.Option(_DEFAULTS.max_fit_error_m, "--max-fit-error", min=0.0,
                                        help="fit bound, metres: a clip with a frame whose SMPL fit to the SMPL-X "
                                        "body is worse (mean vertex distance) is rejected (fit_error)"),
    scene: list[str] = typer.Option([], "--scene", help="convert only this scene (repeatable)"),
    workers: int = typer.Option(_DEFAULTS.workers, min=1, help="tracks (one person of one sequence) converted at once"),
    window_frames: int = typer.Option(_DEFAULTS.window_frames, min=1, help="frames per clip"),
    window_fps: float = typer.Option(_DEFAULTS.window_fps, help="frames per second inside a clip (BEDLAM's labels: 6)"),
    stride: Optional[float] = typer.Option(None, help="seconds between window starts (default: back to back)"),
    shard_max_mb: float = typer.Option(_DEFAULTS.shard_max_mb, help="shard size bound"),
    verify_shards: bool = typer.Option(_DEFAULTS.verify_shards, help="check the digests of every finished shard"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Convert BEDLAM (synthetic, with ground truth: stage 2's data) into clips with labels, like `curate`.

    Layout: ROOT/<scene>/png/<seq>/<seq>_NNNN.png (30 fps frames; scenes whose name contains "closeup" are stored
    rotated and are turned upright, 90 degrees clockwise), ROOT/<scene>/depth/<seq>/<seq>_NNNN_depth.exr (channel
    Depth, centimetres), optional ROOT/<scene>/masks/<seq>/<seq>_NNNN_<actor>_<body|clothing|hair>.png, and the
    processed labels LABELS/<scene>.npz (BEDLAM's df_full_body.py: imgname, pose_cam, shape, trans_cam, cam_int,
    cam_ext, gender, sub). Camera: cam_int and cam_ext from that npz (the ground_truth/camera CSVs are not read).

    Bodies: SMPL-X labels are converted to SMPL by a fit to the SMPL-X vertices mapped to SMPL's topology; this
    needs the SMPL-X model (--smplx) and the SMPL-X -> SMPL map (--smplx2smpl), both from the SMPL-X downloads
    after registration at smpl-x.is.tue.mpg.de (the map also as GVHMR's smplx2smpl_sparse.pt). Labels that are
    SMPL already (pose 72, betas 10) are taken as they are. Clips: 30 frames at 6 fps (5 s), 518x294 (closeups
    294x518), families gt, gt_depth, masks, people; read them with ClipLoader(stage=2).
    """
    from rich.console import Console

    from flows import exitcodes
    from flows.cmdline import fail, say
    from flows.report import print_funnel
    from shards.index import compute_funnel, read_index
    from shards.runfolder import NotEnoughSpace, OutputNotWritable, RunLocked, check_unlocked, check_writable

    if not root.is_dir():
        raise fail(f"BEDLAM root {root} is not a folder", exitcodes.USAGE)
    try:
        config = BedlamConfig(
            labels=str(labels) if labels else None, smpl=str(smpl) if smpl else None,
            smplx=str(smplx) if smplx else None, smplx2smpl=str(smplx2smpl) if smplx2smpl else None,
            scenes=scene or None, workers=workers, window_frames=window_frames, window_fps=window_fps,
            stride_s=stride, max_fit_error_m=max_fit_error, shard_max_mb=shard_max_mb, verify_shards=verify_shards)
        config.params().step  # noqa: B018 (checks that the window fps divides the source fps)
        check_writable(out, first_shard_bytes(config))
        check_unlocked(out)
        summary = run_bedlam(root, out, config)
    except (RunLocked, OutputNotWritable, NotEnoughSpace, BodyFilesMissing, BedlamLayoutError) as e:
        raise fail(str(e), exitcodes.FAILED) from None
    except ValueError as e:  # parameters that do not fit, a map that does not fit the models
        raise fail(str(e), exitcodes.USAGE) from None
    except OSError as e:  # the output's disk failed: finished tracks are kept
        raise fail(f"stopped: {e}; finished tracks are kept, run again to finish", exitcodes.FAILED) from None
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    index, videos = read_index(out)
    print_funnel(compute_funnel(index, videos), Console())
    for v in videos.to_pylist():
        if v["status"] == "error":
            say(f"error: {v['source']} {v['reason']}: {v['message']}", "yellow")
