"""A release folder: what may be published of a curated run, i.e. video IDs and timestamps, never frames.

  clips.parquet, clips.csv   one row per ok clip: key, source id, source (id, URL or path relative to the
                             manifest), start/end in seconds, window parameters, the label versions a rebuild
                             should reproduce (JSON)
  manifest.csv               `source,start,end,id`: `unish curate` takes it as it is to rebuild the clips
  README.md                  the dataset card (Hugging Face form: YAML header, then the facts)
  release.json               what the card is rendered from (counts at release, funnel, parameters, licence,
                             contact); a takedown renders the card again from it and the tables

Every file is written under a temporary name and renamed, and only when its bytes change, so a release (or a
takedown of one) run twice writes nothing the second time. Parquet is written uncompressed: a byte scan of the
folder sees every string it holds.
"""
from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from shards.atomic import atomic_path

RELEASE_FILE = "release.json"
CLIPS_PARQUET = "clips.parquet"
CLIPS_CSV = "clips.csv"
MANIFEST_CSV = "manifest.csv"
CARD_FILE = "README.md"
RELEASE_FILES = (CLIPS_PARQUET, CLIPS_CSV, MANIFEST_CSV, RELEASE_FILE, CARD_FILE)
MANIFEST_COLUMNS = ("source", "start", "end", "id")
DEFAULT_LICENSE = "cc-by-4.0"
DEFAULT_CONTACT = "a discussion titled 'Takedown' on this dataset's page (its Community tab)"
RUN_PARAMS_FILE = "curate.json"  # in a run folder: the curation's parameters and software, for the card
RUN_RELEASES_FILE = "releases.json"  # in a run folder: the release folders made from it (a takedown visits them)

CLIPS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source_id", pa.string()),
        ("source", pa.string()),  # YouTube ID, URL, or a local path relative to the manifest
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("n_frames", pa.int32()),
        ("fps", pa.float64()),  # frames per second inside the window
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("window_s", pa.float64()),  # the curation's window parameters
        ("window_frames", pa.int32()),
        ("window_fps", pa.float64()),
        ("stride_s", pa.float64()),  # null: windows back to back
        ("labels", pa.string()),  # JSON list: family, version (main or a relabel's), backend, weights sha256, ...
    ]
)

# HF's size categories, by number of rows (clips).
_SIZE_CATEGORIES = [(1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                    (1e7, "1M<n<10M"), (1e8, "10M<n<100M"), (1e9, "100M<n<1B")]
_TASKS = {"depth": "depth-estimation", "keypoints": "keypoint-detection", "masks": "image-segmentation",
          "people": "object-detection"}


class NotARelease(FileNotFoundError):
    """The folder holds no release (no release.json)."""


# ------------------------------------------------------------------------------------------ reading shards


def read_metas(shard: Path, keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """key -> meta.json of the samples in one shard (only `keys` when given), without reading any frame."""
    wanted = None if keys is None else set(keys)
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(shard, "r:") as tf:
        for member in tf:
            key, _, name = member.name.partition(".")
            if name != "meta.json" or (wanted is not None and key not in wanted):
                continue
            f = tf.extractfile(member)
            if f is not None:
                out[key] = json.loads(f.read())
    return out


# ------------------------------------------------------------------------------------------ files


def is_release(folder: Path) -> bool:
    return (Path(folder) / RELEASE_FILE).is_file()


def parquet_bytes(rows: Sequence[Mapping[str, Any]], schema: pa.Schema = CLIPS_SCHEMA) -> bytes:
    table = pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")
    return buf.getvalue()


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else _csv_value(r.get(c)) for c in columns])
    return buf.getvalue().encode()


def _csv_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:.1f}"
    return str(value)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


def write_if_changed(path: Path, data: bytes, before_rename: Callable[[], None] | None = None) -> bool:
    """Write `data` to `path` atomically unless it already holds exactly that; `before_rename` runs between
    the temporary file's write and its rename (fault injection)."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if before_rename:
            before_rename()
    return True


def release_file_bytes(info: Mapping[str, Any], clips: Sequence[Mapping[str, Any]],
                       manifest: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    """Every file of a release, by name, as bytes (a function of its three inputs only)."""
    clips = sorted(clips, key=lambda c: c["key"])
    return {
        CLIPS_PARQUET: parquet_bytes(clips),
        CLIPS_CSV: csv_bytes(clips, CLIPS_SCHEMA.names),
        MANIFEST_CSV: csv_bytes(manifest, MANIFEST_COLUMNS),
        RELEASE_FILE: json_bytes(dict(info)),
        CARD_FILE: render_card(info, clips, manifest).encode(),
    }


def write_release(folder: Path, info: Mapping[str, Any], clips: Sequence[Mapping[str, Any]],
                  manifest: Sequence[Mapping[str, Any]], fault: Callable[[str], None] | None = None) -> list[str]:
    """Write (only) the release files whose bytes change; returns their names. Tables first, the card last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in release_file_bytes(info, clips, manifest).items():
        if write_if_changed(folder / name, data, (lambda n=name: fault(f"release:{n}")) if fault else None):
            written.append(name)
    return written


def read_release(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(release.json, clip rows, manifest rows) of a release folder."""
    folder = Path(folder)
    if not is_release(folder):
        raise NotARelease(f"{folder} is not a release: missing {RELEASE_FILE}")
    info = json.loads((folder / RELEASE_FILE).read_text())
    clips = pq.read_table(folder / CLIPS_PARQUET).to_pylist()
    with open(folder / MANIFEST_CSV, newline="", encoding="utf-8") as f:
        manifest = [dict(r) for r in csv.DictReader(f)]
    return info, clips, manifest


# ------------------------------------------------------------------------------------------ the card


def size_category(n: int) -> str:
    return next((name for bound, name in _SIZE_CATEGORIES if n < bound), "n>1B")


def clip_labels(clip: Mapping[str, Any]) -> list[dict[str, Any]]:
    return json.loads(clip.get("labels") or "[]")


def label_table(clips: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (family, version, backend, stage version, weights, package) with its clip count."""
    counts: Counter = Counter()
    for clip in clips:
        for lab in clip_labels(clip):
            ident = tuple((k, lab.get(k)) for k in ("family", "version", "backend", "stage_version",
                                                    "weights_sha256", "package_version"))
            counts[ident] += 1
    rows = [{**dict(ident), "clips": n} for ident, n in counts.items()]
    return sorted(rows, key=lambda r: (r["family"], r["version"] != "main", str(r["version"]), str(r["backend"])))


def _yaml_list(name: str, items: Iterable[str]) -> list[str]:
    items = list(items)
    return [f"{name}:"] + [f"- {json.dumps(i)}" for i in items] if items else []


def _md_cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def contact_sentence(contact: str) -> str:
    if "@" in contact and " " not in contact.strip():
        return f"e-mail **{contact}**"
    if contact.startswith(("http://", "https://")):
        return f"open <{contact}>"
    return f"open {contact}"


def withdrawn_counts(info: Mapping[str, Any], clips: Sequence[Mapping[str, Any]],
                     manifest: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    at = info.get("at_release", {})
    videos = len({c["source_id"] for c in clips})
    return {"clips": int(at.get("clips", len(clips))) - len(clips), "videos": int(at.get("videos", videos)) - videos,
            "manifest_rows": int(at.get("manifest_rows", len(manifest))) - len(manifest)}


def rebuild_flags(params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(`unish curate` options that reproduce the parameters, parameters no option sets but that differ from
    the defaults, as NAME=VALUE)."""
    flags: list[str] = []
    options = [("window_seconds", "--window-seconds"), ("window_frames", "--window-frames"),
               ("window_fps", "--window-fps"), ("stride_s", "--stride"), ("max_frame_offset_s", "--max-frame-offset"),
               ("shard_max_mb", "--shard-max-mb")]
    for key, flag in options:
        if params.get(key) is not None:
            flags += [flag, f"{params[key]:g}" if isinstance(params[key], float) else str(params[key])]
    if params.get("stages"):
        flags += ["--stages", ",".join(params["stages"])]
    for stage, kv in sorted((params.get("stage_params") or {}).items()):
        for key, value in sorted(kv.items()):
            flags += ["--stage-param", f"{stage}.{key}={json.dumps(value)}"]
    defaults = {"shot_threshold": 27.0, "min_scene_len_s": 0.5, "jpeg_quality": 92, "shard_max_samples": 1000,
                "section_pad_s": 2.0}
    other = [f"{k}={params[k]}" for k in sorted(defaults) if k in params and params[k] != defaults[k]]
    return flags, other


def render_card(info: Mapping[str, Any], clips: Sequence[Mapping[str, Any]],
                manifest: Sequence[Mapping[str, Any]]) -> str:
    """The dataset card: a YAML header as Hugging Face reads it, then counts, funnel, labels, parameters,
    how to rebuild, how to ask for a takedown, and the limitations."""
    name = info.get("name") or "UniSH clips"
    labels = label_table(clips)
    families = sorted({r["family"] for r in labels})
    withdrawn = withdrawn_counts(info, clips, manifest)
    excluded = info.get("excluded", {"videos": 0, "clips": 0})
    funnel = info.get("funnel", {})
    params = info.get("params") or {}
    software = info.get("software") or {}
    videos = len({c["source_id"] for c in clips})
    seconds = sum(float(c["end_s"]) - float(c["start_s"]) for c in clips)
    frames = sum(int(c.get("n_frames") or 0) for c in clips)

    head = ["---", f"license: {json.dumps(info.get('license') or DEFAULT_LICENSE)}", f"pretty_name: {json.dumps(name)}"]
    head += _yaml_list("size_categories", [size_category(len(clips))])
    head += _yaml_list("task_categories", ["image-to-3d"] + [_TASKS[f] for f in families if f in _TASKS])
    head += _yaml_list("tags", ["video", "human-reconstruction", "smpl", "point-maps", "video-ids-and-timestamps"])
    head += ["configs:", "- config_name: default", "  data_files:", "  - split: train", f"    path: {CLIPS_PARQUET}",
             "---", ""]

    out = head + [
        f"# {name}", "",
        "Clips of human-centric video for training UniSH (metric point maps, cameras and a SMPL body from monocular "
        "video), released as **video IDs and timestamps only**: no frame, mask, label or video is in this folder. "
        "Each row names a source video and a window of it; `unish curate` fetches and decodes the windows again, "
        "so a video its creator removes disappears from the dataset.", "",
        "## Files", "",
    ]
    out += _md_table(["file", "what it holds"], [
        (f"`{CLIPS_PARQUET}`, `{CLIPS_CSV}`", "one row per clip: key, source id, source, start and end (s), frames, "
         "window parameters, label versions (JSON)"),
        (f"`{MANIFEST_CSV}`", "the manifest `unish curate` rebuilds the clips from (source, start, end, id)"),
        (f"`{RELEASE_FILE}`", "the facts this card is written from"),
    ])
    out += ["## Counts", ""]
    out += _md_table(["what", "count"], [
        ("clips", len(clips)), ("videos", videos), ("manifest rows", len(manifest)), ("frames", frames),
        ("hours of clips", f"{seconds / 3600:.3f}"),
    ])
    out += ["## Curation funnel", "",
            "From the curation run's index at release time: every manifest row and clip window, and the rule that "
            "rejected it.", ""]
    rows: list[tuple[str, Any]] = [("videos in", funnel.get("videos_in", 0))]
    rows += [(f"video error: {k}", v) for k, v in sorted(funnel.get("videos_error", {}).items())]
    rows += [(f"video rejected: {k}", v) for k, v in sorted(funnel.get("videos_rejected", {}).items())]
    rows += [("videos windowed", funnel.get("videos_ok", 0)), ("clip windows", funnel.get("windows", 0))]
    rows += [(f"rejected: {k}", v) for k, v in sorted(funnel.get("rejected", {}).items())]
    rows += [(f"error: {k}", v) for k, v in sorted(funnel.get("errors", {}).items())]
    rows += [("clips written", funnel.get("clips_written", 0)), ("excluded at release", excluded.get("clips", 0)),
             ("withdrawn since release", withdrawn["clips"]), ("clips published", len(clips))]
    out += _md_table(["stage", "count"], rows)
    out += ["## Labels", ""]
    if labels:
        out += ["Labels are not in the release; these are the versions a rebuild reproduces (`main`: written by "
                "`unish curate`; others: by `unish relabel`, in sidecar shards).", ""]
        out += _md_table(["family", "version", "backend", "stage version", "weights sha256", "package", "clips"],
                         [(r["family"], r["version"], r["backend"], r["stage_version"], r["weights_sha256"],
                           r["package_version"], r["clips"]) for r in labels])
    else:
        out += ["No labels: the clips were curated without labelling stages.", ""]
    out += ["## Curation parameters", ""]
    if params:
        shown = {k: v for k, v in params.items() if k != "stage_params"}
        shown.update({f"stage_params[{s}]": json.dumps(v, sort_keys=True)
                      for s, v in sorted((params.get("stage_params") or {}).items())})
        out += _md_table(["parameter", "value"], [(k, json.dumps(v) if isinstance(v, (list, dict)) else v)
                                                  for k, v in sorted(shown.items())])
    else:
        out += ["The run did not record its parameters (curated before unish recorded them).", ""]
    if software:
        out += ["Software of the curation run:", ""]
        out += _md_table(["package", "version"], sorted(software.items()))
    flags, other = rebuild_flags(params)
    out += ["## Rebuild", "", "```bash", f"unish curate {MANIFEST_CSV} --out rebuilt " + " ".join(flags),
            "unish verify rebuilt", "```", "",
            "The rebuild writes the same clip keys; its shards are byte-identical where the source bytes and the "
            "software versions above are the same. A local file is listed by its path relative to the original "
            "manifest: put `manifest.csv` where those paths resolve. A source that is gone is recorded as an error "
            "in the rebuild's `videos.parquet`, never skipped silently."]
    if other:
        out += ["", "Parameters without a command-line option (set them in `CurateConfig`): "
                + ", ".join(f"`{o}`" for o in other) + "."]
    out += ["", "## Takedown", "",
            "If a video of yours is in this dataset and you want it removed, "
            f"{contact_sentence(info.get('contact') or DEFAULT_CONTACT)} with the video's ID or URL. The "
            "maintainers run `unish takedown` over the release and every curated copy they hold: it removes every "
            "clip of the video (shards, label versions, index, downloads, cached work, this release's tables), adds "
            "the video to the curation blocklist so that no later run brings it back, and checks byte by byte that "
            "nothing of it remains. The change is published as a new version of this folder.", "",
            "If you use this dataset, honour takedowns too: update your copy of these files, and run "
            "`unish takedown YOUR_RUN --ids withdrawn.txt` on the clips you curated from an earlier version.", ""]
    out += _md_table(["since release", "count"], [("videos withdrawn", withdrawn["videos"]),
                                                 ("clips withdrawn", withdrawn["clips"])])
    out += ["## Limitations", "",
            "- IDs and timestamps only: videos that are removed, made private or re-encoded by their host cannot be "
            "rebuilt (or not byte for byte), so the dataset shrinks and drifts over time.",
            ("- The filters keep one clearly visible person per clip (one person, box height > 40% of the image, no "
             "box touching the border, no overlap): crowds, small or partly visible people, and occlusions are "
             "absent by design." if "people" in families else
             "- No people stage ran: the clips were not filtered for one visible person, so some may show no one, "
             "or several people."),
            "- Labels are pseudo-labels from models (see Labels), with those models' errors and biases; they are not "
            "ground truth.",
            "- The people in the videos did not consent to this use specifically; the takedown process above is how "
            "to have a video removed.",
            "- The sources reflect the manifest the curators chose; it is not a representative sample of people or "
            "places.", ""]
    return "\n".join(out)


__all__ = [
    "CARD_FILE", "CLIPS_CSV", "CLIPS_PARQUET", "CLIPS_SCHEMA", "DEFAULT_CONTACT", "DEFAULT_LICENSE",
    "MANIFEST_COLUMNS", "MANIFEST_CSV", "NotARelease", "RELEASE_FILE", "RELEASE_FILES", "RUN_PARAMS_FILE",
    "RUN_RELEASES_FILE", "clip_labels", "contact_sentence", "csv_bytes", "is_release", "json_bytes", "label_table",
    "parquet_bytes", "read_metas", "read_release", "rebuild_flags", "release_file_bytes", "render_card",
    "size_category", "withdrawn_counts", "write_if_changed", "write_release",
]
