"""`unish release RUN --out REL`: the publishable part of a curated run, video IDs and timestamps only.

Reads the run's index, videos table, label versions and recorded parameters (curate.json) and the meta.json of
each ok clip (not its frames), and writes the release folder (see shards/release.py): clip tables, a manifest
`unish curate` rebuilds the clips from, and the dataset card. Clips of videos on the run's blocklist or in
`--exclude` are left out. The run records the release in `releases.json`, so a takedown of the run finds it.
Both folders are locked while this runs (one writer per folder).
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

DEFAULT_LICENSE = "cc-by-4.0"
CONTACT_ENV = "UNISH_TAKEDOWN_CONTACT"


class ReleaseRefused(ValueError):
    """The run cannot be released as it is (the message says why and what to do)."""


def _absolute(source: str) -> bool:
    return source.startswith(("/", "~")) or (len(source) > 2 and source[1] == ":" and source[2] in "\\/")


def _redact_paths(value: Any) -> Any:
    """Stage parameters as the card shows them: an absolute path becomes `<local file NAME>`."""
    if isinstance(value, dict):
        return {k: _redact_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_paths(v) for v in value]
    if isinstance(value, str) and _absolute(value):
        return f"<local file {Path(value).name}>"
    return value


def _span_from_shard(shard: str, source_id: str) -> tuple[float | None, float | None]:
    """The manifest span of a run curated before videos.parquet recorded it, from its shards' names."""
    from flows.repair import span_tag_of

    tag = span_tag_of(shard, source_id)
    if tag == "full":
        return None, None
    start, _, end = tag.partition("-")
    return int(start) / 1000, None if end == "end" else int(end) / 1000


def _labels_of(meta: dict, sidecar_rows: list[dict]) -> str:
    out = []
    for family, prov in sorted((meta.get("labels") or {}).items()):
        out.append({"family": family, "version": "main", "backend": prov.get("backend"),
                    "stage_version": prov.get("version"), "weights_sha256": prov.get("weights_sha256"),
                    "package_version": prov.get("package_version")})
    for r in sorted(sidecar_rows, key=lambda r: (r["family"], r["version"])):
        prov = json.loads(r["provenance"] or "{}")
        out.append({"family": r["family"], "version": r["version"], "backend": prov.get("backend"),
                    "stage_version": prov.get("version"), "weights_sha256": prov.get("weights_sha256"),
                    "package_version": prov.get("package_version")})
    return json.dumps(out, sort_keys=True)


def _derived_params(metas: list[dict], index_rows: list[dict]) -> dict[str, Any]:
    """What the clips themselves say of the parameters, for a run that did not record them."""
    if not metas:
        return {}
    m = metas[0]
    r = index_rows[0]
    return {"window_seconds": round(r["end_s"] - r["start_s"], 6), "window_frames": len(m.get("frame_times_s", [])),
            "window_fps": m.get("fps"), "jpeg_quality": m.get("jpeg_quality"),
            "stages": sorted((m.get("labels") or {}).keys())}


def build_release(run: Path, out: Path, exclude: list[str] | None = None, contact: str | None = None,
                  license_id: str = DEFAULT_LICENSE, name: str | None = None) -> dict[str, Any]:
    """Write the release folder for a run; returns a summary (counts, files written)."""
    from shards.blocklist import expand_tokens, read_blocklist
    from shards.index import compute_funnel, read_index
    from shards.release import (DEFAULT_CONTACT, RUN_PARAMS_FILE, RUN_RELEASES_FILE, is_release, read_metas,
                                write_if_changed, json_bytes, write_release)
    from shards.runfolder import run_lock
    from shards.schema import STATUS_OK
    from shards.sidecar import read_labels_table
    from shards.takedown import match_rows
    from tasks.manifest import default_source_id

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise FileNotFoundError(f"run {run} does not exist or is not a folder")
    index, videos = read_index(run)  # FileNotFoundError names what is missing
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise ReleaseRefused(f"release folder {out} is inside the run {run}: choose a folder outside it")
    if out.exists() and (not out.is_dir() or (any(p for p in out.iterdir() if p.name != ".unish.lock")
                                              and not is_release(out))):
        raise ReleaseRefused(f"{out} exists and is not a release folder: choose a new folder (a release folder "
                             f"is updated in place)")
    with run_lock(run, "unish release"), run_lock(out, "unish release"):
        index, videos = read_index(run)
        index_rows = [r for r in index.to_pylist() if r["status"] == STATUS_OK]
        video_rows = videos.to_pylist()
        blocklist = read_blocklist(run)
        tokens = set(expand_tokens(exclude or []))
        excluded = match_rows(index_rows + video_rows, tokens) if tokens else None
        chosen, dropped = [], []
        for r in index_rows:
            if (excluded and excluded.removes(r["source_id"], r["source"], r["key"])) or \
                    blocklist.blocks(r["source_id"], r["source"]):
                dropped.append(r)
            else:
                chosen.append(r)
        legacy = [r["key"] for r in chosen if _absolute(r["source"] or "")]
        if legacy:
            raise ReleaseRefused(
                f"{len(legacy)} clips record their source as an absolute local path (curated before unish recorded "
                f"local files relative to the manifest), e.g. {', '.join(legacy[:3])}: run `unish curate` on the "
                f"run again to record them relative to the manifest, or --exclude those videos")
        metas: dict[str, dict] = {}
        by_shard: dict[str, list[str]] = {}
        for r in chosen:
            by_shard.setdefault(r["shard"], []).append(r["key"])
        for shard, keys in sorted(by_shard.items()):
            path = run / "shards" / shard
            if not path.is_file():
                raise ReleaseRefused(f"shard {shard} of the index is missing from {run}: run `unish verify {run}`")
            metas.update(read_metas(path, keys))
        missing = [r["key"] for r in chosen if r["key"] not in metas]
        if missing:
            raise ReleaseRefused(f"{len(missing)} indexed clips are not in their shards (e.g. {missing[0]}): "
                                 f"run `unish verify {run}`")
        sidecar: dict[str, list[dict]] = {}
        for row in read_labels_table(run).to_pylist():
            if row["status"] == STATUS_OK:
                sidecar.setdefault(row["key"], []).append(row)
        recorded = json.loads((run / RUN_PARAMS_FILE).read_text()) if (run / RUN_PARAMS_FILE).exists() else {}
        params = dict(recorded.get("params") or _derived_params([metas[r["key"]] for r in chosen], chosen))
        if "stage_params" in params:
            params["stage_params"] = _redact_paths(params["stage_params"])
        clips = []
        for r in chosen:
            meta = metas[r["key"]]
            clips.append({
                "key": r["key"], "source_id": r["source_id"], "source": r["source"], "start_s": r["start_s"],
                "end_s": r["end_s"], "n_frames": r["n_frames"], "fps": meta.get("fps"), "width": r["width"],
                "height": r["height"], "window_s": params.get("window_seconds"),
                "window_frames": params.get("window_frames"), "window_fps": params.get("window_fps"),
                "stride_s": params.get("stride_s"), "labels": _labels_of(meta, sidecar.get(r["key"], [])),
            })
        manifest = _manifest_rows(video_rows, chosen, default_source_id, _span_from_shard)
        funnel = compute_funnel(index, videos)
        funnel_json = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(funnel).items()}
        info = {
            "format": 1, "name": name or "UniSH clips",  # not the run's folder name: nothing local
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "license": license_id, "contact": contact or os.environ.get(CONTACT_ENV) or DEFAULT_CONTACT,
            "at_release": {"clips": len(clips), "videos": len({c["source_id"] for c in clips}),
                           "manifest_rows": len(manifest)},
            "excluded": {"clips": len(dropped), "videos": len({r["source_id"] for r in dropped})},
            "funnel": funnel_json, "params": params, "params_recorded": bool(recorded),
            "software": recorded.get("software") or {},
        }
        written = write_release(out, info, clips, manifest)
        releases_file = run / RUN_RELEASES_FILE
        known = json.loads(releases_file.read_text()).get("releases", []) if releases_file.exists() else []
        rel = os.path.relpath(out.resolve(), run.resolve())
        write_if_changed(releases_file, json_bytes({"releases": sorted(set(known) | {rel})}))
    return {"release": str(out), "clips": len(clips), "videos": info["at_release"]["videos"],
            "manifest_rows": len(manifest), "excluded_clips": len(dropped), "files_written": written,
            "contact_is_default": info["contact"] == DEFAULT_CONTACT}


def _manifest_rows(video_rows: list[dict], clips: list[dict], default_id, span_from_shard) -> list[dict]:
    """One manifest row per run manifest row with released clips: its source, span and id (the id only where
    the source's default id would differ)."""
    rows_with_clips: dict[int, dict] = {}
    for c in clips:
        rows_with_clips.setdefault(c["row"], c)
    out = []
    for v in sorted(video_rows, key=lambda v: v["row"]):
        clip = rows_with_clips.get(v["row"])
        if clip is None:
            continue
        if "start_s" in v:
            start, end = v.get("start_s"), v.get("end_s")
        else:
            start, end = span_from_shard(clip["shard"], clip["source_id"])
        source = v["source"]
        out.append({"source": source, "start": start, "end": end,
                    "id": "" if default_id(source) == v["source_id"] else v["source_id"]})
    return out


def release(
    run: str = typer.Argument(..., help="a curated run folder (index.parquet, shards/), or its URL (s3://bucket/run)"),
    out: str = typer.Option(..., "--out", help="the release folder to write (created, or updated in place), or a URL"),
    exclude: Optional[Path] = typer.Option(None, "--exclude",
                                           help="file of video IDs or URLs to leave out, one a line"),
    contact: Optional[str] = typer.Option(
        None, "--contact", help="where takedown requests go (e-mail, URL or text); default: $UNISH_TAKEDOWN_CONTACT, "
        "else a discussion titled 'Takedown' on the dataset's page"),
    license_id: str = typer.Option(DEFAULT_LICENSE, "--license", help="licence of the release's metadata (an SPDX or "
                                   "Hugging Face licence id)"),
    name: Optional[str] = typer.Option(None, "--name", help="the dataset's name on its card"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Write a release folder: video IDs, timestamps, a rebuild manifest and a dataset card; no frames or labels."""
    from rich.console import Console

    from flows.store_cmd import open_target, publish
    from shards.blocklist import IdsFileError, read_ids_file
    from shards.runfolder import RunLocked

    err = Console(stderr=True)
    # URLs: worked on in local replicas (the run's with its shards: each clip's meta.json is read), then published
    run_dir, run_url = open_target(run, shards=True)
    out_dir, out_url = open_target(out)
    try:
        tokens = read_ids_file(exclude) if exclude else []
        summary = build_release(run_dir, out_dir, tokens, contact, license_id, name)
    except (IdsFileError, FileNotFoundError, ReleaseRefused) as e:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except RunLocked as e:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    publish(out_dir, out_url, quiet=as_json)  # the release first, then the run's releases.json that names it
    publish(run_dir, run_url, quiet=as_json)
    summary["release"] = out_url or summary["release"]
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    Console().print(f"release {summary['release']}: {summary['clips']} clips of {summary['videos']} videos "
                    f"({summary['manifest_rows']} manifest rows), {summary['excluded_clips']} clips left out; "
                    f"files written: {', '.join(summary['files_written']) or 'none (unchanged)'}",
                    highlight=False, soft_wrap=True)
    if summary["contact_is_default"]:
        err.print("note: no --contact given: the card asks for takedown requests on the dataset page's discussions",
                  markup=False, highlight=False, soft_wrap=True)


__all__ = ["ReleaseRefused", "build_release", "release"]
