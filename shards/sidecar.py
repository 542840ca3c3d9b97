"""Label versions as sidecar shards: a relabel writes one family anew without touching the main shards.

Layout of a curated output folder with label versions:

  shards/<name>.tar                                  main shards (frames, meta, the curation's labels)
  labels/<family>/<version>/version.json             what produced the version (backend, weights, params)
  labels/<family>/<version>/<name>.tar               per main shard: for each of its clips that got the
                                                     label, `<family>.<entry>.npy|json` + `provenance.json`
  labels/<family>/<version>/<name>.rows.json         per main shard: one status row per clip (ok, rejected,
                                                     error), written before the tar is renamed into place
  labels.parquet                                     every clip's label versions (rebuilt from rows.json)

A sidecar shard holds its samples in the main shard's order and is written as `<name>.tar.tmp`, then
renamed: its final name means it is complete. Readers pick a version per family
(`iter_clips_with_labels(out, {"depth": "<version>"})`): the sidecar's entries replace that family's
entries of the main sample, and `meta["labels"][family]` becomes the version's provenance. The version
`main` means the labels the curation wrote. Old versions are never deleted, so they stay readable.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from shards.index import INDEX_FILE, write_table_if_changed
from shards.sample import ClipSample, decode_sample, encode_json, label_members
from shards.schema import STATUS_OK, empty_row
from shards.atomic import TMP_SUFFIX, fsync_file, remove_temp_files, temp_path, write_json_atomic
from shards.reader import iter_members
from shards.tario import is_url, raw_samples
from shards.writer import FIXED_MTIME  # a sidecar's bytes depend on its samples alone

LABELS_DIR = "labels"
LABELS_FILE = "labels.parquet"
VERSION_FILE = "version.json"
ROWS_SUFFIX = ".rows.json"
PROVENANCE_MEMBER = "provenance.json"  # one dot only: never parsed as a `<family>.<entry>` label member
MAIN_VERSION = "main"  # the labels written by the curation itself, inside the main shards
SHARD_DIR = "shards"

_VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_FAMILY_RE = re.compile(r"^[a-z][a-z0-9_]*$")

# One row per (clip, family, version): which label versions each clip has, and why not where it has none.
LABELS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("family", pa.string()),
        ("version", pa.string()),
        ("shard", pa.string()),  # main shard name (the sidecar has the same name under labels/<family>/<version>/)
        ("status", pa.string()),  # ok, rejected, error
        ("reason", pa.string()),
        ("message", pa.string()),
        ("provenance", pa.string()),  # JSON: backend, weights_sha256, package_version, params, version
    ]
)


# ------------------------------------------------------------------------------------------ names


def check_family(family: str) -> str:
    if not _FAMILY_RE.match(family):
        raise ValueError(f"label family {family!r} is not [a-z][a-z0-9_]*")
    return family


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise ValueError(f"label version {version!r} is not [a-z0-9][a-z0-9_-]* (at most 64 characters)")
    return version


def version_id(backend: str, weights_sha256: str | None, params: Any, stage_version: str,
               inputs: Mapping[str, str] | None = None) -> str:
    """`<backend>-<12 hex>` from what decides a label's content: backend, weights, parameters, stage version
    (and the input label versions, when a stage reads other families and those are not the main ones).
    The same relabel twice gets the same id, so it finds its own finished work."""
    parts: dict[str, Any] = {"backend": backend, "weights_sha256": weights_sha256, "params": params,
                             "stage_version": str(stage_version)}
    if inputs:
        parts["inputs"] = dict(sorted(inputs.items()))
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = re.sub(r"[^a-z0-9_]+", "_", backend.split(":")[-1].lower()).strip("_")[:40] or "label"
    return check_version(f"{name}-{h}")


def version_dir(out_dir: Path, family: str, version: str) -> Path:
    return Path(out_dir) / LABELS_DIR / check_family(family) / check_version(version)


def sidecar_path(out_dir: Path, family: str, version: str, shard: str) -> Path:
    return version_dir(out_dir, family, version) / shard


def rows_path(out_dir: Path, family: str, version: str, shard: str) -> Path:
    return version_dir(out_dir, family, version) / (Path(shard).stem + ROWS_SUFFIX)


# ------------------------------------------------------------------------------------------ writing


def sidecar_members(key: str, family: str, entries: Mapping[str, Any], provenance: Mapping[str, Any]
                    ) -> dict[str, bytes | str]:
    """One clip's sidecar sample: only the family's label members and its provenance."""
    members: dict[str, bytes | str] = {"__key__": key}
    members.update(label_members({check_family(family): dict(entries)}))
    members[PROVENANCE_MEMBER] = encode_json({family: dict(provenance)})
    return members


class SidecarWriter:
    """Writes one sidecar shard as `<name>.tmp`; `commit()` renames it into place, `abort()` drops it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_temp_files(self.path.parent, f"{self.path.stem}.*.tar{TMP_SUFFIX}")  # leftovers of a killed run
        self.tmp = temp_path(self.path)
        self._tar: wds.TarWriter | None = wds.TarWriter(str(self.tmp), encoder=False, mtime=FIXED_MTIME)
        self.keys: list[str] = []

    def write(self, members: Mapping[str, bytes | str]) -> None:
        assert self._tar is not None, "sidecar already closed"
        self._tar.write(dict(members))
        self.keys.append(str(members["__key__"]))

    def commit(self) -> None:
        assert self._tar is not None, "sidecar already closed"
        try:
            self._tar.close()
            self._tar = None
            fsync_file(self.tmp)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._tar is not None:
            try:
                self._tar.close()
            except OSError:
                pass  # a full disk may fail the flush too; the temp file goes anyway
            self._tar = None
        self.tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ versions


@dataclass
class LabelVersion:
    family: str
    version: str
    info: dict[str, Any] = field(default_factory=dict)  # version.json
    shards_done: int = 0
    shards_total: int = 0  # main shards with ok clips (from index.parquet)

    @property
    def complete(self) -> bool:
        return self.shards_total > 0 and self.shards_done == self.shards_total


def main_shards(out_dir: Path) -> list[str]:
    """Main shard names that hold ok clips, from the index (the curation's word on what is complete)."""
    table = pq.read_table(Path(out_dir) / INDEX_FILE, columns=["status", "shard"])
    return sorted({r["shard"] for r in table.to_pylist() if r["status"] == STATUS_OK and r["shard"]})


def read_version_info(out_dir: Path, family: str, version: str) -> dict[str, Any]:
    path = version_dir(out_dir, family, version) / VERSION_FILE
    if not path.exists():
        raise FileNotFoundError(f"no label version {family}/{version} in {out_dir}: {path} not found")
    return json.loads(path.read_text())


def list_label_versions(out_dir: Path, family: str | None = None) -> list[LabelVersion]:
    """The sidecar label versions in an output folder (complete or not), sorted by family then version."""
    out_dir = Path(out_dir)
    root = out_dir / LABELS_DIR
    if not root.is_dir():
        return []
    try:
        total = len(main_shards(out_dir))
    except FileNotFoundError:
        total = 0
    found: list[LabelVersion] = []
    for fam_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if family is not None and fam_dir.name != family:
            continue
        for ver_dir in sorted(p for p in fam_dir.iterdir() if p.is_dir() and (p / VERSION_FILE).exists()):
            info = json.loads((ver_dir / VERSION_FILE).read_text())
            done = len(list(ver_dir.glob("*.tar")))
            found.append(LabelVersion(fam_dir.name, ver_dir.name, info, done, total))
    return found


# ------------------------------------------------------------------------------------------ the table


def read_rows(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def collect_label_rows(out_dir: Path) -> list[dict]:
    """Every complete sidecar shard's status rows (a rows file whose tar is missing is unfinished work)."""
    rows: list[dict] = []
    root = Path(out_dir) / LABELS_DIR
    if not root.is_dir():
        return rows
    for rows_file in sorted(root.glob(f"*/*/*{ROWS_SUFFIX}")):
        tar = rows_file.with_name(rows_file.name[: -len(ROWS_SUFFIX)] + ".tar")
        if tar.exists():
            rows.extend(read_rows(rows_file))
    return rows


def labels_table(rows: Sequence[dict]) -> pa.Table:
    ordered = sorted(rows, key=lambda r: (r["family"], r["version"], r["shard"], r["key"]))
    return pa.Table.from_pylist([{**empty_row(LABELS_SCHEMA), **r} for r in ordered], schema=LABELS_SCHEMA)


def write_labels_table(out_dir: Path) -> bool:
    """Rebuild labels.parquet from every complete sidecar on disk; write it (atomically) only if it changed.
    Rebuilding from disk keeps the table right even when two relabels of different families end together."""
    out_dir = Path(out_dir)
    table = labels_table(collect_label_rows(out_dir))
    return write_table_if_changed(table, out_dir / LABELS_FILE)


def read_labels_table(out_dir: Path | str) -> pa.Table:
    """labels.parquet of a run folder, or of a run at an fsspec URL; empty when the run has none."""
    from shards.store import exists, join
    from shards.tario import open_url

    path = join(out_dir, LABELS_FILE)
    if not exists(path):
        return labels_table([])
    with open_url(path) as f:
        return pq.read_table(f)


# ------------------------------------------------------------------------------------------ reading


class _SidecarCursor:
    """Walks a sidecar shard alongside its main shard: the same order, a subset of the keys. A sample the
    walk passes without matching is out of step with the main shard; it is reported when the shard ends."""

    def __init__(self, path: Path):
        self.path = path
        self._it = raw_samples(str(path))
        self._next: dict[str, Any] | None = next(self._it, None)

    def take(self, key: str) -> dict[str, Any] | None:
        if self._next is None or self._next["__key__"] != key:
            return None
        sample, self._next = self._next, next(self._it, None)
        return sample

    def leftover(self) -> str | None:
        return None if self._next is None else str(self._next["__key__"])


def merge_members(main: dict[str, Any], family: str, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """The main sample's members with `family`'s entries replaced by the sidecar's, and its provenance in meta."""
    prefix = family + "."
    merged = {k: v for k, v in main.items() if not k.startswith(prefix)}
    for name, value in sidecar.items():
        if name.startswith(prefix):
            merged[name] = value
    meta = json.loads(main["meta.json"])
    provenance = json.loads(sidecar[PROVENANCE_MEMBER])[family] if PROVENANCE_MEMBER in sidecar else {}
    meta.setdefault("labels", {})[family] = provenance
    merged["meta.json"] = encode_json(meta)
    return merged


def drop_family(main: dict[str, Any], family: str) -> dict[str, Any]:
    """The main sample without `family`'s entries and provenance."""
    prefix = family + "."
    kept = {k: v for k, v in main.items() if not k.startswith(prefix)}
    meta = json.loads(main["meta.json"])
    meta.get("labels", {}).pop(family, None)
    kept["meta.json"] = encode_json(meta)
    return kept


def iter_clips_with_labels(
    out_dir: Path,
    versions: Mapping[str, str] | None = None,
    urls: Sequence[str] | None = None,
    missing: str = "skip",
) -> Iterator[ClipSample]:
    """Clips of the main shards with, per family in `versions`, that label version's entries.

    urls: main shards to read (default: all complete ones under `out_dir/shards`), e.g. one rank's share.
    missing: what to do with a clip the chosen version has no label for (its relabel rejected it or failed):
      "skip" leaves it out, "keep" yields it without that family's entries, "raise" stops with an error.
    A sidecar shard that does not exist yet (the version is unfinished) counts as missing for all its clips.
    """
    if missing not in ("skip", "keep", "raise"):
        raise ValueError(f"missing must be skip, keep or raise, not {missing!r}")
    out_dir = Path(out_dir)
    chosen = {check_family(f): check_version(v) for f, v in (versions or {}).items() if v != MAIN_VERSION}
    for family, version in chosen.items():
        read_version_info(out_dir, family, version)  # an unknown version is an error, not an empty dataset
    if urls is None:
        urls = sorted(str(p) for p in (out_dir / SHARD_DIR).glob("*.tar"))
    for url in urls:
        shard = Path(url).name
        sidecars = {f: sidecar_path(out_dir, f, v, shard) for f, v in chosen.items()}
        for members, lacking in with_label_versions(iter_members(url), url, sidecars):
            if lacking and missing == "raise":
                where = ", ".join(f"{f}/{chosen[f]}" for f in lacking)
                raise KeyError(f"clip {members['__key__']!r} ({shard}) has no label in version {where}")
            if lacking and missing == "skip":
                continue
            yield decode_sample(members)


def with_label_versions(samples: Iterable[dict[str, Any]], url: str, sidecars: Mapping[str, str | Path]
                        ) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Each main sample of the shard `url` merged with its family's entries from the sidecar shards given
    (family -> sidecar shard path or URL); yields (members, families the sidecars had no label for). A
    sidecar that does not exist (an unfinished version) lacks every clip. Walk the whole shard: a sidecar
    holds a subset of the main shard's keys in the same order."""
    cursors = {f: _SidecarCursor(Path(p) if not is_url(p) else p) for f, p in sidecars.items() if _exists(p)}
    for members in samples:
        key = members["__key__"]
        lacking: list[str] = []
        for family in sidecars:
            side = cursors[family].take(key) if family in cursors else None
            if side is None:
                lacking.append(family)
                members = drop_family(members, family)
            else:
                members = merge_members(members, family, side)
        yield members, lacking
    for cursor in cursors.values():
        if cursor.leftover() is not None:
            raise ValueError(f"{cursor.path}: sample {cursor.leftover()!r} is not (or not in order) in {url}")


def _exists(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).exists()
    import fsspec

    fs, inner = fsspec.core.url_to_fs(str(path))
    return fs.exists(inner)


__all__ = [
    "LABELS_DIR", "LABELS_FILE", "LABELS_SCHEMA", "MAIN_VERSION", "LabelVersion", "SidecarWriter",
    "check_family", "check_version", "collect_label_rows", "drop_family", "iter_clips_with_labels", "list_label_versions",
    "with_label_versions",
    "main_shards", "merge_members", "read_labels_table", "read_version_info", "rows_path", "sidecar_members",
    "sidecar_path", "version_dir", "version_id", "write_json_atomic", "write_labels_table",
]
