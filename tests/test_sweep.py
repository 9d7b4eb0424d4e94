"""tools.sweep: the sweep's executors (local processes pinned to GPUs or CPU slots; Slurm via submitit)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import sweep
from tools.sweep_slurm import parse_extra, parse_time

REPO = Path(__file__).resolve().parents[1]


def write_jobs(path, jobs):
    """The jobs file exactly as run_exp.sh writes it (bash printf with NUL separators)."""
    words = [w for name, log, cmd in jobs for w in (name, str(log), str(len(cmd)), *cmd)]
    subprocess.run(["bash", "-c", 'printf "%s\\0" "$@" > "$0"', str(path), *words], check=True)
    return path


def py(code):
    return [sys.executable, "-c", code]


def sweep_cli(*args, env=None, **kw):
    e = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tools.sweep", *map(str, args)], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=120, **kw)


def test_jobs_file_round_trip(tmp_path):
    cmd = ["python", "main_MIA.py", "--extra", "two words", "tab\there", "quote'\"", "ünï"]
    f = write_jobs(tmp_path / "jobs", [("a", tmp_path / "a.log", cmd), ("b", tmp_path / "b.log", ["true"])])
    jobs = sweep.read_jobs(f)
    assert [(j.name, j.log, j.cmd) for j in jobs] == [("a", str(tmp_path / "a.log"), cmd),
                                                      ("b", str(tmp_path / "b.log"), ["true"])]
    (tmp_path / "bad").write_bytes(b"a\0log\x005\0python\0")
    with pytest.raises(sweep.UserError, match="truncated"):
        sweep.read_jobs(tmp_path / "bad")


# Each job announces itself and waits for the other one: they can only both finish when run concurrently.
RENDEZVOUS = """
import os, sys, time
me, other = sys.argv[1], sys.argv[2]
open(me, "w").write(os.environ.get("OMP_NUM_THREADS", "unset"))
t = time.time()
while not os.path.exists(other):
    if time.time() - t > 20:
        sys.exit("the other job never ran at the same time")
    time.sleep(0.05)
print("met", os.path.basename(other))
"""


def test_local_jobs_run_concurrently_and_share_the_cores(tmp_path):
    a, b = tmp_path / "a.flag", tmp_path / "b.flag"
    f = write_jobs(tmp_path / "jobs", [("a", tmp_path / "logs" / "a.log", py(RENDEZVOUS) + [str(a), str(b)]),
                                       ("b", tmp_path / "logs" / "b.log", py(RENDEZVOUS) + [str(b), str(a)])])
    r = sweep_cli(f, "--jobs", "2", "--skipped", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Summary: 2 done, 3 skipped (already finished), 0 failed" in r.stdout
    assert "met b.flag" in (tmp_path / "logs" / "a.log").read_text()
    # one start and one end line per job; the jobs' own output stays in their logs
    assert r.stdout.count("start ") == 2 and r.stdout.count("done ") == 2 and "met" not in r.stdout
    assert a.read_text() == str(max(1, (os.cpu_count() or 1) // 2))


def test_failing_job_is_reported_and_others_still_run(tmp_path):
    logs = tmp_path / "logs"
    jobs = [("bad", logs / "bad.log", py("import sys; print('boom'); sys.exit(3)")),
            ("good1", logs / "good1.log", py("print('ok')")),
            ("good2", logs / "good2.log", py("print('ok')"))]
    r = sweep_cli(write_jobs(tmp_path / "jobs", jobs), "--jobs", "1")
    assert r.returncode == 1
    assert "Summary: 2 done, 0 skipped (already finished), 1 failed" in r.stdout
    assert f"failed: bad (exit 3, log {logs / 'bad.log'})" in r.stdout
    assert "boom" in r.stdout  # a single slot streams the job's output, as run_exp.sh always did
    assert "boom" in (logs / "bad.log").read_text() and "ok" in (logs / "good2.log").read_text()


def test_each_job_is_pinned_to_one_gpu(tmp_path, monkeypatch):
    assert sweep.plan_slots("3,5", 2, None) == ["3", "5", "3", "5"]
    assert sweep.plan_slots("3,5", None, 3) == ["3", "5", "3"]
    monkeypatch.setattr(sweep, "visible_gpus", lambda: [])
    assert sweep.plan_slots(None, None, 4) == [None] * 4 and sweep.plan_slots(None, None, None) == [None]
    with pytest.raises(sweep.UserError, match="--jobs N"):
        sweep.plan_slots(None, 2, None)
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert sweep.visible_gpus() == ["2", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert sweep.visible_gpus() == []
    show = "import os, time; time.sleep(0.3); print('gpu=' + os.environ['CUDA_VISIBLE_DEVICES'])"
    jobs = [(f"j{i}", tmp_path / f"j{i}.log", py(show)) for i in range(4)]
    r = sweep_cli(write_jobs(tmp_path / "jobs", jobs), "--gpus", "3,5", "--jobs-per-gpu", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    seen = [next(w for w in (tmp_path / f"j{i}.log").read_text().split() if w.startswith("gpu=")) for i in range(4)]
    assert sorted(seen) == ["gpu=3", "gpu=3", "gpu=5", "gpu=5"]
    assert "on GPU 3" in r.stdout and "on GPU 5" in r.stdout
    # A job asking for another GPU than the one it is pinned to could not see it.
    jobs = [("x", tmp_path / "x.log", ["python", "main_MIA.py", "--device", "cuda:1"])]
    r = sweep_cli(write_jobs(tmp_path / "jobs2", jobs), "--gpus", "0,1", "--dry-run")
    assert r.returncode == 2 and r.stderr.startswith("error: --device cuda:1")


SLOW_JOB = """
import signal, sys, time
def stop(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("ready".upper(), flush=True)  # not a word of the command line in the log header
time.sleep(60)
"""


def test_sigterm_reaches_every_running_job_and_summary_follows(tmp_path):
    logs = tmp_path / "logs"
    jobs = [(f"j{i}", logs / f"j{i}.log", py(SLOW_JOB)) for i in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "tools.sweep", str(write_jobs(tmp_path / "jobs", jobs)),
                             "--jobs", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = time.time()
    while sum("READY" in p.read_text() for p in logs.glob("*.log")) < 2 and time.time() - t < 30:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, out + err
    assert all("got SIGTERM" in (logs / f"j{i}.log").read_text() for i in range(2))
    assert not (logs / "j2.log").exists()  # never started after the signal
    assert "0 done, 0 skipped (already finished), 0 failed, 2 interrupted, 1 not started" in out
    assert f"interrupted: j0 (exit 143, log {logs / 'j0.log'})" in out
    assert "SIGTERM received" in err


def test_slurm_parameters_and_dry_run(tmp_path):
    assert parse_time("90") == 90 and parse_time("1:30:00") == 90 and parse_time("1-00:00:00") == 1440
    assert parse_time("2-3") == 51 * 60 and parse_time("0:30") == 1
    assert parse_extra('qos=high --account=lab exclusive') == {"qos": "high", "account": "lab", "exclusive": True}
    jobs = [(f"j{i}", tmp_path / "runs" / f"j{i}.log", ["true"]) for i in range(3)]
    f = write_jobs(tmp_path / "jobs", jobs)
    r = sweep_cli(f, "--executor", "slurm", "--dry-run", "--slurm_partition", "gpu", "--slurm_time", "4:00:00",
                  "--slurm_gpus_per_node", "1", "--slurm_cpus_per_task", "8", "--slurm_mem", "32G",
                  "--slurm_array_parallelism", "2", "--slurm_extra", "qos=high account=lab")
    assert r.returncode == 0, r.stderr
    for flag in ("--partition=gpu", "--time=240", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32G",
                 "--qos=high", "--account=lab", "--array=0-2%2", str(tmp_path / "runs" / "slurm")):
        assert flag in r.stderr, flag
    assert not (tmp_path / "runs").exists()
    for bad, msg in ((["--slurm_time", "soon"], "not a Slurm time"), ([], "needs --slurm_time"),
                     (["--slurm_time", "60", "--slurm_mem", "lots"], "not a memory size")):
        r = sweep_cli(f, "--executor", "slurm", "--dry-run", *bad)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_slurm_without_submitit_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    args = sweep.build_parser().parse_args([str(tmp_path / "jobs"), "--executor", "slurm", "--slurm_time", "60"])
    with pytest.raises(sweep.UserError, match=r"pip install \"submitit"):
        sweep.execute([sweep.Job("a", ["true"], str(tmp_path / "a.log"))], args)


@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_submitit_executors_run_the_same_jobs(tmp_path, cluster):
    pytest.importorskip("submitit", reason="submitit is optional (requirements-dev.txt)")
    logs = tmp_path / "runs"
    jobs = [("ok", logs / "ok.log", py("print('fine')")), ("bad", logs / "bad.log", py("raise SystemExit(5)"))]
    r = sweep_cli(write_jobs(tmp_path / "jobs", jobs), "--executor", "slurm", "--submitit_cluster", cluster)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Summary: 1 done, 0 skipped (already finished), 1 failed" in r.stdout
    assert f"failed: bad (exit 5, log {logs / 'bad.log'})" in r.stdout
    assert "fine" in (logs / "ok.log").read_text() and (logs / "slurm").is_dir()


def test_slurm_off_a_cluster_is_one_line(tmp_path):
    pytest.importorskip("submitit", reason="submitit is optional (requirements-dev.txt)")
    f = write_jobs(tmp_path / "jobs", [("a", tmp_path / "a.log", ["true"])])
    # Off a cluster even where CI runs one: a PATH with Python but no Slurm commands (they live in /usr/bin).
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    r = sweep_cli(f, "--executor", "slurm", "--slurm_time", "10",
                  env={"PATH": str(tmp_path / "bin"), "SLURM_CONF": str(tmp_path / "none.conf")})
    assert r.returncode == 2 and r.stderr.startswith("error: Slurm submission failed") and "srun" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a.log").exists()


def test_the_last_line_gives_the_failed_jobs_own_errors(tmp_path):
    # Issue 18: a sweep whose every configuration failed ended on the report's "no finished metrics.json".
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("=== 2024-01-01 00:00:00 a\nold command\nerror: last week's problem\n")  # rerun
    bad_root = ("import sys; print('loading'); print('error: --data_root /nope does not exist', file=sys.stderr); "
                "sys.exit(2)")
    jobs = [("a", logs / "a.log", py(bad_root)), ("b", logs / "b.log", py(bad_root)),
            ("c", logs / "c.log", py("raise ValueError('bad value')")), ("ok", logs / "ok.log", py("print('ok')"))]
    outcome = tmp_path / "outcome"
    r = sweep_cli(write_jobs(tmp_path / "jobs", jobs), "--skipped", "2", "--outcome", outcome)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == ("error: 3 of 6 configurations failed: a and 1 more: --data_root /nope does not exist; "
                    "c: exit 1, last output: ValueError: bad value"), r.stderr
    assert outcome.read_text().splitlines() == [last.removeprefix("error: "), str(logs / "ok.log")]


def test_job_logs_hold_no_progress_bar_redraws(tmp_path):
    """The terminal keeps its bars; a job's log keeps every other line and each bar's finished state once."""
    code = ("import sys\nfrom tqdm import tqdm\nprint('before')\n"
            "for e in tqdm(range(3), desc='training', file=sys.stdout, mininterval=0):\n"
            "    for b in tqdm(range(50), desc=f'epoch {e + 1}/3', file=sys.stdout, mininterval=0, leave=False):\n"
            "        pass\n    print(f'epoch {e + 1} done')\n"
            "sys.stdout.buffer.write('caf\\u00e9 \\u2713\\n'.encode()); print('after')")
    f = write_jobs(tmp_path / "jobs", [("a", tmp_path / "a.log", py(code))])
    r = sweep_cli(f, "--jobs", "1")  # one job: its output is also copied to the terminal, bars and all
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("%|") > 100  # (text mode turned its carriage returns into newlines)
    log = (tmp_path / "a.log").read_text(encoding="utf-8")
    assert "\r" not in log and "\x1b" not in log
    lines = log.splitlines()
    lines = lines[lines.index("before"):]  # after the job header (the command spans lines here)
    assert lines[-2:] == ["café ✓", "after"]
    assert [ln for ln in lines if ln.startswith("epoch") and "done" in ln] == [f"epoch {e} done" for e in (1, 2, 3)]
    bars = [ln for ln in lines if "%|" in ln]
    assert len(bars) <= 4 and all("50/50" in b or "3/3" in b for b in bars), bars
    assert any(b.startswith("training: 100%") for b in bars)


def test_log_cleaner_splits_nothing_across_chunks():
    from tools.sweep_jobs import LogCleaner
    raw = "a\r\nb\rbar  10%|#  | 1/10 [00:01<00:09]\rbar 100%|###| 10/10 [00:02<00:00]\nc\xe9\n".encode()
    whole = LogCleaner().feed(raw, final=True)
    for size in (1, 2, 3, 7):
        c = LogCleaner()
        assert b"".join(c.feed(raw[i:i + size]) for i in range(0, len(raw), size)) + c.feed(b"", final=True) == whole
    assert whole.decode().splitlines() == ["a", "b", "bar 100%|###| 10/10 [00:02<00:00]", "cé"]
