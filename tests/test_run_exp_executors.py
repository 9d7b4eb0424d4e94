"""run_exp.sh with its executors (tools/sweep.py): concurrent jobs, skip on rerun, failures, signals,
Slurm settings, and the same results through submitit's local executor."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_run_exp import FAKE_EXPERIMENT, FAKE_MAIN, REPO, SCRIPT, SWEEP_VARS, sh, with_parser

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def stand_in_repo(tmp_path, main_code=FAKE_MAIN):
    """The sweep's scripts with main_MIA.py replaced by a fast stand-in."""
    repo = tmp_path / "repo"
    for package in ("tools", "lifecycle", "attacks", "defenses", "utils"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    for f in REPO.glob("*.py"):
        shutil.copy(f, repo / f.name)
    shutil.copy(SCRIPT, repo / "run_exp.sh")
    (repo / "main_MIA.py").write_text(main_code)
    return repo / "run_exp.sh"


def test_two_jobs_at_once_then_rerun_skips_them(tmp_path):
    script = stand_in_repo(tmp_path)
    folder = tmp_path / "out"
    args = ("--sigmas", "0.05", "--lambdas", "0 8 16", "--epochs", "1", "--folder", str(folder), "--jobs", "2")
    r = sh(*args, script=script, tmp=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Summary: 2 done, 0 skipped (already finished), 1 failed" in r.stdout
    log8 = next(folder.glob("*lambd8*.log"))
    assert f"failed: {log8.stem} (exit 1, log {log8})" in r.stdout and "simulated crash" in log8.read_text()
    assert r.stdout.count("] start ") == 3 and (folder / "results.md").exists()
    r = sh("--sigmas", "0.05", "--lambdas", "0 16", *args[4:], script=script, tmp=tmp_path)
    assert r.returncode == 0 and "Summary: 0 done, 2 skipped (already finished), 0 failed" in r.stdout
    assert "] start " not in r.stdout


def test_slurm_dry_run_prints_what_it_would_submit(tmp_path):
    r = sh("--dry-run", "--sigmas", "0.05", "--lambdas", "0 16", "--executor", "slurm", "--slurm_partition", "gpu",
           "--slurm_time", "2:00:00", "--slurm_cpus_per_task", "8", "--slurm_mem", "32G",
           "--slurm_array_parallelism", "1", "--slurm_extra", "qos=high", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len([c for c in r.stdout.splitlines() if "main_MIA.py" in c]) == 2
    for flag in ("#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH --qos=high", "--array=0-1%1",
                 str(tmp_path / "runs" / "slurm")):
        assert flag in r.stderr, flag
    assert not (tmp_path / "runs").exists()
    for bad in (("--executor", "pbs"), ("--jobs", "0"), ("--executor", "slurm")):
        r = sh("--dry-run", *bad, tmp=tmp_path)
        assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: "), (bad, r.stderr)


SLEEPY_MAIN = with_parser("""
import os, signal, sys, time
a = sys.argv
folder, name = a[a.index("--folder") + 1], a[a.index("--filename") + 1]
def stop(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
print("ready".upper(), flush=True)
time.sleep(60)
""")


def test_sigterm_to_run_exp_reaches_every_running_configuration(tmp_path):
    script = stand_in_repo(tmp_path, SLEEPY_MAIN)
    folder = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("SIGMAS", "LAMBDAS", "FOLDER")}
    proc = subprocess.Popen(["bash", str(script), "--sigmas", "0.05", "--lambdas", "0 8 16", "--folder", str(folder),
                             "--jobs", "2", "--python", sys.executable], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t = time.time()
    while sum("READY" in p.read_text() for p in folder.glob("*.log")) < 2 and time.time() - t < 60:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    logs = sorted(folder.glob("*.log"))
    assert len(logs) == 2 and all("got SIGTERM" in p.read_text() for p in logs)
    assert "0 done, 0 skipped (already finished), 0 failed, 2 interrupted, 1 not started" in out


@pytest.mark.slow
def test_real_mini_sweep_local_jobs_and_submitit_agree(tmp_path):
    pytest.importorskip("submitit", reason="submitit is optional (requirements-dev.txt)")
    common = ("--dataset", "digits", "--sigmas", "0.1", "--lambdas", "0 16", "--epochs", "1", "--attack_epochs", "1",
              "--device", "cpu", "--extra", "--limit_train 160 --limit_test 64 --no_progress --attack_modes train_time")
    env = {"OMP_NUM_THREADS": "1"}  # the same float arithmetic under both executors
    a, b = tmp_path / "local", tmp_path / "submitit"

    def sh(*args, env, tmp):  # real training on busy shared cores: minutes, not test_run_exp's 60 s
        e = {k: v for k, v in os.environ.items() if k not in SWEEP_VARS}
        e.update(env, PYTHON=sys.executable, DATA_ROOT=str(tmp / "no_data"))
        return subprocess.run(["bash", str(SCRIPT), *args], env=e, capture_output=True, text=True, timeout=900)

    r = sh(*common, "--folder", str(a), "--executor", "local", "--jobs", "2", env=env, tmp=tmp_path)
    assert r.returncode == 0 and "Summary: 2 done, 0 skipped" in r.stdout, r.stdout + r.stderr
    r = sh(*common, "--folder", str(a), "--jobs", "2", env=env, tmp=tmp_path)
    assert r.returncode == 0 and "Summary: 0 done, 2 skipped" in r.stdout, r.stdout + r.stderr
    r = sh(*common, "--folder", str(b), "--executor", "slurm", "--submitit_cluster", "local", env=env, tmp=tmp_path)
    assert r.returncode == 0 and "Summary: 2 done, 0 skipped" in r.stdout, r.stdout + r.stderr
    assert (b / "slurm").is_dir()
    assert (a / "results.csv").read_text() == (b / "results.csv").read_text()


# Every facescrub configuration fails up front, as a missing data set does, in main_MIA.py's one line.
NO_FACESCRUB_MAIN = with_parser(FAKE_EXPERIMENT + """
import sys
cfg = vars(build_parser().parse_args(sys.argv[1:]))
cfg.pop("no_progress")
if cfg["dataset"] == "facescrub":
    print("loading facescrub")
    sys.exit(print(f"error: FaceScrub is not under {cfg['data_root']}; see README, Data layouts", file=sys.stderr) or 2)
run_experiment(cfg)
""")


def test_a_sweep_where_everything_failed_ends_on_their_error(tmp_path):
    # Issue 18: it ended on the report's "no finished metrics.json ... run run_exp.sh first".
    script = stand_in_repo(tmp_path, NO_FACESCRUB_MAIN)
    data = tmp_path / "no_data"
    args = ("--sigmas", "0.05", "--lambdas", "0 16", "--epochs", "1")
    r = sh("--datasets", "facescrub", *args, env={"DATA_ROOT": str(data)}, script=script)
    assert r.returncode == 1, r.stdout + r.stderr
    first = next((script.parent / "runs" / "facescrub").glob("*lambd0_*.log")).stem
    assert r.stderr.strip().splitlines()[-1] == (f"error: 2 of 2 configurations failed: {first} and 1 more: "
                                                 f"FaceScrub is not under {data}; see README, Data layouts")
    assert "metrics.json" not in r.stdout + r.stderr and "Summary: 0 done" in r.stdout
    # One dataset's folder gets its report; the other's says why it has none; the errors come last.
    r = sh("--datasets", "digits facescrub", *args, env={"DATA_ROOT": str(data)}, script=script)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "| σ=0.05 |" in r.stdout and (script.parent / "runs" / "digits" / "results.md").exists()
    err = r.stderr.strip().splitlines()
    assert "no report for ./runs/facescrub: none of its configurations finished" in err
    assert err[-1].startswith("error: 2 of 4 configurations failed: ") and err[-1].endswith("Data layouts")
    assert "no finished metrics.json" not in r.stdout + r.stderr


def test_quick_over_seeds_ends_with_the_interval_table_and_the_page(tmp_path):
    # Issue 21: `--quick --seeds "125 126 127"` ends on the paired CEM gain with 95% intervals and report.html.
    script = stand_in_repo(tmp_path)
    folder = tmp_path / "q"
    r = sh("--quick", "--seeds", "125 126 127", "--epochs", "2", "--folder", str(folder), script=script,
           tmp=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Summary: 6 done, 0 skipped" in r.stdout
    out = r.stdout.strip().splitlines()
    assert out[-1] == f"report page: {folder / 'report.html'}"
    # The stand-in's seeds 125-127 give gains 266.7%, 273.3%, 280% and accuracy changes 0, -1, -2.
    (row,) = [line for line in out if line.startswith("| None | 0.05 | 16 | 3 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6] == "-1.00 [-3.48, +1.48]" and cells[9] == "+273.3% [+256.8, +289.9]", row
    assert cells[10] == "+273.3% [+256.8, +289.9] (decoder)"
    # nothing but paths after the gain table's caption
    caption = max(i for i, line in enumerate(out) if "Student-t interval" in line)
    assert all(line.startswith(("wrote ", "trade-off plot: ", "reconstructions ", "report page: ", "6 finished"))
               for line in out[caption + 1:] if line.strip()), out[caption + 1:]
    page = (folder / "report.html").read_text()
    assert page.count('src="report_files/grids/') == 2 and page.count('src="report_files/curves/') == 6
    assert "Checked: same evaluation images in every grid" in page
