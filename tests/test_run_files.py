"""Run files are read strictly: a bare NaN or Infinity (Python's json reads them; this project never
writes them) is one clear line naming the file, never a number silently taken or dropped."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def nan_run(tmp_path):
    """A finished run folder as the sweep's planner sees it, its metrics.json edited to hold a bare NaN."""
    from lifecycle.identity import identity
    from main_MIA import build_parser

    argv = ["--folder", str(tmp_path), "--filename", "r", "--lambd", "0", "--num_epochs", "1"]
    cfg = vars(build_parser().parse_args(argv))
    run = tmp_path / "r"
    run.mkdir()
    ident = identity(cfg)
    (run / "config.json").write_text(json.dumps({**cfg, "identity": ident}))
    metrics = {"status": "finished", "identity": ident, "config": cfg, "train": {"test_acc": float("nan")},
               "attack": {"decoder": {"train_time": {}, "infer_time": {}}}}
    (run / "metrics.json").write_text(json.dumps(metrics))  # json.dumps writes NaN as a bare word
    return argv, run


def test_the_planner_names_a_metrics_file_holding_nan(tmp_path):
    argv, run = nan_run(tmp_path)
    r = subprocess.run([sys.executable, "-m", "lifecycle.plan", *argv], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    # not "finished": run_exp.sh hands it to main_MIA.py, which stops with the same one line
    assert r.returncode == 0 and r.stdout.split() == ["conflict", "r"], r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert str(run / "metrics.json") in line and "bare NaN" in line and "--force" in line


def test_readers_of_run_files_are_strict(tmp_path):
    from lifecycle.run_folder import Run
    from lifecycle.trained_run import read_run_config
    from utils import UserError, read_json

    _, run = nan_run(tmp_path)
    with pytest.raises(UserError, match="metrics.json .* bare NaN"):
        Run(tmp_path, "r").metrics()
    assert Run(tmp_path, "r").config()["lambd"] == 0  # the strict config.json beside it reads as before
    with pytest.raises(ValueError, match="bare NaN"):  # utils.NotStrictJSON
        read_json(run / "metrics.json")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    with pytest.raises(UserError, match="metrics.json is not valid JSON"):
        read_run_config(run)


def test_the_gan_sweep_names_a_run_it_cannot_read(tmp_path, capsys):
    from lifecycle.attack_runner import finished_runs

    _, run = nan_run(tmp_path)
    assert finished_runs(tmp_path) == []
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(run / "metrics.json") in line and "bare NaN" in line
