"""What the commands that write runs and releases (`curate`, `release`, `takedown`) do with a URL (`s3://...`):
work in the URL's local replica, pulled from the store first, and publish it when the command is done
(shards/store.py: each object whole, the index last). Store errors become one line naming the URL, exit 1.
"""
from __future__ import annotations

from pathlib import Path

from flows import exitcodes
from flows.cmdline import fail, say


def open_target(target: str | Path, work: Path | None = None, shards: bool = False) -> tuple[Path, str | None]:
    """(the local folder a command works in, the URL to publish it to, or None for a local folder)."""
    from shards.runfolder import RunLocked, check_unlocked
    from shards.store import StoreError, is_url, local_folder, replica_path

    try:
        if is_url(target):  # a replica being written by another command is not pulled over
            check_unlocked(Path(work) if work is not None else replica_path(str(target).rstrip("/")))
        return local_folder(target, shards=shards, work=work)
    except (StoreError, RunLocked) as e:
        raise fail(str(e), exitcodes.FAILED) from None


def publish(folder: Path, url: str | None, quiet: bool = False) -> None:
    """Push a replica to its URL (nothing for a local folder) and say what went up."""
    if url is None:
        return
    from shards.store import push

    try:
        report = push(folder, url)
    except OSError as e:  # a StoreError, or the connection dropping mid-upload
        raise fail(f"{e} (the local replica {folder} keeps the result; run the command again to publish it)",
                   exitcodes.FAILED) from None
    if not quiet:
        say(f"published {folder} to {url}: {len(report.uploaded)} objects uploaded, {report.unchanged} unchanged, "
            f"{len(report.deleted)} deleted")


__all__ = ["open_target", "publish"]
