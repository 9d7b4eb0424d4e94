"""A sweep's job model, shared by the local and the Slurm executors (tools/sweep.py, tools/sweep_slurm.py).

A job is one independent command that appends its output to its own log; `run_job` runs one (it is
also what a Slurm task runs), `Result` is what became of it, `SignalForwarder` passes SIGINT/SIGTERM on
to running jobs. Standard library only, so a dry run never imports torch.
"""
from __future__ import annotations

import codecs
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from utils import UserError, open_append

# Each attempt's output in a job's log starts with these lines: "=== <date> <time> <job name>", then the
# command (tools/sweep_failures.py finds a job's last attempt by them).
HEADER_LINES = 2
HEADER = re.compile(r"=== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (.*)")
REPEAT_S = 2.0  # a terminal Ctrl-C reaches us twice (directly and via run_exp.sh): forward it once


@dataclass
class Job:
    name: str
    cmd: list
    log: str
    env: dict = field(default_factory=dict)


@dataclass
class Result:
    job: Job
    status: str  # done, failed, interrupted, not started
    rc: Optional[int] = None
    seconds: float = 0.0
    note: str = ""


def read_jobs(path) -> list:
    """JOBS_FILE as run_exp.sh writes it: per job the NUL-terminated fields name, log, argc, argv..."""
    fields = [os.fsdecode(f) for f in Path(path).read_bytes().split(b"\0")]
    if fields and fields[-1] == "":
        fields.pop()
    jobs, i = [], 0
    while i < len(fields):
        try:
            name, log, argc = fields[i], fields[i + 1], int(fields[i + 2])
        except (IndexError, ValueError):
            raise UserError(f"{path} is not a jobs file (name, log, argc, argv... separated by NUL bytes)") from None
        cmd = fields[i + 3:i + 3 + argc]
        if len(cmd) != argc or argc == 0:
            raise UserError(f"{path}: job '{name}' is truncated")
        jobs.append(Job(name, cmd, log))
        i += 3 + argc
    return jobs


def run_job(job: Job, env: Optional[dict] = None, tee: bool = False, new_session: bool = False,
            started: Optional[Callable] = None) -> int:
    """Runs one job with its output appended to job.log (and copied to stdout with tee); returns the
    exit status (negative: killed by that signal). This is also what a Slurm task runs. The terminal
    gets the output as it came; the log gets it through LogCleaner, without progress-bar redraws."""
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **job.env, **(env or {})}
    header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.name}\n{shlex.join(job.cmd)}\n".encode()
    with open_append(job.log, text=False) as log:  # beside the run folder: never through a planted link
        log.write(header)
        log.flush()
        if tee:
            sys.stdout.flush()
            sys.stdout.buffer.write(header)
        try:
            proc = subprocess.Popen(job.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=full_env, start_new_session=new_session)
        except OSError as e:
            log.write(f"cannot start: {e}\n".encode())
            return 127
        if started:
            started(proc)
        cleaner = LogCleaner()
        while chunk := os.read(proc.stdout.fileno(), 65536):
            log.write(cleaner.feed(chunk))
            log.flush()
            if tee:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        log.write(cleaner.feed(b"", final=True))
        return proc.wait()


# tqdm's bar text ("desc:  40%|####      | 34/84 [00:05<...") and the terminal controls it redraws with.
_BAR = re.compile(r"\d+%\|.*\| *(\d+)/(\d+) \[")
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")


class LogCleaner:
    """A job's output as a log should hold it: every non-blank line that is not a progress bar, and a bar
    only in its finished state (n/n), once. A bar redrawn in place with carriage returns and cursor moves
    is hundreds of lines in a file (1,838 for the quick run), none of them worth reading."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._last_bar = None

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        text = self._pending + self._decoder.decode(chunk, final)
        hold = "\r" if text.endswith("\r") and not final else ""  # maybe half of a \r\n split across chunks
        *segments, last = re.split(r"\r\n|\r|\n", text[:len(text) - len(hold)])
        self._pending = last + hold
        if final:
            segments.append(last)
            self._pending = ""
        out = []
        for seg in segments:
            # What a cursor move leaves is the text after it ("<clear>ESC[Aepoch 1 done" shows "epoch 1 done").
            seg = next((p for p in reversed(_CONTROL.split(seg)) if p.strip()), "").rstrip()
            bar = _BAR.search(seg)
            if bar is None:
                if seg:
                    out.append(seg)
                    self._last_bar = None
            elif bar.group(1) == bar.group(2) and seg[:bar.start()] != self._last_bar:
                out.append(seg)
                self._last_bar = seg[:bar.start()]
        return "".join(line + "\n" for line in out).encode()


class SignalForwarder:
    """While active, SIGINT/SIGTERM are forwarded to `forward(signum)` (once per burst) and remembered."""

    def __init__(self, forward: Callable[[int], None]):
        self.forward = forward
        self.received: Optional[int] = None
        self._last = 0.0
        self._old = {}

    def _handle(self, signum, frame):
        first = self.received is None
        self.received = signum
        now = time.monotonic()
        if now - self._last < REPEAT_S:
            return
        self._last = now
        name = signal.Signals(signum).name
        print(f"\nsweep: {name} received: passing it to the running jobs (they save a checkpoint and stop)"
              + ("; no new job starts" if first else ""), file=sys.stderr, flush=True)
        self.forward(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
