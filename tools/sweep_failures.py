"""A sweep's failed jobs in one line, in their own words.

A configuration that fails up front (a bad --data_root, an --extra value that fails validation) says
why in its log; the sweep's last line repeats that, so a sweep where every configuration failed ends
on the reason, not on a later message (the report's "nothing finished") that hides it.
"""
from __future__ import annotations

import re
import signal
from typing import Optional

from tools.sweep_jobs import HEADER, HEADER_LINES
from utils import write_file_atomic

TAIL_BYTES = 1 << 18  # the end of the last attempt is enough; a training log can run to megabytes
MAX_CHARS = 300


def _last_attempt(log: str, name: str) -> Optional[list]:
    """Non-empty output lines of the job's last attempt (logs are appended to on every rerun)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]  # \r: progress bars redraw a line
    starts = [i for i, line in enumerate(lines) if (m := HEADER.fullmatch(line)) and m.group(1) == name]
    if starts:
        lines = lines[starts[-1] + HEADER_LINES:]
    return [line for line in lines if line]


def reason(result) -> str:
    """Why one job failed: the first 'error: ' line of its last attempt (how every entry point of this
    project reports a failure), else its last line (a traceback's exception, a sys.exit message)."""
    if result.note:  # the executor's own words (Slurm time-out, node failure): the log may just stop
        return result.note
    if result.rc is not None and result.rc < 0:
        try:
            return f"killed by {signal.Signals(-result.rc).name}"
        except ValueError:
            return f"killed by signal {-result.rc}"
    lines = _last_attempt(result.job.log, result.job.name)
    if not lines:
        return f"exit {result.rc}, no output (log {result.job.log})"
    error = next((line for line in lines if line.startswith("error: ")), None)
    if error is not None:
        return error[len("error: "):][:MAX_CHARS]
    return f"exit {result.rc}, last output: {lines[-1][:MAX_CHARS]}"


def failure_line(results: list, skipped: int = 0) -> Optional[str]:
    """'K of N configurations failed: <name>[ and M more]: <reason>; ...', one entry per distinct reason;
    None when nothing failed."""
    by_reason: dict = {}
    for r in results:
        if r.status in ("failed", "timed out"):  # a time-out's reason (its note) says so
            by_reason.setdefault(reason(r), []).append(r.job.name)
    if not by_reason:
        return None
    parts = [f"{names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''}: {why}"
             for why, names in by_reason.items()]
    n_failed = sum(len(names) for names in by_reason.values())
    return f"{n_failed} of {len(results) + skipped} configurations failed: " + "; ".join(parts)


def write_outcome(path, results: list, failures: Optional[str]) -> None:
    """For run_exp.sh, which reports only folders where something finished: the failure line (empty when
    none failed), then the log of every job that finished, one per line."""
    done = [r.job.log for r in results if r.status == "done"]
    write_file_atomic(path, ("\n".join([failures or "", *done]) + "\n").encode())
