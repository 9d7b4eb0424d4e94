"""Issue 11: validation up front, non-finite values, locking, crash consistency, one-line errors, permissions."""
import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import main_MIA
import model_training
import utils
from utils import write_json

REPO = Path(__file__).resolve().parents[1]
TINY = ["--num_epochs", "1", "--limit_train", "96", "--limit_test", "32", "--no_attack", "--device", "cpu",
        "--batch_size", "32", "--no_progress", "--lambd", "0"]


def run_main(capsys, tmp_path, *args):
    argv = ["--dataset", "digits", "--data_root", str(tmp_path / "data"), "--folder", str(tmp_path / "runs"),
            "--filename", "r", *TINY, *args]
    code = main_MIA.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("flag,value", [("--regularization_strength", "nan"), ("--learning_rate", "inf"),
                                        ("--var_threshold", "nan"), ("--lambd", "nan"), ("--lambd", "inf"),
                                        ("--local_lr=-inf", None), ("--AT_regularization_strength", "nan")])
def test_non_finite_flags_refused_before_any_work(flag, value, capsys, tmp_path):
    code, _, err = run_main(capsys, tmp_path, *([flag, value] if value else [flag]))
    assert code == 2 and flag.split("=")[0] in one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_attack_needs_checked_before_training(capsys, tmp_path):
    attack = [a for a in TINY if a != "--no_attack"]
    argv = ["--dataset", "digits", "--data_root", str(tmp_path), "--folder", str(tmp_path / "runs2"), *attack]
    assert main_MIA.main(argv + ["--gan_AE_type", "res_normX"]) == 2
    assert "res_normX" in one_error_line(capsys.readouterr().err) and not (tmp_path / "runs2").exists()
    # One test image: infer_time has nothing to score on. Found before training, so nothing is trained.
    assert main_MIA.main(argv + ["--limit_test", "1", "--attack_modes", "infer_time"]) == 2
    assert "infer_time" in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "runs2").rglob("*.pt"))


def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(capsys, tmp_path, monkeypatch):
    original = model_training.Trainer.train_epoch

    def diverging(self, epoch):
        stats = original(self, epoch)
        return {**stats, "train_loss": float("nan")} if epoch == 1 else stats

    monkeypatch.setattr(model_training.Trainer, "train_epoch", diverging)
    code, _, err = run_main(capsys, tmp_path, "--num_epochs", "2")
    line = one_error_line(err)
    assert code == 1 and "non-finite" in line and "epoch 2" in line and "checkpoint (epoch 1)" in line
    run = tmp_path / "runs" / "r"
    m = strict_json(run / "metrics.json")
    assert m["status"] == "failed" and "epoch 2" in m["error"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    with open(run / "train_log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]
    # Checkpoints far apart (as on CUDA): the message names the checkpoint that exists, not the last epoch.
    code, _, err = run_main(capsys, tmp_path, "--num_epochs", "2", "--checkpoint_seconds", "1e9", "--force")
    assert code == 1 and "checkpoint (none written yet)" in one_error_line(err)


def test_metrics_json_is_always_strict_json(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": {"c": [1.0, float("inf")]}, "d": 2.5})
    m = strict_json(tmp_path / "m.json")
    assert m["a"] is None and m["b"]["c"] == [1.0, None] and m["d"] == 2.5
    assert m["non_finite"] == {"a": "nan", "b.c[1]": "inf"}


def _npz(tmp_path, labels):
    p = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x=rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8), y=np.asarray(labels))
    return f"npz:{p}"


def test_npz_labels_checked(capsys, tmp_path):
    from datasets import load_dataset

    labels = list(range(10)) * 6
    code, _, err = run_main(capsys, tmp_path, "--dataset", _npz(tmp_path, labels + [1000]))
    assert code == 2 and "1000" in one_error_line(err) and "--num_classes" in err
    code, _, err = run_main(capsys, tmp_path, "--dataset", _npz(tmp_path, labels), "--num_classes", "5")
    assert code == 2 and "label 9" in one_error_line(err)
    # Classes that truly have no images are fine when the class count is given.
    spec = _npz(tmp_path, [0, 1, 2, 4] * 10)
    assert load_dataset(spec, None, num_classes=6).num_classes == 6


def test_lock_refuses_a_second_process_and_dies_with_its_holder(capsys, copy_run):
    argv, run = copy_run
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lifecycle.run_folder import Run; "
         "Run(sys.argv[1], 'r').open(); print('locked', flush=True); time.sleep(120)", str(run.parent)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--attack_only", "--attack_epochs", "2"], ["--force"]):
            assert main_MIA.main(argv + extra) == 2
            assert "another process is working in" in one_error_line(capsys.readouterr().err)
        os.kill(holder.pid, signal.SIGKILL)   # no clean-up code runs, yet the lock is gone with the process
        holder.wait(timeout=10)
    finally:
        holder.kill()
    assert main_MIA.main(argv) == 0 and "already finished" in capsys.readouterr().out


def test_kill_during_first_checkpoint_leaves_log_and_checkpoint_consistent(capsys, tmp_path, monkeypatch):
    original = model_training.torch_save_atomic

    def dies_writing_first_last(obj, path):
        if Path(path).name == "last.pt" and obj["epoch"] == 1:
            (Path(path).parent / ".last.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # as kill -9 leaves it
            raise KeyboardInterrupt
        return original(obj, path)

    monkeypatch.setattr(model_training, "torch_save_atomic", dies_writing_first_last)
    code, _, _ = run_main(capsys, tmp_path)
    assert code == 130
    run = tmp_path / "runs" / "r"
    assert list(run.rglob("*.tmp")) and not (run / "checkpoints" / "last.pt").exists()
    monkeypatch.setattr(model_training, "torch_save_atomic", original)
    code, _, _ = run_main(capsys, tmp_path, "--resume")
    assert code == 0 and not list(run.rglob("*.tmp"))
    with open(run / "train_log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


def test_full_disk_gives_one_line_keeps_the_last_checkpoint_and_resumes(capsys, tmp_path, monkeypatch):
    class FillsUp(io.RawIOBase):  # the device runs out of space part-way through the file
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            self.n += len(b)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

    original = model_training.torch_save_atomic

    def full_at_epoch_2(obj, path):
        if Path(path).name == "last.pt" and obj["epoch"] == 2:
            return utils._atomic_replace(Path(path), lambda f: torch.save(obj, FillsUp(f)))
        return original(obj, path)

    monkeypatch.setattr(model_training, "torch_save_atomic", full_at_epoch_2)
    code, _, err = run_main(capsys, tmp_path, "--num_epochs", "3")
    line = one_error_line(err)
    assert code == 1 and "no space left" in line and "last.pt" in line and "--resume" in line
    run = tmp_path / "runs" / "r"
    assert not list(run.rglob("*.tmp"))  # the half-written file is gone, freeing its space
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    m = strict_json(run / "metrics.json")
    assert m["status"] == "interrupted" and "no space left" in m["error"]
    monkeypatch.setattr(model_training, "torch_save_atomic", original)
    code, _, _ = run_main(capsys, tmp_path, "--num_epochs", "3", "--resume")
    assert code == 0 and strict_json(run / "metrics.json")["status"] == "finished"
    with open(run / "train_log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_full_disk_under_a_log_append_gives_one_line(capsys, tmp_path, monkeypatch):
    def full(path, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_training, "append_csv_row", full)
    code, _, err = run_main(capsys, tmp_path)
    assert code == 1 and "no space left on the device;" in one_error_line(err)


def test_sigterm_stops_a_run_resumably(tmp_path):
    argv = [sys.executable, str(REPO / "main_MIA.py"), "--dataset", "digits", "--data_root", str(tmp_path),
            "--folder", str(tmp_path / "runs"), "--filename", "r", *TINY, "--num_epochs", "400"]
    p = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "r"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoints" / "last.pt").exists():
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 143 and "--resume" in err and "Traceback" not in err, err  # 128 + SIGTERM, as run_exp.sh
    assert strict_json(run / "metrics.json")["status"] == "interrupted"
    plan = subprocess.run([sys.executable, "-m", "lifecycle.plan", *argv[2:]], cwd=REPO, capture_output=True, text=True)
    assert plan.stdout.split() == ["resume", "r"], plan.stdout + plan.stderr


def test_damaged_files_and_unwritable_folders_give_one_line(capsys, copy_run, tmp_path):
    argv, run = copy_run
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    assert main_MIA.main(argv + ["--attack_only", "--attack_epochs", "2"]) == 2
    assert "best.pt" in one_error_line(capsys.readouterr().err)
    (run / "config.json").write_text('{"arch": "vgg11')
    assert main_MIA.main(argv + ["--resume"]) == 2
    assert "config.json" in one_error_line(capsys.readouterr().err)
    (tmp_path / "runs" / "afile").write_text("not a folder")
    assert main_MIA.main(argv + ["--filename", "afile"]) == 2
    assert "afile" in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to any folder")
def test_read_only_run_folder_gives_one_line(capsys, copy_run):
    argv, run = copy_run
    (run / "metrics.json").unlink()
    run.chmod(0o555)
    try:
        assert main_MIA.main(argv) == 2
        assert "not writable" in one_error_line(capsys.readouterr().err)
    finally:
        run.chmod(0o755)


def test_failed_start_leaves_no_folder_and_results_follow_umask(capsys, tmp_path, tiny_run):
    code, _, err = run_main(capsys, tmp_path, "--dataset", "facescrub", "--data_root", str(tmp_path / "nowhere"))
    assert code == 2 and "facescrub" in one_error_line(err)
    assert not (tmp_path / "runs").exists()
    mask = os.umask(0)
    os.umask(mask)
    for name in ("metrics.json", "config.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tiny_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
