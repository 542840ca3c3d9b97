"""What a rerun of `unish curate` does about the problems `unish verify` found (see shards/verify.py).

A damaged or missing shard belongs to one video (shards are per video: `<source_id>-<span>-NNNN.tar`). A
rerun notices it when the file's size or time differs from what the pack recorded (always, with
`--verify-shards`), and rewrites the video's shards: from its staged clips in `_work/` when they are
all there, else by fetching and decoding the video again.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


from shards.schema import STATUS_OK
from shards.verify import VerifyReport
from tasks import staging

WORK_VIDEOS = Path("_work") / "videos"
_SHARD_NUMBER = re.compile(r"-\d{4}\.tar$")


@dataclass(frozen=True)
class RepairStep:
    shard: str
    source_id: str
    row: int
    action: str  # repack | refetch | set_aside | remove_temp
    needs_verify_flag: bool = False  # the file kept its size and time: only --verify-shards notices

    def describe(self) -> str:
        what = {
            "repack": f"rerun rewrites it from row {self.row}'s staged clips ({self.source_id}; no download, no decode)",
            "refetch": f"rerun fetches and decodes row {self.row} ({self.source_id}) again to rewrite it",
            "set_aside": "no index row refers to it: the next curate moves it to _work/unindexed/",
            "remove_temp": "the next curate removes it",
        }[self.action]
        flag = " (add --verify-shards: the file kept its size and time)" if self.needs_verify_flag else ""
        return f"{self.shard}: {what}{flag}"


def span_tag_of(shard: str, source_id: str) -> str:
    return _SHARD_NUMBER.sub("", shard)[len(source_id) + 1:]


def repair_plan(run_dir: Path | str, report: VerifyReport) -> list[RepairStep]:
    from shards.index import read_index

    rows = [r for r in read_index(run_dir)[0].to_pylist() if r["status"] == STATUS_OK]
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    steps: list[RepairStep] = []
    for p in report.problems:
        if p.kind == "temp_file":
            steps.append(RepairStep(p.shard, "", 0, "remove_temp"))
        elif p.kind == "unindexed_shard":
            steps.append(RepairStep(p.shard, "", 0, "set_aside"))
    for shard in report.damaged_shards():
        clips = by_shard.get(shard, [])
        if not clips:
            continue
        source_id, row = clips[0]["source_id"], clips[0]["row"]
        workdir = run_dir / WORK_VIDEOS / source_id / span_tag_of(shard, source_id)
        staged = all((workdir / "clips" / c["key"]).is_dir() for c in clips)
        steps.append(RepairStep(shard, source_id, row, "repack" if staged else "refetch",
                                not _changed_since_pack(workdir, run_dir / "shards" / shard)))
    return steps


def _changed_since_pack(workdir: Path, shard: Path) -> bool:
    """Whether a plain rerun sees this shard as changed (its size or time differ from the pack's record)."""
    from tasks.pipeline import PACK_MARKER  # here: the pipeline imports the decoders, `unish verify` needs none

    try:
        recorded = staging.read_json(workdir / PACK_MARKER).get("shards", {}).get(shard.name)
    except (OSError, ValueError):
        return True  # no record: the rerun packs the video again anyway
    if recorded is None or not shard.exists():
        return True
    st = shard.stat()
    return [st.st_size, st.st_mtime_ns] != recorded
