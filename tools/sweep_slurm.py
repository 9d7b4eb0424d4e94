"""The Slurm executor of tools/sweep.py: every job becomes one task of a job array, submitted through
submitit (optional dependency; `pip install -r requirements-dev.txt` or `pip install "submitit>=1.5,<2"`).

Each run folder's jobs are one array; submitit's own logs go to <run folder>/slurm/, each job's output to
its usual <run folder>/<name>.log. The client waits and prints a line per finished job; SIGINT/SIGTERM
cancel the jobs still queued or running (Slurm sends them SIGTERM; each resumes from its last checkpoint).
Slurm sends every task SIGTERM shortly before its --slurm_time (sbatch --signal), so a configuration
about to time out saves its checkpoint and stops; it is reported as timed out. Re-submitting the same
sweep submits only what is not finished (run_exp.sh skips finished runs and resumes killed ones).
--submitit_cluster local|debug runs the same path on this machine through submitit's test executors,
no cluster needed. Tested against a real one-node cluster (tools/ci/slurm_up.sh, docs/clusters.md).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

from tools.sweep_jobs import Result, SignalForwarder, run_job
from utils import UserError

INSTALL = 'pip install "submitit>=1.5,<2"  (or pip install -r requirements-dev.txt)'
JOB_NAME = "cem_sweep"
# How often the client asks whether tasks finished. Each poll reads one file per task (submitit's
# result); the tests of tools/ci/slurm_up.sh's cluster set it to a second.
POLL_ENV = "CEM_SLURM_POLL_S"
# slurmctld checks time limits (and sends --signal warnings) every ~30 s, so a warning can come up to
# that much early; with the task's start-up, a stop this close to the warning time counts as a time-out.
WARNING_SLACK_S = 40


def add_slurm_flags(p) -> None:
    g = p.add_argument_group("slurm (--executor slurm)")
    g.add_argument("--slurm_partition", default=None)
    g.add_argument("--slurm_time", default=None,
                   help="time limit per job, Slurm syntax: minutes, H:MM:SS or D-HH:MM:SS (required)")
    g.add_argument("--slurm_gpus_per_node", type=int, default=1)
    g.add_argument("--slurm_cpus_per_task", type=int, default=None)
    g.add_argument("--slurm_mem", default=None, help="memory per job, e.g. 16G")
    g.add_argument("--slurm_array_parallelism", type=int, default=None, help="most array tasks running at once")
    g.add_argument("--slurm_extra", default=None, help='other sbatch options, e.g. "qos=high account=lab"')
    g.add_argument("--submitit_cluster", default="slurm", choices=["slurm", "local", "debug"],
                   help="local/debug: submitit's executors for trying the path without a cluster")


# Slurm keeps a time limit as 32-bit minutes and clusters cap it far lower; a year is beyond any of them.
MAX_SLURM_MINUTES = 365 * 24 * 60


def parse_time(spec: str) -> int:
    """Slurm's --time syntax to whole minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", spec.strip())
    if not m:
        raise UserError(f"--slurm_time '{spec}' is not a Slurm time; use minutes, H:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # days-hours[:minutes[:seconds]]
        seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    elif c is not None:  # hours:minutes:seconds
        seconds = (a * 60 + b) * 60 + c
    else:  # minutes[:seconds]
        seconds = a * 60 + (b or 0)
    if seconds <= 0:
        raise UserError(f"--slurm_time '{spec}' must be positive")
    if seconds > MAX_SLURM_MINUTES * 60:
        raise UserError(f"--slurm_time '{spec}' is longer than a year; give the time one configuration needs")
    return -(-seconds // 60)


def parse_extra(spec) -> dict:
    """'qos=high --account=lab exclusive' -> {'qos': 'high', 'account': 'lab', 'exclusive': True}"""
    out = {}
    try:
        words = shlex.split(spec or "")
    except ValueError as e:  # an unclosed quote: shlex's words, as the shell would have refused it
        raise UserError(f"--slurm_extra: cannot read {spec!r} ({e}); use key=value words, e.g. "
                        "\"qos=high account=lab\"") from None
    for word in words:
        key, eq, value = word.lstrip("-").partition("=")
        if not key:
            raise UserError(f"--slurm_extra: cannot read '{word}'; use key=value words, e.g. \"qos=high account=lab\"")
        out[key] = value if eq else True
    return out


def slurm_parameters(args) -> dict:
    """Keyword arguments for submitit.AutoExecutor.update_parameters."""
    for flag in ("slurm_gpus_per_node", "slurm_cpus_per_task", "slurm_array_parallelism"):
        v = getattr(args, flag)
        if v is not None and v < (0 if flag == "slurm_gpus_per_node" else 1):
            raise UserError(f"--{flag} cannot be {v}")
    if args.slurm_mem is not None and not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", args.slurm_mem, re.I):
        raise UserError(f"--slurm_mem '{args.slurm_mem}' is not a memory size; use e.g. 16G or 16000M")
    if args.slurm_time is None and args.submitit_cluster == "slurm":
        raise UserError("--executor slurm needs --slurm_time, the time limit of one configuration (e.g. 2:00:00)")
    minutes = parse_time(args.slurm_time or "1-00:00:00")
    # submitit's own warning is SIGUSR2, which it handles in its wrapper but which also reaches
    # main_MIA.py (every process of the step is signalled) and kills it unsaved: SIGTERM instead, which
    # main_MIA.py answers by saving a resumable checkpoint. --slurm_extra signal=... still overrides it.
    extra = {"signal": f"TERM@{warning_s(minutes)}", **parse_extra(args.slurm_extra)}
    params = {"name": JOB_NAME, "timeout_min": minutes,
              "gpus_per_node": args.slurm_gpus_per_node, "cpus_per_task": args.slurm_cpus_per_task,
              "slurm_partition": args.slurm_partition, "slurm_mem": args.slurm_mem,
              "slurm_array_parallelism": args.slurm_array_parallelism, "slurm_additional_parameters": extra}
    return {k: v for k, v in params.items() if v is not None}


def warning_s(minutes: int) -> int:
    """Seconds before the time limit that Slurm warns a task: submitit's 90, at most half the limit."""
    return min(90, minutes * 30)


def slurm_task(job, env: dict) -> dict:
    """What one array task runs: the job, and how long it ran (which tells a time-out from a cancel)."""
    t0 = time.monotonic()
    rc = run_job(job, env)
    return {"rc": rc, "seconds": time.monotonic() - t0}


def outcome(r: Result, sj, limit_min: int, signalled: bool) -> None:
    """Sets r's rc, seconds, status and note from submitit job `sj` (finished)."""
    try:
        value = sj.result()
        r.rc, r.seconds = value["rc"], value["seconds"]
    except Exception as e:  # killed before it returned (node failure, SIGKILL): submitit's own words
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        r.note = f"submitit job {sj.job_id}: {first[:200]}; submitit log {sj.paths.stderr}"
        # With accounting (sacct), submitit knows Slurm's own verdict; without, the state is UNKNOWN.
        r.status = "timed out" if "TIMEOUT" in str(sj.state) else "failed"
        return
    warned_after = limit_min * 60 - warning_s(limit_min)
    if r.rc in (130, 143) and not signalled and r.seconds >= warned_after - WARNING_SLACK_S:
        r.status = "timed out"
        r.note = (f"timed out: stopped by Slurm's warning {warning_s(limit_min)} s before --slurm_time "
                  f"({limit_min} min), resumable; rerun the same command (a longer --slurm_time) to finish it")
    else:
        r.status = "done" if r.rc == 0 else "interrupted" if signalled or r.rc in (130, 143) else "failed"


def _groups(jobs: list) -> dict:
    groups = {}
    for job in jobs:
        groups.setdefault(Path(job.log).parent, []).append(job)
    return groups


def describe_slurm(jobs: list, args) -> str:
    """The sbatch options each job array would get (what --dry-run prints)."""
    p = slurm_parameters(args)
    flags = [("job-name", p["name"]), ("partition", p.get("slurm_partition")), ("time", p["timeout_min"]),
             ("gpus-per-node", p.get("gpus_per_node")), ("cpus-per-task", p.get("cpus_per_task")),
             ("mem", p.get("slurm_mem"))]
    flags += list(p.get("slurm_additional_parameters", {}).items())
    lines = [f"executor slurm through submitit ({args.submitit_cluster}): {len(jobs)} job(s)"]
    for folder, group in _groups(jobs).items():
        par = min(len(group), p.get("slurm_array_parallelism", 256))
        lines.append(f"  array of {len(group)}, logs in {folder / 'slurm'}:  --array=0-{len(group) - 1}%{par}")
    for k, v in flags:
        if v is not None:
            lines.append(f"  #SBATCH --{k.replace('_', '-')}" + ("" if v is True else f"={v}"))
    lines.append("  (time in minutes; each job appends its output to its own <run folder>/<name>.log)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        lines.append(f"  note: submitit is not installed; a real run needs it: {INSTALL}")
    return "\n".join(lines)


def poll_seconds() -> float:
    raw = os.environ.get(POLL_ENV, "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise UserError(f"{POLL_ENV}={raw!r} is not a number of seconds between 0 and 3600")
    return value


def run_slurm(jobs: list, args, out=None) -> list:
    out = out or sys.stdout
    params = slurm_parameters(args)
    poll = 0.5 if args.submitit_cluster != "slurm" else poll_seconds()  # checked before anything is submitted
    try:
        import submitit
    except ImportError:
        raise UserError(f"--executor slurm needs the submitit package: {INSTALL}") from None
    env = {}
    if args.slurm_cpus_per_task and "OMP_NUM_THREADS" not in os.environ:
        env = {"OMP_NUM_THREADS": str(args.slurm_cpus_per_task)}
    results = {id(j): Result(j, "not started") for j in jobs}
    submitted = []  # (job, submitit job)
    for folder, group in _groups(jobs).items():
        try:
            executor = submitit.AutoExecutor(folder=folder / "slurm", cluster=args.submitit_cluster)
            executor.update_parameters(**params)
            sjobs = executor.map_array(slurm_task, group, [env] * len(group))
        except Exception as e:  # no srun/sbatch here, sbatch refusing the settings, ...
            msg = " ".join(str(e).split())[:300] or type(e).__name__
            raise UserError(f"Slurm submission failed: {msg} (run on a Slurm login node; check the --slurm_* "
                            "settings with --dry-run)") from None
        submitted += list(zip(group, sjobs))
        ids = ", ".join(sorted({s.job_id.split("_")[0] for s in sjobs}))
        print(f"submitted {len(group)} job(s) to {args.submitit_cluster}: {ids}  (submitit logs: {folder / 'slurm'})",
              file=out, flush=True)

    def cancel(signum):
        for _, sj in submitted:
            if args.submitit_cluster == "debug" or not sj.done():
                sj.cancel(check=False)

    n, count = len(jobs), 0
    with SignalForwarder(cancel) as sig:
        waiting = list(submitted)
        while waiting:
            for job, sj in list(waiting):
                # debug jobs run inside result(); the others are polled
                if args.submitit_cluster != "debug" and not sj.done():
                    continue
                waiting.remove((job, sj))
                count += 1
                r = results[id(job)]
                outcome(r, sj, params["timeout_min"], sig.received is not None)
                tail = "" if r.rc == 0 else f" ({r.note or f'exit {r.rc}'}; log: {job.log})"
                print(f"[{count}/{n}] {r.status:<6} {job.name}  (job {sj.job_id}){tail}", file=out, flush=True)
            if waiting:
                time.sleep(poll)
    return [results[id(j)] for j in jobs], sig.received
