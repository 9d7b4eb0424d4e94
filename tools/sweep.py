"""Run a sweep's jobs (one command per configuration) concurrently here, or on a Slurm cluster.

    python -m tools.sweep JOBS_FILE [--executor local|slurm] [--gpus 0,1] [--jobs-per-gpu N] [--jobs N]
                          [--slurm_* ...] [--skipped N] [--dry-run]

run_exp.sh lists the configurations that still need running (finished ones are skipped there, killed
ones get --resume) in JOBS_FILE and hands them here; run_gan_attack.py --sweep builds its jobs in Python
and calls `execute`. Each job is an independent command that appends its output to its own log, so a
job can run anywhere, in any order, next to any other job.

local: one slot per (visible GPU × --jobs-per-gpu), each job pinned to its GPU with CUDA_VISIBLE_DEVICES;
       without a GPU, --jobs N processes (CPU threads split between them). One slot streams the job's
       output to the terminal as before; several print one line when a job starts and one when it ends.
slurm: through submitit (tools/sweep_slurm.py), one array task per job.
SIGINT/SIGTERM are forwarded once to every running job (which checkpoints and exits resumable); jobs
not yet started are not started; the summary lists done / failed / interrupted jobs with their logs,
and its last line (stderr) the failed jobs' own errors (tools/sweep_failures.py).
Exit status: 0 all done, 1 some failed, 2 bad options, 130 / 143 stopped by SIGINT / SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from tools.sweep_failures import failure_line, write_outcome
from tools.sweep_jobs import Job, Result, SignalForwarder, read_jobs, run_job  # noqa: F401  (read_jobs, Job: this module's API)
from utils import UserError


def visible_gpus() -> list:
    """GPU ids to pin jobs to: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists (no torch import)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [g.strip() for g in cvd.split(",") if g.strip()]
        return [] if not ids or ids[0].startswith("-") else ids
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def plan_slots(gpus: Optional[str], jobs_per_gpu: Optional[int], jobs: Optional[int]) -> list:
    """One entry per concurrent job: a GPU id to pin it to, or None for a CPU process."""
    for flag, n in (("--jobs-per-gpu", jobs_per_gpu), ("--jobs", jobs)):
        if n is not None and n < 1:
            raise UserError(f"{flag} must be >= 1 (got {n})")
    if gpus is not None:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids:
            raise UserError(f"--gpus '{gpus}' names no GPU; give a comma list such as 0,1")
    else:
        ids = visible_gpus()
    if not ids:
        if jobs_per_gpu is not None:
            raise UserError("--jobs-per-gpu needs a GPU and none is visible (nvidia-smi, CUDA_VISIBLE_DEVICES); "
                            "on a CPU-only machine use --jobs N")
        return [None] * (jobs or 1)
    if jobs is not None:  # a total, spread round-robin over the GPUs
        return [ids[i % len(ids)] for i in range(jobs)]
    return [g for _ in range(jobs_per_gpu or 1) for g in ids]


def check_pinning(jobs: list, slots: list) -> None:
    if not any(s is not None for s in slots):
        return
    for job in jobs:
        for flag, value in zip(job.cmd, job.cmd[1:]):
            if flag == "--device" and value.startswith("cuda:") and value != "cuda:0":
                raise UserError(f"--device {value} cannot be combined with pinning each job to one GPU (each job "
                                "sees only its own GPU, as cuda:0); use --device auto and choose GPUs with --gpus")


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LocalExecutor:
    def __init__(self, slots: list, out=None):
        self.slots = slots
        self.tee = len(slots) == 1
        self.out = out or sys.stdout
        self.env = {}
        if len(slots) > 1 and "OMP_NUM_THREADS" not in os.environ:
            # N processes each using every core would only slow each other down.
            n = str(max(1, (os.cpu_count() or 1) // len(slots)))
            self.env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
        self._lock = threading.Lock()
        self._running = {}
        self.stopped_by = None  # the signal that stopped the sweep

    def _say(self, msg: str) -> None:
        with self._lock:
            print(msg, file=self.out, flush=True)

    def _forward(self, signum: int) -> None:
        with self._lock:
            self.stopped_by = signum
            procs = list(self._running.values())
        for p in procs:
            try:
                os.killpg(p.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def run(self, jobs: list) -> list:
        pending = list(enumerate(jobs, 1))
        results = [Result(j, "not started") for j in jobs]
        n = len(jobs)

        def worker(slot):
            env = dict(self.env)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            where = "" if slot is None else f" on GPU {slot}"
            while True:
                with self._lock:
                    if self.stopped_by is not None or not pending:
                        return
                    i, job = pending.pop(0)

                def started(proc, i=i):
                    with self._lock:
                        self._running[i] = proc
                        stop = self.stopped_by
                    if stop is not None:  # the signal came while this job was starting
                        try:
                            os.killpg(proc.pid, stop)
                        except (ProcessLookupError, PermissionError):
                            pass

                self._say(f"[{i}/{n}] start  {job.name}{where}  (log: {job.log})")
                t0 = time.monotonic()
                rc = run_job(job, env, tee=self.tee, new_session=True, started=started)
                with self._lock:
                    self._running.pop(i, None)
                    stopped = self.stopped_by is not None
                r = results[i - 1]
                r.rc, r.seconds = rc, time.monotonic() - t0
                # 130/143: stopped by a signal from elsewhere (main_MIA.py saves and exits resumable)
                r.status = "done" if rc == 0 else "interrupted" if stopped or rc in (130, 143) else "failed"
                tail = "" if rc == 0 else f" (exit {rc}; log: {job.log})"
                self._say(f"[{i}/{n}] {r.status:<6} {job.name}  {fmt_seconds(r.seconds)}{tail}")

        with SignalForwarder(self._forward):
            threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in self.slots[:max(n, 1)]]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # short joins keep the main thread free to take signals
        return results


def summarize(results: list, skipped: int, signum: Optional[int] = None, out=None,
              failures: Optional[str] = None) -> int:
    """Prints the summary, then `failures` (the failed jobs' own errors) as the last line; returns the
    exit status: 128 + the signal that stopped the sweep (130 SIGINT, 143 SIGTERM), else 1 when some job
    failed or timed out, else 0."""
    out = out or sys.stdout
    statuses = ("done", "failed", "interrupted", "timed out", "not started")
    count = {s: sum(r.status == s for r in results) for s in statuses}
    line = (f"Summary: {count['done']} done, {skipped} skipped (already finished), {count['failed']} failed, "
            f"{count['interrupted']} interrupted")
    for s in ("timed out", "not started"):  # only where they happen: Slurm time-outs, stopped sweeps
        if count[s]:
            line += f", {count[s]} {s}"
    print("\n" + line, file=out)
    for r in results:
        if r.status in ("failed", "interrupted", "timed out"):
            print(f"  {r.status}: {r.job.name} ({r.note or f'exit {r.rc}'}, log {r.job.log})", file=out)
    if count["interrupted"] or count["timed out"] or count["not started"]:
        print("  rerun the same command to continue: finished runs are skipped, interrupted ones resume", file=out)
    if failures:
        out.flush()
        print(f"error: {failures}", file=sys.stderr, flush=True)
    if signum is not None:
        print(f"sweep: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    return 1 if count["failed"] or count["timed out"] else 0


def build_parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UserError(f"{message} (see bash run_exp.sh --help)")

    p = Parser(prog="python -m tools.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs_file")
    p.add_argument("--skipped", type=int, default=0, help="finished configurations skipped by the caller")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true")
    p.add_argument("--outcome", default=None, metavar="FILE",
                   help="also write the failed jobs' errors and the logs of the finished ones here (run_exp.sh)")
    add_executor_flags(p)
    return p


def add_executor_flags(p) -> None:
    """The executor's flags (also on run_gan_attack.py); `execute` reads them."""
    g = p.add_argument_group("executor")
    g.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local: this machine's GPUs or CPU processes; slurm: a job array through submitit")
    g.add_argument("--gpus", default=None,
                   help="local: comma list of GPU ids, one job pinned to each (default: all visible)")
    g.add_argument("--jobs-per-gpu", "--jobs_per_gpu", dest="jobs_per_gpu", type=int, default=None,
                   help="local: jobs sharing each GPU at once (default: 1)")
    g.add_argument("--jobs", type=int, default=None,
                   help="local: jobs at once in all; without a GPU, processes (default: 1)")
    from tools.sweep_slurm import add_slurm_flags

    add_slurm_flags(p)


def script_jobs(script, items: list, args, parser, drop: tuple, log) -> list:
    """One job per item: `python SCRIPT ITEM` plus every flag of `args` that differs from `parser`'s
    default, except the executor's and those in `drop`; `log(item)` names its log file."""
    skip = {a.dest for g in parser._action_groups if g.title in ("executor", "slurm (--executor slurm)")
            for a in g._group_actions} | set(drop) | {"help"}
    flags = []
    for a in parser._actions:  # argparse has no public accessor; stable since Python 2.7
        value = getattr(args, a.dest, None)
        if a.dest in skip or not a.option_strings or value == a.default:
            continue
        flags += [a.option_strings[0]] if a.nargs == 0 else [a.option_strings[0], str(value)]
    return [Job(Path(item).name, [sys.executable, str(Path(script).resolve()), str(item), *flags], str(log(item)))
            for item in items]


def execute(jobs: list, args, skipped: int = 0, out=None, outcome: Optional[str] = None) -> int:
    """Runs `jobs` with the executor `args` chooses (parsed by build_parser); returns the exit status.
    `outcome`: a file to write what finished and why the rest failed (sweep_failures.write_outcome)."""
    out = out or sys.stdout
    if args.executor == "slurm":
        from tools.sweep_slurm import run_slurm

        results, signum = run_slurm(jobs, args, out)
    else:
        slots = plan_slots(args.gpus, args.jobs_per_gpu, args.jobs)
        check_pinning(jobs, slots)
        executor = LocalExecutor(slots, out)
        results = executor.run(jobs)
        signum = executor.stopped_by
    failures = failure_line(results, skipped)
    if outcome:
        write_outcome(outcome, results, failures)
    return summarize(results, skipped, signum, out, failures)


def describe(jobs: list, args) -> str:
    """What a real run would do with these jobs (the dry run prints it)."""
    if args.executor == "slurm":
        from tools.sweep_slurm import describe_slurm

        return describe_slurm(jobs, args)
    slots = plan_slots(args.gpus, args.jobs_per_gpu, args.jobs)
    check_pinning(jobs, slots)
    if slots[0] is None:
        return f"executor local: {len(slots)} concurrent CPU process(es)"
    per = {g: slots.count(g) for g in dict.fromkeys(slots)}
    return "executor local: " + ", ".join(f"GPU {g} × {k}" for g, k in per.items()) + " concurrent jobs"


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        jobs = read_jobs(args.jobs_file)
        if args.dry_run:
            print(describe(jobs, args), file=sys.stderr)
            from tools.estimate import estimate  # imports torch: only where a dry run asks for it

            for line in estimate(jobs):
                print(line, file=sys.stderr)
            return 0
        return execute(jobs, args, args.skipped, outcome=args.outcome)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
