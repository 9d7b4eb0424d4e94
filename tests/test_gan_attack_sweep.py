"""run_gan_attack.py --sweep through the sweep executors (tools/sweep.py): one job per run not attacked yet."""
import json
import sys

import pytest
from fake_runs import make_run

import run_gan_attack
from tools.sweep import script_jobs

TINY_FLAGS = ["--gan_AE_type", "res_normN0C8", "--gan_epochs", "1", "--gan_batch_size", "32",
              "--attack_modes", "train_time", "--no_progress", "--device", "cpu"]


def test_each_job_repeats_the_attack_flags_but_not_the_executor_ones(tmp_path):
    parser = run_gan_attack.build_parser()
    args = parser.parse_args(["--sweep", str(tmp_path), "--jobs", "2", "--force", "--lr_G", "0.001", *TINY_FLAGS])
    jobs = script_jobs(run_gan_attack.__file__, [tmp_path / "r1"], args, parser, drop=("runs", "sweep"),
                       log=lambda d: d.parent / f"{d.name}.gan_attack.log")
    (job,) = jobs
    assert job.cmd[:3] == [sys.executable, run_gan_attack.__file__, str(tmp_path / "r1")]
    flags = job.cmd[3:]
    assert flags[flags.index("--gan_epochs") + 1] == "1" and flags[flags.index("--lr_G") + 1] == "0.001"
    assert "--force" in flags and "--no_progress" in flags
    assert "--jobs" not in flags and "--sweep" not in flags and "--executor" not in flags
    assert "--n_critic" not in flags  # defaults stay implicit
    assert job.log == str(tmp_path / "r1.gan_attack.log") and job.name == "r1"
    reparsed = parser.parse_args(job.cmd[2:])
    assert {k: v for k, v in vars(reparsed).items() if k not in ("runs", "sweep", "jobs")} == \
        {k: v for k, v in vars(args).items() if k not in ("runs", "sweep", "jobs")}


@pytest.mark.slow
def test_gan_sweep_runs_jobs_concurrently_skips_attacked_and_reports_failures(tmp_path, capsys):
    for name in ("a", "b"):
        make_run(tmp_path, name, limit_train=48, limit_test=12)
    broken = make_run(tmp_path, "c", limit_train=48, limit_test=12)
    (broken / "checkpoints" / "best.pt").unlink()
    code = run_gan_attack.main(["--sweep", str(tmp_path), "--jobs", "2", *TINY_FLAGS])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "Summary: 2 done, 0 skipped (already finished), 1 failed" in out
    assert f"failed: c (exit 2, log {tmp_path / 'c.gan_attack.log'})" in out
    assert "best.pt" in (tmp_path / "c.gan_attack.log").read_text()
    for name in ("a", "b"):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert "final" in metrics["attack"]["gan"]["train_time"]
    code = run_gan_attack.main(["--sweep", str(tmp_path), "--jobs", "2", *TINY_FLAGS])
    out = capsys.readouterr().out
    assert code == 1 and "Summary: 0 done, 2 skipped (already finished), 1 failed" in out
