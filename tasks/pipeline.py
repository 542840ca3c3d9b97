"""The per-video chain as plain functions on paths: probe -> segment -> label stages -> pack.

Each step checks its own completion marker first, so a rerun after a crash redoes only what did not
finish; the Prefect wrappers in flows/curate.py add orchestration, retries and cache keys on top.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards.atomic import remove_temp_files
from shards.index import rows_to_table
from shards.runfolder import handled_logger
from shards.schema import INDEX_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_REJECTED, clip_key
from shards.verify import Problem, check_shard, expected_clips
from shards.writer import ShardLimits, ShardWriter, shard_glob, shard_temp_glob
from tasks.decode import WindowOutcome, frame_geometry, segment_video
from tasks.fetch import Fetched
from tasks.manifest import ManifestRow
from tasks.probe import VideoInfo, probe_video
from tasks.shots import ShotParams, WindowParams
from tasks.stage import ClipRejected, LabelStage
from tasks import staging

_handled = handled_logger()  # a clip's error, with its traceback, for the run's log file

SPINE_VERSION = "3"  # bump when segment/pack output changes: invalidates cached work (2: frame_gap, digests;
#                     3: sources recorded as given, local files relative to the manifest)
# Completion markers in a video's work folder (see tasks/staging.py for the layout).
PROBE_MARKER = "probe.json"
SEGMENT_MARKER = "segment.json"
PACK_MARKER = "rows.json"


@dataclass(frozen=True)
class SpineParams:
    windows: WindowParams = field(default_factory=WindowParams)
    shots: ShotParams = field(default_factory=ShotParams)
    jpeg_quality: int = 92
    shard_limits: ShardLimits = field(default_factory=ShardLimits)

    def fingerprint(self) -> str:
        return digest({"spine": SPINE_VERSION, **asdict(self)})


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def video_workdir(work: Path, row: ManifestRow) -> Path:
    return Path(work) / row.source_id / row.span_tag


def shard_prefix(row: ManifestRow) -> str:
    return f"{row.source_id}-{row.span_tag}"


# -- probe ---------------------------------------------------------------------------------------


def run_probe(fetched: Fetched, workdir: Path) -> VideoInfo:
    marker = workdir / PROBE_MARKER
    if marker.exists():
        data = staging.read_json(marker)
        if data.get("path") == fetched.path:
            return VideoInfo(**data)
    info = probe_video(fetched.path)
    workdir.mkdir(parents=True, exist_ok=True)
    staging.write_json_atomic(marker, info.to_dict())
    return info


# -- segment: decode once, cut detection, windows -> staged clips --------------------------------


class SpanOutOfRange(Exception):
    reason = "span_out_of_range"


def run_segment(
    row: ManifestRow, fetched: Fetched, info: VideoInfo, workdir: Path, params: SpineParams
) -> list[dict]:
    marker = workdir / SEGMENT_MARKER
    fp = params.fingerprint()
    if marker.exists():
        data = staging.read_json(marker)
        if data.get("fingerprint") == fp and all((workdir / "clips" / w["key"]).is_dir()
                                                 for w in data["windows"] if w["status"] == STATUS_OK):
            return data["windows"]
    file_end = fetched.section_start_s + info.duration_s
    start = row.start_s if row.start_s is not None else fetched.section_start_s
    if start >= file_end:
        raise SpanOutOfRange(f"start {start:.3f} s is past the end of the video ({file_end:.3f} s)")
    end = row.end_s
    clips_dir = workdir / "clips"
    shutil.rmtree(clips_dir, ignore_errors=True)
    clips_dir.mkdir(parents=True, exist_ok=True)
    geom = frame_geometry(info)
    windows: list[dict] = []

    def on_window(w: WindowOutcome) -> None:
        key = clip_key(row.source_id, w.start_s, w.end_s)
        summary = {"key": key, "start_s": w.start_s, "end_s": w.end_s, "status": w.status, "reason": w.reason,
                   "message": w.message, "stats": w.stats}
        if w.status == STATUS_OK:
            assert w.frames is not None and w.frame_times_s is not None
            meta = {
                "key": key, "source": row.recorded_source, "source_id": row.source_id, "start_s": w.start_s,
                "end_s": w.end_s, "frame_times_s": [round(float(t), 6) for t in w.frame_times_s],
                "fps": params.windows.fps, "width": geom.out_width, "height": geom.out_height,
                "geometry": geom.to_dict(), "source_fps": info.fps, "codec": info.codec,
                "jpeg_quality": params.jpeg_quality,
            }
            staging.stage_window(clips_dir / key, w.frames, meta, {k: summary[k] for k in ("status", "reason", "message", "stats")}, params.jpeg_quality)
        windows.append(summary)

    report = segment_video(info, fetched.section_start_s, (start, end), on_window, params.windows, params.shots, geom)
    if end is not None and end > file_end + 0.5:
        for w in windows:
            w["stats"]["span_clamped_to_s"] = round(file_end, 3)
    staging.write_json_atomic(marker, {"fingerprint": fp, "windows": windows, "cuts_s": report.cuts_s,
                                       "frames_decoded": report.frames_decoded, "decode_error": report.decode_error})
    return windows


# -- labelling stages ----------------------------------------------------------------------------


def stage_fingerprint(stage: LabelStage) -> str:
    """What a stage's output depends on: name, version, parameters and weights (from its provenance)."""
    params: Any = getattr(stage, "params", None)
    if params is not None and hasattr(params, "__dataclass_fields__"):
        params = asdict(params)
    provenance = stage.provenance() if callable(getattr(stage, "provenance", None)) else {}
    identity = {k: provenance.get(k) for k in ("backend", "weights_sha256", "params", "version")}
    return digest({"name": stage.name, "version": stage.version, "params": params, "provenance": identity})


def stage_chain_fingerprints(stages: list[LabelStage]) -> list[str]:
    """Each stage's fingerprint folded with those before it: a stage that reads upstream labels
    (masks read people boxes) is redone when an upstream stage changes."""
    out, acc = [], ""
    for stage in stages:
        acc = digest([acc, stage_fingerprint(stage)])
        out.append(acc)
    return out


def reopen_stale_clips(workdir: Path, windows: list[dict], stage_fps: dict[str, str]) -> int:
    """Give clips another chance where the verdict on them is out of date: every clip error (it may
    have been transient), and every rejection by a stage that has since changed or left the chain.
    `stage_fps` maps each stage name of the current chain to its chain fingerprint."""
    reopened = 0
    for w in windows:
        clip_dir = workdir / "clips" / w["key"]
        if w["status"] != STATUS_OK or not clip_dir.exists():
            continue
        status = staging.clip_status(clip_dir)
        by = status.get("stage")
        if by is None or status["status"] == STATUS_OK:
            continue
        if status["status"] == STATUS_ERROR or stage_fps.get(by) != status.get("fingerprint"):
            stats = {k: v for k, v in status.get("stats", {}).items() if k != by}
            staging.remove_evidence(clip_dir)
            staging.set_clip_status(clip_dir, {"status": STATUS_OK, "reason": "", "message": "", "stats": stats})
            reopened += 1
    return reopened


def run_label_stage(stage: LabelStage, workdir: Path, windows: list[dict], fp: str | None = None) -> dict[str, int]:
    """Run one labelling stage over the video's ok clips; returns counts (labelled, rejected, skipped).
    `fp` is the stage's chain fingerprint (see `stage_chain_fingerprints`); by default its own."""
    fp = fp or stage_fingerprint(stage)
    counts = {"labelled": 0, "rejected": 0, "errors": 0, "skipped": 0}
    for w in windows:
        clip_dir = workdir / "clips" / w["key"]
        if w["status"] != STATUS_OK or not clip_dir.exists():
            continue
        status = staging.clip_status(clip_dir)
        if status["status"] != STATUS_OK:
            continue
        done = staging.label_done(clip_dir, stage.name)
        if done is not None and done.get("fingerprint") == fp:
            counts["skipped"] += 1
            continue
        clip = staging.load_clip(clip_dir)
        try:
            clip = stage(clip)
        except ClipRejected as r:
            stats = {**status.get("stats", {}), stage.name: r.stats}
            if r.evidence:  # before the status: a crash between the two leaves an ok clip with stray evidence
                staging.write_evidence(clip_dir, r.evidence)
            staging.set_clip_status(clip_dir, {"status": STATUS_REJECTED, "reason": r.rule, "message": r.detail,
                                              "stats": stats, "stage": stage.name, "fingerprint": fp})
            counts["rejected"] += 1
            continue
        except Exception as e:  # one clip's failure is recorded on that clip; the video's other clips go on
            _handled.error("%s: %s: %s: %s", w["key"], stage.name, type(e).__name__, e, exc_info=True)
            staging.set_clip_status(clip_dir, {"status": STATUS_ERROR, "reason": type(e).__name__,
                                              "message": f"{stage.name}: {e}", "stats": status.get("stats", {}),
                                              "stage": stage.name, "fingerprint": fp})
            counts["errors"] += 1
            continue
        provenance = {**clip.provenance.get(stage.name, {}), "version": stage.version, "fingerprint": fp}
        staging.write_labels(clip_dir, stage.name, clip.labels.get(stage.name, {}), provenance)
        counts["labelled"] += 1
    return counts


# -- pack ----------------------------------------------------------------------------------------

# Fault injection for the crash-safety tests: slow packing so a SIGKILL lands mid-shard, or hold it
# until a file appears (bounded) so a second run can be started against a run known to be mid-pack.
_PACK_DELAY_S = float(os.environ.get("UNISH_FAULT_PACK_DELAY_S", "0") or 0)
_PACK_WAIT_FILE = os.environ.get("UNISH_FAULT_PACK_WAIT_FILE", "")


def _fault_pause() -> None:
    if _PACK_DELAY_S:
        time.sleep(_PACK_DELAY_S)
    deadline = time.monotonic() + 120
    while _PACK_WAIT_FILE and not Path(_PACK_WAIT_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def chain_fingerprint(params: SpineParams, stage_fps: list[str]) -> str:
    """What a video's finished result depends on: the spine's parameters and every stage's
    (`stage_fps` from `stage_chain_fingerprints`)."""
    return digest({"spine": params.fingerprint(), "stages": stage_fps})


def run_pack(
    row: ManifestRow, workdir: Path, windows: list[dict], families: list[str], shard_dir: Path, limits: ShardLimits,
    fingerprint: str = "",
) -> list[dict]:
    """Write the video's ok clips to shards and return its index rows (also saved as rows.json, with the
    shards' sizes and times for `shards_changed`)."""
    marker = workdir / PACK_MARKER
    if marker.exists():
        saved = staging.read_json(marker)
        if saved.get("fingerprint") == fingerprint:
            return saved["rows"]
    prefix = shard_prefix(row)
    shard_dir = Path(shard_dir)
    remove_temp_files(shard_dir, shard_temp_glob(prefix))
    for stale in shard_dir.glob(shard_glob(prefix)):
        stale.unlink()  # a crash between shard close and rows.json, or a repair: rewrite the video's shards whole
    rows: list[dict] = []
    try:
        with ShardWriter(shard_dir, prefix, limits) as writer:
            for w in windows:
                clip_dir = workdir / "clips" / w["key"]
                status = staging.clip_status(clip_dir) if clip_dir.exists() else w
                out = {
                    "key": w["key"], "source": row.recorded_source, "source_id": row.source_id, "row": row.row,
                    "start_s": w["start_s"], "end_s": w["end_s"], "status": status["status"],
                    "reason": status.get("reason", ""), "message": status.get("message", ""),
                    "stats": json.dumps(status.get("stats", {}), sort_keys=True),
                }
                if status["status"] == STATUS_OK:
                    out["n_frames"] = staging.check_complete(clip_dir)
                    members = staging.sample_members(clip_dir, families)
                    meta = json.loads(members["meta.json"])
                    out["shard"] = writer.write(members)
                    written = writer.written[-1]
                    out["bytes"], out["members"], out["sha256"] = written.bytes, written.digest.members, written.digest.sha256
                    out["width"], out["height"] = meta["width"], meta["height"]
                    out["labels"] = json.dumps({f: meta["labels"][f].get("version") for f in families}, sort_keys=True)
                    _fault_pause()
                rows.append(out)
    except staging.StagedClipDamaged:
        (workdir / SEGMENT_MARKER).unlink(missing_ok=True)  # stage the video's clips again on the next run
        raise
    if not any(r["status"] == STATUS_ERROR for r in rows):  # errors are retried by the next run
        staging.write_json_atomic(marker, {"fingerprint": fingerprint, "rows": rows,
                                           "shards": shard_stats(shard_dir, writer.shards)})
    return rows


def shard_stats(shard_dir: Path, names: list[str]) -> dict[str, list[int]]:
    """name -> [size, mtime_ns] of each shard as written: a later run compares them to notice a changed file."""
    out = {}
    for name in names:
        st = (Path(shard_dir) / name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def shards_changed(workdir: Path, shard_dir: Path, rows: list[dict], full: bool = False) -> list[Problem]:
    """Problems of a finished video's shards: each shard whose size or time differs from what the pack
    recorded (every shard with `full`) is checked against the video's index rows."""
    try:
        recorded: dict[str, list[int]] = staging.read_json(workdir / PACK_MARKER).get("shards", {})
    except (OSError, ValueError):
        recorded = {}  # nothing to compare with: check every shard
    expected = expected_clips(rows_to_table(rows, INDEX_SCHEMA))
    problems: list[Problem] = []
    for name, clips in expected.items():
        path = Path(shard_dir) / name
        if not full and path.exists() and name in recorded:
            st = path.stat()
            if [st.st_size, st.st_mtime_ns] == recorded[name]:
                continue
        found, _ = check_shard(path, clips)
        problems.extend(found)
    return problems


def forget_packed(workdir: Path) -> None:
    """Make the next pack of this video rewrite its shards (after damage was found)."""
    (workdir / PACK_MARKER).unlink(missing_ok=True)


def video_row(row: ManifestRow, status: str, reason: str = "", message: str = "", info: VideoInfo | None = None,
              path: str = "", clip_rows: list[dict] | None = None) -> dict:
    out: dict[str, Any] = {"source": row.recorded_source, "source_id": row.source_id, "row": row.row,
                           "start_s": row.start_s, "end_s": row.end_s, "status": status, "reason": reason,
                           "message": message, "path": path}
    if info is not None:
        out.update(duration_s=info.duration_s, fps=info.fps, width=info.width, height=info.height,
                   codec=info.codec, rotation=info.rotation)
    if clip_rows is not None:
        out["n_windows"] = len(clip_rows)
        out["n_ok"] = sum(r["status"] == STATUS_OK for r in clip_rows)
    return out


ERROR_STATUS = STATUS_ERROR
