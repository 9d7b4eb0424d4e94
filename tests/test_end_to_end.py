"""Train, attack, re-attack and report through the real entry points."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from PIL import Image

import main_MIA

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = SHARED_DATA


def _check_attack_block(block, modes):
    for mode in modes:
        r = block[mode]
        for which in ("final", "best_heldout", "baseline_mean_image"):
            for key in ("mse_mean", "ssim_mean", "psnr_mean", "mse_std", "n"):
                assert key in r[which], (mode, which, key)
        assert 0 <= r["final"]["ssim_mean"] <= 1 and r["final"]["mse_mean"] > 0
        assert r["n_fit"] > 0 and r["n_eval"] > 0 and r["decoder"] == "res_normN1C16"


def test_attack_only_reattacks_a_saved_run(tmp_path, capsys):
    common = ["--dataset", "digits", "--data_root", str(tmp_path), "--folder", str(tmp_path / "runs"),
              "--filename", "run", "--device", "cpu", "--no_progress", "--limit_train", "160", "--limit_test", "80",
              "--batch_size", "32", "--lambd", "0"]
    assert main_MIA.main(common + ["--num_epochs", "1", "--no_attack"]) == 0
    run = tmp_path / "runs" / "run"
    before = json.loads((run / "metrics.json").read_text())
    assert "attack" not in before
    ckpt_stamp = (run / "checkpoints" / "best.pt").stat().st_mtime_ns
    assert main_MIA.main(common + ["--attack_only", "--attack_epochs", "1", "--gan_AE_type", "res_normN1C16",
                                   "--attack_modes", "infer_time"]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert after["status"] == "finished" and after["train"] == before["train"]  # no retraining
    _check_attack_block(after["attack"]["decoder"], ["infer_time"])
    assert (run / "checkpoints" / "best.pt").stat().st_mtime_ns == ckpt_stamp
    assert Image.open(run / after["attack"]["decoder"]["infer_time"]["grid"]).size[0] > 0


def test_attack_only_without_a_run_is_a_clear_error(tmp_path, capsys):
    code = main_MIA.main(["--attack_only", "--folder", str(tmp_path), "--filename", "nothing", "--dataset", "digits"])
    assert code == 2 and "--attack_only needs a trained run" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_on_cifar10_subset(tmp_path):
    if not (DATA_ROOT / "cifar10_subset").is_dir():
        pytest.skip(f"shared CIFAR-10 subset not found under {DATA_ROOT} (set CEM_DATA_ROOT)")
    folder = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "main_MIA.py"), "--dataset", "cifar10", "--data_root", str(DATA_ROOT),
           "--num_epochs", "2", "--attack_epochs", "1", "--gan_AE_type", "res_normN1C16", "--lambd", "16",
           "--regularization_strength", "0.05", "--folder", str(folder), "--filename", "e2e", "--device", "cpu",
           "--no_progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = folder / "e2e"
    for name in ("config.json", "metrics.json", "train_log.csv", "log.txt", "checkpoints/last.pt",
                 "checkpoints/best.pt", "images/decoder_train_time.png", "images/decoder_infer_time.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train"]["epochs_done"] == 2
    assert 0 <= metrics["train"]["test_acc"] <= 100
    _check_attack_block(metrics["attack"]["decoder"], ["train_time", "infer_time"])
    assert metrics["attack"]["decoder"]["train_time"]["n_eval"] == 1000
    lines = (run / "train_log.csv").read_text().strip().splitlines()
    assert len(lines) == 3 and lines[2].split(",")[5] != ""  # CEM term logged in epoch 2
    for png in (run / "images").glob("*.png"):
        with Image.open(png) as im:
            im.verify()
    rep = subprocess.run([sys.executable, "-m", "tools.report", str(folder)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert rep.returncode == 0, rep.stderr
    assert (folder / "results.csv").is_file() and (folder / "results.md").is_file()
    assert (folder / "tradeoff.png").is_file()
