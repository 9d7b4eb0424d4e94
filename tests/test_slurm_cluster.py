"""--executor slurm against a real Slurm cluster: the one-node cluster tools/ci/slurm_up.sh starts on this
machine (.ci/run does, and sets CEM_SLURM=1 and SLURM_CONF). Real sbatch job arrays, scancel, a time-out
and reruns, with real (tiny) training; elsewhere these tests skip with the reason the cluster is missing.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_exp import REPO, SCRIPT, SWEEP_VARS

UP = REPO / "tools" / "ci" / "slurm_up.sh"
SLURM_DIR = Path(os.environ.get("CEM_SLURM_DIR", "/tmp/cem-slurm"))


def cluster_missing():
    """Why the cluster tests cannot run here, or None when a cluster answers."""
    if os.environ.get("CEM_SLURM") != "1":
        why = (SLURM_DIR / "unavailable").read_text().strip() if (SLURM_DIR / "unavailable").is_file() else \
            f"{UP.relative_to(REPO)} up was not run"
        return f"no Slurm cluster: {why} (CEM_SLURM=1 is set by .ci/run once the cluster is up)"
    if shutil.which("sinfo") is None:
        return "CEM_SLURM=1 but sinfo is not on PATH"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    states = r.stdout.split()
    if r.returncode or not {"idle", "mixed", "allocated"} & set(states):
        return f"sinfo shows no usable node: {(r.stderr or r.stdout).strip()[:200] or 'no output'}"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (requirements-dev.txt)"
    return None


MISSING = cluster_missing()
needs_cluster = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

# Tiny real training: digits, one thread per task (2 tasks share the CI machine's 2 cores).
TINY = ("--dataset", "digits", "--attack_epochs", "1", "--batch_size", "32", "--gan_AE_type", "res_normN1C16",
        "--device", "cpu", "--extra", "--limit_train 192 --limit_test 64 --no_progress --attack_modes train_time")
SLURM = ("--executor", "slurm", "--slurm_gpus_per_node", "0", "--slurm_cpus_per_task", "1")


def env(tmp):
    e = {k: v for k, v in os.environ.items() if k not in SWEEP_VARS}
    # A poll a second (not 30 s) keeps the tests short; OMP_NUM_THREADS=1: the same arithmetic locally.
    e.update(PYTHON=sys.executable, DATA_ROOT=str(tmp / "no_data"), OMP_NUM_THREADS="1", CEM_SLURM_POLL_S="1")
    return e


def sweep(tmp, *args, timeout=600):
    return subprocess.run(["bash", str(SCRIPT), *TINY, *args], env=env(tmp), capture_output=True, text=True,
                          timeout=timeout)


def training_rows(run: Path) -> list:
    """train_log.csv less its timing column: what the optimisation did, epoch by epoch."""
    lines = (run / "train_log.csv").read_text().splitlines()
    return [",".join(line.split(",")[:-1]) for line in lines]


@pytest.fixture(scope="module")
def array_sweep(tmp_path_factory):
    """A 2 σ × 2 λ sweep as one real job array (its folder, run_exp.sh's result)."""
    if MISSING:
        pytest.skip(MISSING)
    tmp = tmp_path_factory.mktemp("slurm_array")
    r = sweep(tmp, "--sigmas", "0.05 0.1", "--lambdas", "0 16", "--epochs", "2", "--folder", str(tmp / "slurm"),
              *SLURM, "--slurm_time", "5")
    return tmp, r


@needs_cluster
def test_a_sweep_is_one_real_job_array_and_matches_the_local_executor(array_sweep):
    tmp, r = array_sweep
    assert r.returncode == 0, r.stdout + r.stderr
    (array_id,) = re.findall(r"submitted 4 job\(s\) to slurm: (\d+) ", r.stdout)
    tasks = sorted(re.findall(rf"\] done   \S+  \(job ({array_id}_\d)\)", r.stdout))
    assert tasks == [f"{array_id}_{i}" for i in range(4)], r.stdout
    assert "Summary: 4 done, 0 skipped (already finished), 0 failed, 0 interrupted" in r.stdout
    # submitit's files for each task of that array, written by the tasks Slurm ran
    assert len(list((tmp / "slurm" / "slurm").glob(f"{array_id}_*_result.pkl"))) == 4
    assert (tmp / "slurm" / "report.html").is_file() and "report page: " in r.stdout

    local = sweep(tmp, "--sigmas", "0.05 0.1", "--lambdas", "0 16", "--epochs", "2", "--folder", str(tmp / "local"),
                  "--jobs", "2")
    assert local.returncode == 0 and "Summary: 4 done" in local.stdout, local.stdout + local.stderr
    assert (tmp / "slurm" / "results.csv").read_text() == (tmp / "local" / "results.csv").read_text()
    runs = sorted(p.name for p in (tmp / "local").iterdir() if (p / "metrics.json").is_file())
    assert len(runs) == 4
    # the configurations differ from each other, and each matches its local twin epoch by epoch
    assert len({tuple(training_rows(tmp / "local" / name)) for name in runs}) == 4
    for name in runs:
        assert training_rows(tmp / "slurm" / name) == training_rows(tmp / "local" / name), name


@needs_cluster
def test_gan_attack_sweep_runs_as_a_job_array_on_finished_runs(array_sweep):
    tmp, r = array_sweep
    assert r.returncode == 0, r.stdout + r.stderr
    cmd = [sys.executable, str(REPO / "run_gan_attack.py"), "--sweep", str(tmp / "slurm"), *SLURM, "--slurm_time", "5",
           "--gan_AE_type", "res_normN0C8", "--gan_epochs", "1", "--gan_batch_size", "32",
           "--attack_modes", "train_time", "--no_progress", "--device", "cpu"]
    g = subprocess.run(cmd, env=env(tmp), capture_output=True, text=True, timeout=600)
    assert g.returncode == 0, g.stdout + g.stderr
    assert re.search(r"submitted 4 job\(s\) to slurm: \d+ ", g.stdout), g.stdout
    assert "Summary: 4 done, 0 skipped (already finished), 0 failed" in g.stdout
    import json

    for run in (p for p in (tmp / "slurm").iterdir() if (p / "metrics.json").is_file()):
        assert "final" in json.loads((run / "metrics.json").read_text())["attack"]["gan"]["train_time"], run
    again = subprocess.run(cmd, env=env(tmp), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Summary: 0 done, 4 skipped" in again.stdout, again.stdout + again.stderr
    assert "submitted" not in again.stdout


def wait_for(cond, timeout, what):
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def resumed_after(log: Path) -> int:
    """The epoch the last attempt in a run's log resumed after (lifecycle.experiment logs it)."""
    found = re.findall(r"resumed after epoch (\d+)", log.read_text())
    assert found, log.read_text()[-2000:]
    return int(found[-1])


@needs_cluster
def test_scancel_of_one_task_then_the_same_command_resumes_only_that_one(tmp_path):
    folder = tmp_path / "runs"
    args = ("--sigmas", "0.1", "--lambdas", "0 16", "--epochs", "8", "--folder", str(folder), *SLURM,
            "--slurm_time", "10")
    out = tmp_path / "first.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(["bash", str(SCRIPT), *TINY, *args], env=env(tmp_path), stdout=f,
                                stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "submitted 2 job(s)" in out.read_text(), 120, "the submission")
        array_id = re.search(r"submitted 2 job\(s\) to slurm: (\d+) ", out.read_text()).group(1)
        # λ is the inner loop: task 1 is λ = 16. Cancel it once two epochs are logged (checkpointed).
        wait_for(lambda: any(len(training_rows(p)) >= 3 for p in folder.glob("*lambd16*") if
                             (p / "train_log.csv").is_file()), 300, "two epochs of the λ = 16 run")
        subprocess.run(["scancel", f"{array_id}_1"], check=True, timeout=30)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    first = out.read_text()
    (run16,) = [p for p in folder.glob("*lambd16*") if p.is_dir()]
    assert f"interrupted {run16.name}  (job {array_id}_1)" in first, first
    assert "Summary: 1 done, 0 skipped (already finished), 0 failed, 1 interrupted" in first, first
    done_epochs = len(training_rows(run16)) - 1
    assert 2 <= done_epochs < 8, first

    r = sweep(tmp_path, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Summary: 1 done, 1 skipped (already finished), 0 failed, 0 interrupted" in r.stdout
    assert re.search(rf"\] done   {run16.name}  \(job \d+\)", r.stdout), r.stdout  # one job: no array
    # From its last checkpoint, not from scratch (the epoch's log row comes just before its checkpoint).
    assert resumed_after(folder / f"{run16.name}.log") >= max(1, done_epochs - 1)
    assert [row.split(",")[0] for row in training_rows(run16)[1:]] == [str(e) for e in range(1, 9)]


@needs_cluster
def test_a_task_past_its_slurm_time_is_reported_timed_out_and_the_rerun_finishes_it(tmp_path):
    folder = tmp_path / "runs"
    # ~1 s an epoch here: 80 epochs outlast --slurm_time 1 (Slurm warns 30 s before it, checks every ~30 s)
    args = ("--sigmas", "0.1", "--lambdas", "0", "--epochs", "80", "--folder", str(folder), *SLURM)
    r = sweep(tmp_path, *args, "--slurm_time", "1")
    runs = [p for p in folder.glob("*lambd0*") if p.is_dir()]
    assert len(runs) == 1, r.stdout + r.stderr
    (run,) = runs
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(rf"\] timed out {run.name}  \(job \d+\) \(timed out: stopped by Slurm's warning 30 s before "
                     r"--slurm_time \(1 min\)", r.stdout), r.stdout
    assert "Summary: 0 done, 0 skipped (already finished), 0 failed, 0 interrupted, 1 timed out" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: 1 of 1 configurations failed: {run.name}: timed out")
    stopped_at = len(training_rows(run)) - 1
    assert 1 <= stopped_at < 80

    r = sweep(tmp_path, *args, "--slurm_time", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Summary: 1 done, 0 skipped" in r.stdout
    assert resumed_after(folder / f"{run.name}.log") >= max(1, stopped_at - 1)
    assert len(training_rows(run)) == 81


def test_without_apt_get_the_cluster_does_not_start_and_the_tests_skip_with_the_reason(tmp_path):
    # A PATH with the shell tools slurm_up.sh uses but neither Slurm nor apt-get, as on a machine without them.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "rm", "cat", "id", "tail", "sleep"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    e = {k: v for k, v in os.environ.items() if k not in ("CEM_SLURM", "SLURM_CONF")}
    e.update(PATH=str(bin_dir), CEM_SLURM_DIR=str(tmp_path / "slurm"))
    up = subprocess.run([str(bin_dir / "bash"), str(UP), "up"], env=e, capture_output=True, text=True, timeout=60)
    why = "Slurm is not installed and apt-get is not available to install it (slurm-wlm)"
    assert up.returncode == 1 and up.stderr.strip().splitlines()[-1] == f"slurm_up: {why}", up.stderr
    assert (tmp_path / "slurm" / "unavailable").read_text().strip() == why
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        f"{Path(__file__).name}::test_a_sweep_is_one_real_job_array_and_matches_the_local_executor"],
                       cwd=Path(__file__).parent, env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout + r.stderr
    assert f"SKIPPED [1] {Path(__file__).name}" in r.stdout and f"no Slurm cluster: {why}" in r.stdout, r.stdout
