"""The exit status of every `unish` command: one scheme, so a scheduler (cron, a Prefect deployment) can act on it.

| status | name | meaning |
| --- | --- | --- |
| 0 | `OK` | the command did its job. For `curate`: every manifest row ended `ok`, `rejected:<rule>`, or with an error a rerun cannot clear (the input is bad or permanently unavailable: a 404, a private video, an unreadable file, a bad manifest row). |
| 1 | `FAILED` | the run itself failed: it could not start (output locked, not writable or full, weights missing) or stopped (storage failed); a check found a problem (`verify`, `weights check`); `relabel` left clips in error (a rerun does not redo a finished sidecar); with `--strict`, any row error. |
| 2 | `USAGE` | the command line or an input argument is wrong (an unknown option or profile, an unreadable config file, a `--kind` that does not fit the arrays); Click's own status for usage errors. |
| 3 | `RETRY` | the run finished, but rows are left with errors a rerun may clear: transient download errors after their retries (rate limits, time-outs, server errors), a download cut short, damaged staging, and errors unish does not classify (see the log file). A rerun redoes only those rows. |

Row errors that a rerun cannot clear do not change the status unless `--strict` is given; the closing summary
lists every error on one line and names the log file with the full tracebacks.
"""
from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
RETRY = 3

HELP = ("Exit status: 0 ok (rows ok, rejected by a rule, or permanently unavailable); 1 the run failed, a check "
        "failed, or --strict and a row error; 2 bad arguments; 3 rows left with errors a rerun may clear.")


def run_status(failed: bool, retryable_errors: int, other_errors: int, strict: bool = False) -> int:
    """The status of a finished run from its error counts: a failed run wins, then errors a rerun may clear, then
    (with --strict only) the errors it cannot."""
    if failed:
        return FAILED
    if retryable_errors:
        return RETRY
    if strict and other_errors:
        return FAILED
    return OK
