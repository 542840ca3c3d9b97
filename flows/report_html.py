"""`unish report RUN`: one self-contained HTML page to judge a curation by looking at it.

What the page holds, and where each part comes from:
- the funnel as a chart (videos -> windows -> each rejection rule -> clips written: `shards.index.compute_funnel`,
  the same numbers as `unish inspect`), the outcome of every source's windows, and every error with its message
  (`index.parquet`, `videos.parquet`);
- distributions over clips: person box height / image height (with the rule's threshold), overlap with other
  people, distance to the border, mask area, depth range, keypoint confidence.  Rejected clips: the `stats` the
  index keeps of what their rule looked at.  Kept clips: their labels' own statistics, read from the shards
  without reading frames (`shards.peek`: tar headers and a few small members per clip);
- label provenance per family (backend, weights and sha256, package, stage version; `meta.json` of every kept
  clip) and the run's relabelled versions (`labels.parquet`);
- contact sheets (`flows.report_sheets`) of N sampled kept clips (read through `shards.reader`, checked against
  the index) and N sampled rejected clips of each rule (their staged frames in `_work/`, with the evidence the
  rule saw: every raw detection, or the lost mask);
- the run's parameters and software (`curate.json`).

Charts are matplotlib SVG inlined in the page, frames JPEG data URIs; the page is a Jinja2 template
(`flows/templates/report.html.j2`).  The funnel's numbers are also embedded as JSON (`<script id="report-data">`)
for tools and tests.  Nothing in the page is fetched from the network.
"""
from __future__ import annotations

import importlib.metadata
import json
import random
import tarfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from flows.report_figures import Bar
from shards.index import Funnel, compute_funnel, read_index
from shards.schema import STATUS_ERROR, STATUS_OK, STATUS_REJECTED

__all__ = ["ClipFacts", "ReportData", "Sheet", "funnel_bars", "gather", "render", "write_report", "ReportFile"]

TEMPLATE = "report.html.j2"
FRAMES_PER_SHEET = 4
MAX_TABLE_ROWS = 300
MAX_CHART_SOURCES = 30
# members of a kept clip the statistics need (a few KB per clip; never frames)
FACT_MEMBERS = {"meta.json", "people.stats.json", "masks.area.npy", "masks.format.json", "depth.stats.json",
                "depth.codec.json", "depth.absent.json", "keypoints.confidence.npy", "keypoints.present.npy"}
KP_BINS = np.linspace(0, 1, 21)


# --------------------------------------------------------------------------------------------- data


@dataclass
class ClipFacts:
    """One clip's statistics for the distributions (None: not measured for this clip)."""

    key: str
    outcome: str  # "ok", or the rejection rule
    height_ratio: float | None = None  # mean person box height / image height
    overlap_iou: float | None = None  # largest IoU with another person box
    border_gap_px: float | None = None  # smallest distance of the box to the image border
    mask_area: float | None = None  # mean mask area / image area
    depth_min_m: float | None = None
    depth_max_m: float | None = None
    keypoint_conf: float | None = None  # mean joint confidence over the frames with a pose


@dataclass
class SheetFrame:
    index: int
    time_s: float
    image: str  # data URI
    depth: str | None = None  # data URI


@dataclass
class Sheet:
    key: str
    outcome: str
    message: str
    frames: list[SheetFrame] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is missing, and why
    info: list[str] = field(default_factory=list)  # facts shown under the frames (the depth colour range)


@dataclass
class ReportData:
    run: str
    funnel: Funnel
    funnel_bars: list[Bar]
    sources: list[dict[str, Any]]  # per source: id, windows, outcome counts
    outcomes: list[str]  # "ok" then every rejection rule and error class, in funnel order
    problems: list[dict[str, Any]]  # video errors/rejections and clip errors, with messages
    facts: list[ClipFacts]
    keypoint_hist: list[int]
    provenance: list[dict[str, Any]]
    label_versions: list[dict[str, Any]]
    params: dict[str, Any]
    software: dict[str, str]
    thresholds: dict[str, float]
    ok_sheets: list[Sheet]
    rejected_sheets: dict[str, list[Sheet]]
    notes: list[str] = field(default_factory=list)

    def chart_data(self) -> dict[str, Any]:
        """What the page embeds as JSON: the funnel (as `compute_funnel` gives it, and as the chart's bars)."""
        f = self.funnel
        return {"funnel": {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(f).items()},
                "funnel_bars": [asdict(b) for b in self.funnel_bars],
                "sheets": {"ok": [s.key for s in self.ok_sheets],
                           "rejected": {r: [s.key for s in v] for r, v in self.rejected_sheets.items()}}}


def funnel_bars(f: Funnel) -> list[Bar]:
    """The funnel top to bottom: the rows of `unish inspect`'s table, as bars."""
    bars = [Bar("videos in", f.videos_in, "flow")]
    bars += [Bar(f"video error: {r}", n, "video_error") for r, n in sorted(f.videos_error.items())]
    bars += [Bar(f"video rejected: {r}", n, "video_rejected") for r, n in sorted(f.videos_rejected.items())]
    bars += [Bar("videos windowed", f.videos_ok, "flow"), Bar("clip windows", f.windows, "flow")]
    bars += [Bar(f"rejected: {r}", n, "rejected") for r, n in sorted(f.rejected.items())]
    bars += [Bar(f"error: {r}", n, "error") for r, n in sorted(f.errors.items())]
    bars.append(Bar("clips written", f.clips_written, "written"))
    return bars


def _outcome(row: dict[str, Any]) -> str:
    if row["status"] == STATUS_OK:
        return "ok"
    if row["status"] == STATUS_REJECTED:
        return row["reason"] or "unknown"
    return f"error: {row['reason'] or 'unknown'}"


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _people_facts(facts: ClipFacts, stats: dict[str, Any]) -> None:
    facts.height_ratio = _float(stats.get("mean_height_ratio"))
    facts.overlap_iou = _float(stats.get("max_overlap_iou"))
    facts.border_gap_px = _float(stats.get("min_border_gap_px"))
    if not stats.get("frames_with_person", 1):  # nobody: no box to measure
        facts.height_ratio = facts.overlap_iou = None


def _label_facts(facts: ClipFacts, labels: dict[str, dict[str, Any]], kp_hist: np.ndarray) -> bool:
    """Fill a kept clip's facts from its labels; returns whether its depth range still needs the depth itself."""
    if "stats" in labels.get("people", {}):
        _people_facts(facts, labels["people"]["stats"])
    masks = labels.get("masks", {})
    if "area" in masks and "format" in masks:
        t, h, w = masks["format"]["shape"]
        facts.mask_area = float(np.mean(masks["area"])) / max(h * w, 1)
    depth = labels.get("depth", {})
    stats = depth.get("stats", {})
    facts.depth_min_m, facts.depth_max_m = _float(stats.get("min_m")), _float(stats.get("max_m"))
    kp = labels.get("keypoints", {})
    if "confidence" in kp:
        conf = np.asarray(kp["confidence"], float)
        present = np.asarray(kp.get("present", np.ones(len(conf), bool)), bool)
        seen = conf[present]
        if seen.size:
            facts.keypoint_conf = float(seen.mean())
            kp_hist += np.histogram(np.clip(seen, 0, 1), KP_BINS)[0]
    return "codec" in depth and facts.depth_max_m is None


def _depth_range(labels: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    from shards import depth_codec

    d = depth_codec.from_entries(labels, key)
    v = d.depth[d.valid]
    return (float(v.min()), float(v.max())) if v.size else (None, None)


def _provenance_key(family: str, p: dict[str, Any]) -> tuple:
    weights = p.get("weights") or (Path(p["detections"]).name if p.get("detections") else None)
    sha = p.get("weights_sha256") or p.get("detections_sha256")
    return (family, p.get("backend"), weights, (sha or "")[:12] or None, p.get("package_version"), p.get("version"))


def _kept_clip_facts(run: Path, ok_rows: list[dict[str, Any]], kp_hist: np.ndarray, notes: list[str]
                     ) -> tuple[dict[str, ClipFacts], Counter, list[dict[str, Any]]]:
    from shards.peek import decode_entries, read_members

    by_shard: dict[str, set[str]] = defaultdict(set)
    for r in ok_rows:
        by_shard[r["shard"]].add(r["key"])
    facts: dict[str, ClipFacts] = {}
    provenance: Counter = Counter()
    filters: list[dict[str, Any]] = []
    for shard, keys in sorted(by_shard.items()):
        path = run / "shards" / shard
        try:
            members = read_members(path, lambda k, m: k in keys and m in FACT_MEMBERS)
            need_depth = []
            for key, got in members.items():
                labels = decode_entries(got)
                f = facts[key] = ClipFacts(key, "ok")
                if _label_facts(f, labels, kp_hist):
                    need_depth.append(key)
                meta = json.loads(got["meta.json"]) if "meta.json" in got else {}
                for family, p in sorted(meta.get("labels", {}).items()):
                    provenance[_provenance_key(family, p)] += 1
                    if family == "people" and not filters:
                        filters.append(p.get("params", {}).get("filters", {}))
            if need_depth:
                wanted = set(need_depth)
                depth_members = read_members(path, lambda k, m: k in wanted and m.startswith("depth."))
                for key, got in depth_members.items():
                    facts[key].depth_min_m, facts[key].depth_max_m = _depth_range(decode_entries(got)["depth"], key)
        except (OSError, ValueError, KeyError, tarfile.TarError) as e:  # a damaged shard: say so, report the rest
            notes.append(f"shard {shard}: could not read its labels ({type(e).__name__}: {e}); "
                         f"run `unish verify {run}`")
    missing = [r["key"] for r in ok_rows if r["key"] not in facts]
    if missing:
        notes.append(f"{len(missing)} indexed clips were not found in their shards (first: {missing[0]})")
    return facts, provenance, filters


def _thresholds(params: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, float]:
    """The people filters' thresholds the run used: from a kept clip's provenance, else the stage parameters
    recorded in curate.json, else the defaults."""
    from tasks.people_filters import PeopleFilterParams

    known = {f.name for f in fields(PeopleFilterParams)}
    given: dict[str, Any] = {}
    for stage, p in (params.get("stage_params") or {}).items():
        if stage.startswith("people:"):
            given.update({k: v for k, v in p.items() if k in known})
    if filters:
        given.update({k: v for k, v in filters[0].items() if k in known})
    return PeopleFilterParams(**given).as_dict()


def _problems(index_rows: list[dict[str, Any]], video_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{"where": f"row {v['row']}", "source": v["source"] or v["source_id"] or "", "status": v["status"],
            "reason": v["reason"] or "", "message": v["message"] or ""}
           for v in video_rows if v["status"] != STATUS_OK]
    out += [{"where": r["key"], "source": r["source"] or "", "status": r["status"], "reason": r["reason"] or "",
             "message": r["message"] or ""} for r in index_rows if r["status"] == STATUS_ERROR and r["key"]]
    return sorted(out, key=lambda p: (p["status"] != STATUS_ERROR, p["reason"], p["where"]))


def _sources(index_rows: list[dict[str, Any]], outcomes: list[str]) -> list[dict[str, Any]]:
    per: dict[str, Counter] = defaultdict(Counter)
    for r in index_rows:
        if r["key"]:
            per[r["source_id"]][_outcome(r)] += 1
    rows = [{"source_id": s, "windows": sum(c.values()), "counts": [c.get(o, 0) for o in outcomes]}
            for s, c in per.items()]
    return sorted(rows, key=lambda r: (-r["windows"], r["source_id"]))


# --------------------------------------------------------------------------------------------- sheets


def _people_overlay(o: Any, labels: dict[str, Any], i: int) -> None:
    people = labels.get("people", {})
    if "box" in people:
        o.box = np.asarray(people["box"])[i]


def _annotate(o: Any, labels: dict[str, Any], i: int, parents: tuple[int, ...], mask: np.ndarray | None) -> None:
    _people_overlay(o, labels, i)
    if mask is not None:
        o.mask = mask[i]
    kp = labels.get("keypoints", {})
    if "joints2d" in kp and (not len(kp.get("present", [])) or bool(np.asarray(kp["present"])[i])):
        o.joints = np.asarray(kp["joints2d"])[i]
        o.confidence = np.asarray(kp["confidence"])[i] if "confidence" in kp else None
        o.parents = parents


def _masks(labels: dict[str, Any]) -> np.ndarray | None:
    from shards.mask_codec import unpack_masks

    m = labels.get("masks", {})
    return unpack_masks(m) if "mask_bits" in m else None


def _depth_tiles(labels: dict[str, Any], key: str, picks: list[int], sheet: Sheet) -> list[str | None]:
    """The depth colour maps of the picked frames (None where the clip has no depth; the sheet says why)."""
    from flows.report_sheets import data_uri, depth_colours, depth_range
    from shards import depth_codec

    entries = labels.get("depth")
    if not entries:
        return [None] * len(picks)
    if not depth_codec.has_depth(entries):
        why = entries.get("absent", {})
        sheet.notes.append(f"no depth ({why.get('backend', 'none')}: {why.get('reason', '')})")
        return [None] * len(picks)
    d = depth_codec.from_entries(entries, key)
    lo, hi = depth_range(d.depth, d.valid)
    sheet.info.append(f"depth colours: {lo:.2f} m (blue) to {hi:.2f} m (red)")
    return [data_uri(depth_colours(d.depth[i], d.valid[i], lo, hi)) for i in picks]


def _sheet(key: str, outcome: str, message: str, frames: np.ndarray, times: list[float], labels: dict[str, Any],
           overlay_for: Any, candidates: list[int] | None = None) -> Sheet:
    """A clip's sheet: FRAMES_PER_SHEET frames spread over the clip, or over `candidates` (e.g. the frames where
    a rule's evidence is) when there are any."""
    from flows.report_sheets import Overlay, data_uri, draw_frame, frame_picks
    from tasks.keypoints import SMPL_PARENTS

    if candidates:
        picks = [candidates[i] for i in frame_picks(len(candidates), FRAMES_PER_SHEET)]
    else:
        picks = frame_picks(len(frames), FRAMES_PER_SHEET)
    sheet = Sheet(key, outcome, message)
    mask = _masks(labels)
    depth = _depth_tiles(labels, key, picks, sheet)
    for pick, tile in zip(picks, depth):
        o = Overlay()
        _annotate(o, labels, pick, SMPL_PARENTS, mask)
        overlay_for(o, pick)
        sheet.frames.append(SheetFrame(pick, float(times[pick]) if pick < len(times) else float("nan"),
                                       data_uri(draw_frame(frames[pick], o)), tile))
    return sheet


def _ok_sheets(run: Path, rows: list[dict[str, Any]], notes: list[str]) -> list[Sheet]:
    """Sheets of kept clips, read through the checked reader (a damaged shard is noted, not drawn)."""
    from shards.reader import ShardDamaged, iter_members
    from shards.sample import decode_sample

    wanted = {r["key"]: r for r in rows}
    found: dict[str, Sheet] = {}
    for shard in sorted({r["shard"] for r in rows}):
        try:
            for member in iter_members([str(run / "shards" / shard)]):
                if member["__key__"] not in wanted:
                    continue
                clip = decode_sample(member)
                found[clip.key] = _sheet(clip.key, "ok", "", clip.frames, clip.meta.get("frame_times_s", []),
                                         clip.labels, lambda o, i: None)
        except (ShardDamaged, OSError) as e:
            notes.append(f"shard {shard}: {e}; its clips are not drawn (run `unish verify {run}`)")
    return [found[k] for k in wanted if k in found]


def _staged_dir(run: Path, row: dict[str, Any]) -> Path | None:
    hits = sorted((run / "_work" / "videos" / row["source_id"]).glob(f"*/clips/{row['key']}"))
    return hits[0] if hits else None


def _rejected_sheet(run: Path, row: dict[str, Any], thresholds: dict[str, float]) -> Sheet:
    from shards.mask_codec import unpack_masks
    from shards.sample import decode_jpeg
    from tasks import staging

    rule, message = row["reason"], row["message"] or ""
    clip_dir = _staged_dir(run, row)
    if clip_dir is None:
        return Sheet(row["key"], rule, message, notes=["its staged frames are no longer in _work/"])
    meta = staging.read_json(clip_dir / staging.META_FILE)
    frames = np.stack([decode_jpeg(p.read_bytes()) for p in staging.frame_files(clip_dir)])
    labels, _ = staging.load_labels(clip_dir)  # the stages before the one that rejected it
    evidence = staging.load_evidence(clip_dir)
    stats = json.loads(row["stats"] or "{}")
    notes = []
    if not evidence:
        notes.append("no evidence kept (curated before unish kept it): the index's statistics only")
    main_track = int(stats.get("people", {}).get("track_id", -1))

    def overlay(o: Any, i: int) -> None:
        if "track_box" in evidence:  # a people rule: every raw detection of the frame
            at = np.asarray(evidence["frame"]) == i
            boxes, scores = np.asarray(evidence["boxes"])[at], np.asarray(evidence["scores"])[at]
            tracks = np.asarray(evidence["track_ids"])[at]
            box = np.asarray(evidence["track_box"])[i]
            o.box = box if np.isfinite(box).all() else None
            confident = scores >= thresholds["person_conf"]
            o.others = [b for b, t in zip(boxes[confident], tracks[confident]) if t != main_track or main_track < 0]
            o.weak = list(boxes[~confident])
            if rule == "truncated":
                o.border_margin = thresholds["border_margin_px"]
            if rule == "small":
                o.min_height_ratio = thresholds["min_height_ratio"]
        if "mask_bits" in evidence:  # mask_lost: the mask the rule judged, against its box
            o.mask = unpack_masks(evidence)[i]
            if "boxes" in evidence:
                o.box = np.asarray(evidence["boxes"])[i]

    with_evidence = sorted({int(i) for i in np.asarray(evidence.get("frame", []))} & set(range(len(frames))))
    if "lost_frames" in evidence:
        with_evidence = sorted(int(i) for i in np.asarray(evidence["lost_frames"]) if 0 <= i < len(frames))
    sheet = _sheet(row["key"], rule, message, frames, meta.get("frame_times_s", []), labels, overlay, with_evidence)
    sheet.notes = notes + sheet.notes
    return sheet


def _pick(rows: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = sorted(rows, key=lambda r: r["key"])
    return rows if len(rows) <= n else sorted(rng.sample(rows, n), key=lambda r: r["key"])


# --------------------------------------------------------------------------------------------- gather + render


def gather(run: Path, sample: int = 3, seed: int = 0) -> ReportData:
    """Everything the page shows, from the run folder."""
    from shards.release import RUN_PARAMS_FILE
    from shards.sidecar import list_label_versions

    run = Path(run)
    index, videos = read_index(run)
    index_rows, video_rows = index.to_pylist(), videos.to_pylist()
    funnel = compute_funnel(index, videos)
    notes: list[str] = []
    recorded: dict[str, Any] = {}
    if (run / RUN_PARAMS_FILE).is_file():
        recorded = json.loads((run / RUN_PARAMS_FILE).read_text())
    else:
        notes.append(f"no {RUN_PARAMS_FILE}: the run's parameters were not recorded")
    params, software = recorded.get("params", {}), recorded.get("software", {})

    ok_rows = [r for r in index_rows if r["status"] == STATUS_OK]
    kp_hist = np.zeros(len(KP_BINS) - 1, np.int64)
    kept, provenance, filters = _kept_clip_facts(run, ok_rows, kp_hist, notes)
    thresholds = _thresholds(params, filters)
    facts = [kept[r["key"]] for r in ok_rows if r["key"] in kept]
    for r in index_rows:
        if r["status"] == STATUS_REJECTED and r["key"]:
            f = ClipFacts(r["key"], r["reason"] or "unknown")
            stats = json.loads(r["stats"] or "{}")
            if isinstance(stats.get("people"), dict):
                _people_facts(f, stats["people"])
            facts.append(f)

    outcomes = ["ok"] + sorted(funnel.rejected) + [f"error: {e}" for e in sorted(funnel.errors)]
    rng = random.Random(seed)
    ok_sheets = _ok_sheets(run, _pick(ok_rows, sample, rng), notes) if sample > 0 else []
    rejected_sheets: dict[str, list[Sheet]] = {}
    for rule in sorted(funnel.rejected):
        rows = [r for r in index_rows if r["status"] == STATUS_REJECTED and (r["reason"] or "unknown") == rule]
        picked = _pick(rows, sample, rng) if sample > 0 else []
        rejected_sheets[rule] = [_rejected_sheet(run, r, thresholds) for r in picked]

    prov_rows = [dict(zip(("family", "backend", "weights", "sha256", "package", "version"), k), clips=n)
                 for k, n in sorted(provenance.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]
    versions = [{"family": v.family, "version": v.version, "stage": str(v.info.get("stage", "")),
                 "backend": str(v.info.get("backend", "")), "shards": f"{v.shards_done}/{v.shards_total}",
                 "complete": v.complete} for v in list_label_versions(run)]
    return ReportData(
        run=str(run), funnel=funnel, funnel_bars=funnel_bars(funnel), sources=_sources(index_rows, outcomes),
        outcomes=outcomes, problems=_problems(index_rows, video_rows), facts=facts, keypoint_hist=kp_hist.tolist(),
        provenance=prov_rows, label_versions=versions, params=params, software=software, thresholds=thresholds,
        ok_sheets=ok_sheets, rejected_sheets=rejected_sheets, notes=notes)


def _series(facts: Iterable[ClipFacts], attr: str, outcomes: list[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {o: [] for o in outcomes if not o.startswith("error")}
    for f in facts:
        v = getattr(f, attr)
        if v is not None and f.outcome in out:
            out[f.outcome].append(v)
    return {k: v for k, v in out.items() if v} or {"ok": []}


def _charts(data: ReportData) -> dict[str, Any]:
    from flows import report_figures as fig

    t = data.thresholds
    shown = data.sources[:MAX_CHART_SOURCES]
    colours = {**fig.outcome_colours(data.outcomes), "min": "#4c72b0", "max": "#c44e52"}
    charts: dict[str, Any] = {
        "funnel": fig.funnel_chart(data.funnel_bars),
        "sources": fig.reasons_chart([s["source_id"] for s in shown],
                                     {o: [s["counts"][i] for s in shown] for i, o in enumerate(data.outcomes)},
                                     colours) if shown else None,
    }
    facts = data.facts
    depth_all = [v for f in facts for v in (f.depth_min_m, f.depth_max_m) if v is not None and v > 0]
    depth_bins = (np.geomspace(max(min(depth_all) * 0.9, 1e-3), max(depth_all) * 1.1, 25) if depth_all
                  else np.geomspace(0.1, 100, 25))
    dist = [
        ("height", "Person box height / image height", fig.histogram_chart(
            "height", "mean box height / image height", _series(facts, "height_ratio", data.outcomes),
            np.linspace(0, 1, 26), colours, t["min_height_ratio"], f"rule: > {t['min_height_ratio']:g}")),
        ("overlap", "Overlap with another person (IoU)", fig.histogram_chart(
            "overlap", "largest IoU with another person box", _series(facts, "overlap_iou", data.outcomes),
            np.linspace(0, 1, 21), colours, t["max_overlap_iou"], f"rule: <= {t['max_overlap_iou']:g}")),
        ("border", "Distance to the image border", fig.histogram_chart(
            "border", "smallest box-border gap (px)", _series(facts, "border_gap_px", data.outcomes),
            np.linspace(0, 160, 33), colours, t["border_margin_px"], f"rule: >= {t['border_margin_px']:g} px")),
        ("mask", "Mask area", fig.histogram_chart(
            "mask", "mean mask area / image area", _series(facts, "mask_area", data.outcomes),
            np.linspace(0, 1, 26), colours)),
        ("depth", "Depth range", fig.histogram_chart(
            "depth", "metres: nearest (min) and farthest (max) valid pixel",
            {"min": [f.depth_min_m for f in facts if f.depth_min_m],
             "max": [f.depth_max_m for f in facts if f.depth_max_m]}, depth_bins, colours, log_x=True)),
        ("keypoints", "Keypoint confidence", fig.counts_chart(
            "keypoints", "joint confidence (every joint of every frame with a pose)", KP_BINS,
            data.keypoint_hist, "joints")),
    ]
    charts["distributions"] = dist
    return charts


def render(data: ReportData) -> str:
    """The page's HTML."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    try:
        unish_version = importlib.metadata.version("unish")
    except importlib.metadata.PackageNotFoundError:
        unish_version = "unknown"
    measured = {attr: sum(getattr(f, attr) is not None for f in data.facts)
                for attr in ("height_ratio", "overlap_iou", "border_gap_px", "mask_area", "depth_max_m",
                             "keypoint_conf")}
    return env.get_template(TEMPLATE).render(
        d=data, charts=_charts(data), chart_data=data.chart_data(), measured=measured, unish_version=unish_version,
        max_rows=MAX_TABLE_ROWS)


@dataclass
class ReportFile:
    path: Path
    bytes: int
    image_bytes: int  # the JPEG data URIs
    chart_bytes: int  # the inline SVG charts


def write_report(run: Path, out: Path, sample: int = 3, seed: int = 0) -> ReportFile:
    """Gather, render and write the page; returns its size and what it is made of.  (Not into the run folder by
    default: the page holds frames, and a takedown cleans the run's own files, which it knows.)"""
    import re

    from shards.atomic import write_bytes_atomic

    data = gather(run, sample, seed)
    html = render(data)
    path = Path(out)
    raw = html.encode("utf-8")
    write_bytes_atomic(path, raw)
    images = sum(len(m) for m in re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", html))
    charts = sum(len(m) for m in re.findall(r"<svg.*?</svg>", html, flags=re.S))
    return ReportFile(path, len(raw), images, charts)
