"""`unish takedown PATH... --ids FILE`: remove every trace of withdrawn videos from runs and releases.

For each target folder (a curated run, or a release; the releases a run recorded in releases.json are visited
too), under that folder's lock:

  1. plan    resolve the IDs against every target (source id, source as recorded, clip key; a YouTube URL also
             names its ID; one video under two ids is one video), list what to remove and take the needles the
             final scan must not find (keys, ids, sources, byte slices of a few frames of every removed clip and
             of each download). The plan is written to `<target>/_takedown/pending.json` (the journal) before
             anything is removed; a rerun finds it and goes on with the same plan.
  2. block   runs: the blocklist (`blocklist.json`, digests only) gets every token, so `unish curate` and
             `unish relabel` refuse the videos from now on
  3. remove  shards, sidecar label versions, labels.parquet, index.parquet, videos.parquet, _work/ (downloads,
             staged clips, markers, caches); releases: clip tables, manifest, card (shards/takedown.py)
  4. scan    every file (content and name) under every target for every needle (shards/scan.py); any finding
             stops the takedown (exit 1) with the journal kept, so a rerun tries again
  5. audit   `<target>/takedown.jsonl` gets one entry (time, digests of the requested IDs, counts of what was
             removed, sha256 of each shard and table after), then the journal is deleted

Every step does only what is still to do, so a second takedown of the same IDs changes nothing, and a takedown
killed at any point (SIGKILL included), rerun, ends with the same files as one that was not interrupted (the
audit entry's time aside).

Fault injection for the crash tests: `UNISH_FAULT_TAKEDOWN_AT` names points (comma-separated: journal,
shard-rewrite-partial (a temporary shard half written), shard-rewrite (written, not yet renamed), shard-delete,
sidecar-partial, sidecar, sidecar-rows, index, videos, work, release:<file>, scan, audit); on
reaching one, the process writes `$UNISH_FAULT_TAKEDOWN_WAIT_FILE.reached` and waits (at most 120 s) for
`$UNISH_FAULT_TAKEDOWN_WAIT_FILE` to exist, so a test can kill it there. No Prefect here: a takedown is one
process on local folders.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

JOURNAL_DIR = "_takedown"
JOURNAL_FILE = "pending.json"
AUDIT_FILE = "takedown.jsonl"
FAULT_AT_ENV = "UNISH_FAULT_TAKEDOWN_AT"
FAULT_WAIT_ENV = "UNISH_FAULT_TAKEDOWN_WAIT_FILE"


class TakedownIncomplete(RuntimeError):
    """The scan after removal still found traces of the videos (the message lists where)."""

    def __init__(self, findings: list[Any]):
        shown = "; ".join(str(f) for f in findings[:10])
        more = f" and {len(findings) - 10} more" if len(findings) > 10 else ""
        super().__init__(f"traces of the withdrawn videos remain ({len(findings)}): {shown}{more}. Remove them (or "
                         f"find what keeps them) and run the takedown again: its plan is kept until it succeeds")
        self.findings = findings


class NotATarget(FileNotFoundError):
    """A path given to the takedown is neither a curated run nor a release."""


def fault(point: str) -> None:
    """Stop here if the crash tests asked for it (see the module docstring)."""
    wanted = os.environ.get(FAULT_AT_ENV, "")
    wait = os.environ.get(FAULT_WAIT_ENV, "")
    if not wanted or not wait or point not in wanted.split(","):
        return
    reached = Path(wait + ".reached")
    tmp = reached.with_name(reached.name + f".{os.getpid()}")
    tmp.write_text(point)
    os.replace(tmp, reached)  # whole or absent: the test reads it as soon as it exists
    deadline = time.monotonic() + 120
    while not Path(wait).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@dataclass
class Target:
    path: Path
    kind: str  # run | release
    plan: Any = None  # RunPlan | ReleasePlan
    needles: list = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    block: list[str] = field(default_factory=list)  # runs: tokens the blocklist gets
    resumed: bool = False  # a journal from an interrupted takedown was found
    done: dict[str, Any] = field(default_factory=dict)

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_DIR / JOURNAL_FILE


def find_targets(paths: list[Path]) -> tuple[list[Target], list[str]]:
    """The targets (runs, releases, and the releases the runs recorded), each once; notes on recorded releases
    that are gone. A path that is neither a run nor a release is an error naming it."""
    from shards.index import INDEX_FILE
    from shards.release import RUN_RELEASES_FILE, is_release

    targets: dict[Path, Target] = {}
    notes: list[str] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise NotATarget(f"{p} does not exist")
        if (p / INDEX_FILE).is_file():
            kind = "run"
        elif is_release(p):
            kind = "release"
        else:
            raise NotATarget(f"{p} is neither a curated run (no {INDEX_FILE}) nor a release (no release.json)")
        targets.setdefault(p.resolve(), Target(p, kind))
        if kind == "run" and (p / RUN_RELEASES_FILE).is_file():
            for rel in json.loads((p / RUN_RELEASES_FILE).read_text()).get("releases", []):
                path = (p / rel).resolve()
                if is_release(path):
                    targets.setdefault(path, Target(path, "release"))
                else:
                    notes.append(f"{p} recorded a release at {rel}, which is not there any more")
    return [targets[k] for k in sorted(targets)], notes


def _global_match(targets: list[Target], tokens: list[str]):
    """Every id, source and key the tokens name in any target, widened across targets (one video, one set)."""
    from shards.blocklist import expand_tokens
    from shards.release import read_release
    from shards.takedown import KEY_RE, Match, match_rows, run_rows
    from tasks.manifest import URL, default_source_id

    wanted = set(expand_tokens(tokens))
    wanted |= {default_source_id(t) for t in tokens if URL.match(t) or "/" in t or "." in t}
    total = Match()
    rows_by_target = []
    for t in targets:
        rows = run_rows(t.path) if t.kind == "run" else read_release(t.path)[1]
        rows_by_target.append(rows)
    for _ in range(2):  # a second round carries ids found in one target to the others
        for rows in rows_by_target:
            m = match_rows(rows, wanted)
            total.source_ids |= m.source_ids
            total.sources |= m.sources
            total.keys |= m.keys
        wanted |= total.source_ids | total.sources
    total.source_ids |= {t for t in wanted if KEY_RE.match(t) is None and _is_id(t)}
    total.sources |= {t for t in wanted if not _is_id(t)}
    total.keys |= {t for t in wanted if KEY_RE.match(t)}
    return total, sorted(wanted)


def _is_id(token: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9_-]{1,64}", token) is not None


def _journal_write(t: Target) -> None:
    from shards.atomic import write_json_atomic
    from shards.scan import needle_to_json

    t.journal.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": 1, "kind": t.kind, "tokens": t.tokens, "block": t.block, "plan": t.plan.to_json(),
            "needles": [needle_to_json(n) for n in t.needles]}
    if t.journal.exists() and json.loads(t.journal.read_text()) == json.loads(json.dumps(data)):
        return
    write_json_atomic(t.journal, data)


def _journal_read(t: Target) -> dict | None:
    try:
        return json.loads(t.journal.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:  # written atomically, so only a hand edit gets here
        raise ValueError(f"{t.journal} is damaged ({e}): restore it, or delete it and run the takedown again "
                         f"(what was already removed is then no longer counted in the audit)") from None


def plan_id(t: Target) -> str:
    import hashlib

    body = json.dumps({"tokens": sorted(t.tokens), "plan": t.plan.to_json()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _plan(targets: list[Target], tokens: list[str]) -> None:
    from shards.blocklist import read_blocklist
    from shards.scan import needle_from_json, text_needles
    from shards.takedown import ReleasePlan, RunPlan, plan_release, plan_run

    match, wanted = _global_match(targets, tokens)
    for t in targets:
        journal = _journal_read(t)
        if t.kind == "run":
            plan, needles = plan_run(t.path, match)
        else:
            plan, needles = plan_release(t.path, match), []
        needles += text_needles(plan.keys, plan.source_ids, plan.sources)
        t.tokens, t.block = sorted(set(tokens)), wanted
        if journal is not None:  # an interrupted takedown: its plan (taken before it removed anything) goes on
            t.resumed = True
            old = (RunPlan if t.kind == "run" else ReleasePlan).from_json(journal["plan"])
            plan = old.merged(plan)
            needles = [needle_from_json(n) for n in journal["needles"]] + needles
            t.tokens = sorted(set(journal["tokens"]) | set(tokens))
            t.block = sorted(set(journal["block"]) | set(wanted))
        t.plan, t.needles = plan, needles
        if t.kind == "run":
            blocklist = read_blocklist(t.path)
            t.done["blocklist_adds"] = len(blocklist.with_tokens(t.block).digests - blocklist.digests)


def _remove_dead_temp_files(t: Target) -> None:
    """Temporary files a killed writer left in the folder itself and in the journal folder (tables, blocklist,
    release files, the journal): we hold the folder's lock, so none of them is anyone's work in progress."""
    from shards.atomic import TMP_SUFFIX

    for folder in (t.path, t.path / JOURNAL_DIR):
        for tmp in sorted(folder.glob(f"*{TMP_SUFFIX}")) if folder.is_dir() else []:
            if tmp.is_file():
                tmp.unlink()


def _work_to_do(t: Target) -> bool:
    return t.resumed or not t.plan.empty() or bool(t.done.get("blocklist_adds"))


def _audit_entry(t: Target, scan: dict[str, int]) -> dict[str, Any]:
    from shards.blocklist import digest
    from shards.scan import Matcher
    from shards.takedown import sha256_file, source_id_of_key

    plan = t.plan
    matcher = Matcher(t.needles)
    entry: dict[str, Any] = {"format": 1, "plan_id": plan_id(t),
                             "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                             "ids_sha256": sorted(digest(x) for x in t.tokens), "kind": t.kind}
    if t.kind == "run":
        def files(actions):
            out = []
            for a in actions:
                path = t.path / a.path
                safe = not matcher.find_in_name(a.path)
                out.append({"path": a.path if safe else None, "path_sha256": digest(a.path), "action": a.action,
                            "samples_removed": a.removed, "samples_kept": a.kept, "before_sha256": a.before_sha256,
                            "after_sha256": sha256_file(path) if a.action == "rewrite" and path.exists() else None})
            return out

        ids = {source_id_of_key(k) for k in plan.keys} | {Path(w).name for w in plan.work}
        entry["removed"] = {
            "videos": len(ids - {None}), "clip_keys": len(plan.keys), "index_rows": plan.index_rows,
            "video_rows_withdrawn": len(plan.video_rows),
            "shards_deleted": sum(a.action == "delete" for a in plan.shards),
            "shards_rewritten": sum(a.action == "rewrite" for a in plan.shards),
            "sidecar_files_deleted": sum(a.action == "delete" for a in plan.sidecars),
            "sidecar_files_rewritten": sum(a.action == "rewrite" for a in plan.sidecars),
            "work_folders": len(plan.work),
        }
        entry["shards"] = files(plan.shards)
        entry["sidecars"] = files(plan.sidecars)
        entry["tables_sha256"] = {n: sha256_file(t.path / n) for n in ("index.parquet", "videos.parquet",
                                                                         "labels.parquet", "blocklist.json")
                                  if (t.path / n).exists()}
    else:
        entry["removed"] = {"clips": plan.clips, "manifest_rows": plan.manifest_rows}
        entry["files_sha256"] = {p.name: sha256_file(p) for p in sorted(t.path.iterdir())
                                 if p.is_file() and not p.name.startswith(".") and p.name != AUDIT_FILE}
    entry["scan"] = scan
    return entry


def _append_audit(t: Target, entry: dict[str, Any]) -> bool:
    from shards.atomic import write_bytes_atomic

    path = t.path / AUDIT_FILE
    old = path.read_bytes() if path.exists() else b""
    for line in old.decode().splitlines():
        if line.strip() and json.loads(line).get("plan_id") == entry["plan_id"]:
            return False  # written before a crash: once is enough
    write_bytes_atomic(path, old + (json.dumps(entry, sort_keys=True) + "\n").encode())
    return True


def run_takedown(paths: list[Path], tokens: list[str], dry_run: bool = False) -> dict[str, Any]:
    """Take the videos the tokens name out of every target (see the module docstring). Returns a report."""
    from shards.blocklist import Blocklist, read_blocklist, write_blocklist
    from shards.runfolder import LOCK_FILE, run_lock
    from shards.scan import Matcher, scan_tree
    from shards.takedown import apply_release, apply_run

    targets, notes = find_targets(paths)
    with ExitStack() as stack:
        if not dry_run:
            for t in targets:
                stack.enter_context(run_lock(t.path, "unish takedown"))
        _plan(targets, tokens)
        report: dict[str, Any] = {"targets": [], "notes": notes, "dry_run": dry_run}
        already = set()
        for t in targets:
            if t.kind == "run":
                blocklist = read_blocklist(t.path)
                already |= {x for x in tokens if blocklist.blocks(x)}
        report["already_withdrawn"] = sorted(already)
        report["not_found"] = [x for x in tokens if not _token_found(x, targets)]
        todo = [t for t in targets if _work_to_do(t)]
        if dry_run or not todo:
            report["targets"] = [_target_report(t, changed=False) for t in targets]
            return report
        for t in todo:
            _remove_dead_temp_files(t)
            _journal_write(t)
        fault("journal")
        for t in todo:
            if t.kind == "run":
                current = read_blocklist(t.path)
                write_blocklist(t.path, Blocklist(current.digests).with_tokens(t.block))
        for t in todo:
            if t.kind == "run":
                t.done.update(apply_run(t.path, t.plan, fault))
            else:
                t.done["files_written"] = apply_release(t.path, t.plan, fault)
        fault("scan")
        matcher = Matcher([n for t in targets for n in t.needles])
        scans = {t.path: scan_tree(t.path, matcher, exclude=[JOURNAL_DIR, LOCK_FILE]) for t in targets}
        findings = [f for s in scans.values() for f in s.findings]
        report["scan"] = {"needles": len(matcher.needles), "files": sum(s.files for s in scans.values()),
                          "bytes": sum(s.bytes for s in scans.values()), "found": len(findings)}
        if findings:
            raise TakedownIncomplete([f"{scans_path}/{f}" for scans_path, s in scans.items() for f in s.findings])
        for t in todo:
            s = scans[t.path]
            _append_audit(t, _audit_entry(t, {"needles": s.needles, "files": s.files, "bytes": s.bytes, "found": 0}))
        fault("audit")
        for t in todo:
            t.journal.unlink(missing_ok=True)
            try:
                t.journal.parent.rmdir()
            except OSError:
                pass
        report["targets"] = [_target_report(t, changed=t in todo) for t in targets]
        return report


def _token_found(token: str, targets: list[Target]) -> bool:
    from shards.blocklist import youtube_id_of
    from shards.takedown import source_id_of_key
    from tasks.manifest import URL, default_source_id

    names = {token, youtube_id_of(token)}
    if URL.match(token) or "/" in token or "." in token:
        names.add(default_source_id(token))
    for t in targets:
        plan = t.plan
        if plan.empty():
            continue
        ids = {source_id_of_key(k) for k in plan.keys}
        if t.kind == "run":
            ids |= {Path(w).name for w in plan.work}
        if names & (ids | set(plan.keys)) or (token in plan.sources and ids):
            return True
    return False


def _target_report(t: Target, changed: bool) -> dict[str, Any]:
    plan = t.plan
    out: dict[str, Any] = {"path": str(t.path), "kind": t.kind, "changed": changed, "resumed": t.resumed}
    if t.kind == "run":
        out.update(clip_keys=len(plan.keys), index_rows=plan.index_rows, video_rows=len(plan.video_rows),
                   shards=len(plan.shards), sidecar_files=len(plan.sidecars), work_folders=len(plan.work),
                   blocklist_adds=t.done.get("blocklist_adds", 0))
    else:
        out.update(clips=plan.clips, manifest_rows=plan.manifest_rows)
    return out


def store_targets(paths: list[str]) -> tuple[list[Path], dict[Path, str]]:
    """The local folders to take down, and the URL each replica publishes to. A URL target is pulled whole into its
    replica (shards too: they are rewritten), and so are the releases its releases.json names (relative to the run,
    so they land beside its replica as they lie beside it in the store)."""
    import posixpath

    from flows.store_cmd import open_target
    from shards.release import RUN_RELEASES_FILE

    folders: list[Path] = []
    urls: dict[Path, str] = {}
    pending = [str(p) for p in paths]
    while pending:
        target = pending.pop(0)
        folder, url = open_target(target, shards=True)
        if len(folders) < len(paths):
            folders.append(folder)  # the targets named; recorded releases are found by run_takedown itself
        if url is None or folder in urls:
            continue
        urls[folder] = url
        recorded = folder / RUN_RELEASES_FILE
        scheme, _, inner = url.partition("://")
        for rel in json.loads(recorded.read_text()).get("releases", []) if recorded.is_file() else []:
            pending.append(f"{scheme}://{posixpath.normpath(posixpath.join(inner, rel))}")
    return folders, urls


def takedown(
    paths: list[str] = typer.Argument(..., help="curated run folders and release folders, or their URLs "
                                      "(s3://bucket/run; a run's recorded releases are included)"),
    ids: Path = typer.Option(..., "--ids", help="file of video IDs or URLs to withdraw, one a line (# comments)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="report what would be removed; change nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Withdraw videos from runs and releases: remove every trace, blocklist them, and check none remains."""
    from rich.console import Console
    from rich.table import Table

    from shards.blocklist import IdsFileError, read_ids_file
    from shards.runfolder import RunLocked

    err = Console(stderr=True)

    def fail(e: Exception, code: int) -> None:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None

    from flows.store_cmd import publish

    try:
        tokens = read_ids_file(ids)
        folders, urls = store_targets(paths)
        report = run_takedown(folders, tokens, dry_run)
    except (IdsFileError, NotATarget) as e:
        fail(e, 2)
    except (RunLocked, TakedownIncomplete) as e:
        fail(e, 1)
    if not dry_run:
        for folder, url in urls.items():  # only once every target is clean: the store never gets a partial takedown
            publish(folder, url, quiet=as_json)
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    table = Table(title="takedown" + (" (dry run: nothing changed)" if dry_run else ""), header_style="bold")
    for col in ("folder", "kind", "clips", "rows", "files", "state"):
        table.add_column(col, overflow="fold")
    for t in report["targets"]:
        files = t.get("shards", 0) + t.get("sidecar_files", 0) + t.get("work_folders", 0)
        rows = t.get("index_rows", 0) + t.get("video_rows", 0) + t.get("manifest_rows", 0)
        state = "removed" if t["changed"] else ("would remove" if dry_run and (t.get("clip_keys") or t.get("clips"))
                                                else "nothing to do")
        table.add_row(t["path"], t["kind"], str(t.get("clip_keys", t.get("clips", 0))), str(rows), str(files), state)
    Console().print(table)
    if "scan" in report:
        s = report["scan"]
        Console().print(f"scan: {s['files']} files, {s['bytes'] / 1e6:,.1f} MB, {s['needles']} needles: nothing found",
                        highlight=False, soft_wrap=True)
    for x in report["not_found"]:
        err.print(f"not found in any folder: {x}" + (" (already withdrawn)" if x in report["already_withdrawn"] else
                                                     " (blocklisted anyway)"), markup=False, highlight=False,
                  soft_wrap=True)
    for note in report["notes"]:
        err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


__all__ = ["AUDIT_FILE", "FAULT_AT_ENV", "FAULT_WAIT_ENV", "JOURNAL_DIR", "NotATarget", "TakedownIncomplete",
           "find_targets", "run_takedown", "takedown"]


if __name__ == "__main__":
    typer.run(takedown)
