"""run_exp.sh --dry-run says whether the data is there and how long the sweep's steps would take, from a
throughput measured on the device the runs would use (tools/estimate.py)."""
import os
import subprocess
import sys

import pytest

from tools import estimate
from tools.sweep_jobs import Job

REPO = estimate.__file__.rsplit("/tools/", 1)[0]


def job(*flags):
    return Job("j", ["python", "main_MIA.py", "--dataset", "digits", "--device", "cpu", *flags], "j.log")


@pytest.fixture
def measured(monkeypatch):
    monkeypatch.setenv(estimate.ENV_SWITCH, "1")
    calls = []

    def fake(cfg, num_classes, image_size, device):
        calls.append((cfg["arch"], num_classes, image_size, str(device)))
        return 100.0, 400.0  # images/s: training, decoder attack

    monkeypatch.setattr(estimate, "measure", fake)
    return calls


def test_the_estimate_adds_epochs_of_training_and_attack_steps(tmp_path, measured):
    root = str(tmp_path / "data")
    jobs = [job("--data_root", root, "--limit_train", "1000", "--num_epochs", "30", "--attack_epochs", "10",
                "--attack_modes", "train_time", "--random_seed", str(s)) for s in (1, 2)]
    lines = estimate.estimate(jobs)
    # digits' 1,000 training images, 900 of them training (10% validation): per job 30 epochs x 900 / 100 img/s
    # = 270 s training + 10 epochs x 900 / 400 = 22.5 s decoder; two jobs: 585 s, 10 min.
    assert lines[-1].startswith("estimate: about 10 min of training and decoder-attack steps")
    assert "on cpu" in lines[-1] and "100 img/s training, 400 img/s decoder" in lines[-1]
    assert measured == [("vgg11_bn_sgm", 10, 32, "cpu")]  # one model, measured once
    jobs.append(job("--data_root", root, "--limit_train", "1000", "--num_epochs", "30", "--attack_epochs", "10",
                    "--attack_modes", "train_time,infer_time"))
    # + infer_time: 90% of digits' test split (360 of 1797 images: 324) x 10 epochs / 400 img/s
    assert "about 15 min" in estimate.estimate(jobs)[-1]


def test_missing_data_is_named_and_not_estimated(tmp_path, measured):
    lines = estimate.estimate([Job("c", ["python", "main_MIA.py", "--dataset", "cifar10", "--data_root",
                                         str(tmp_path / "nothing")], "c.log")])
    assert len(lines) == 1 and lines[0].startswith("data: cifar10 was not found") and "nothing" in lines[0]
    assert measured == []


def test_switched_off_it_measures_nothing(tmp_path, monkeypatch, measured):
    monkeypatch.setenv(estimate.ENV_SWITCH, "0")
    assert estimate.estimate([job("--data_root", str(tmp_path))]) == [] and measured == []


def test_run_exp_dry_run_prints_a_measured_estimate(tmp_path):
    env = {**os.environ, estimate.ENV_SWITCH: "1", "DATA_ROOT": str(tmp_path / "no_data"), "PYTHON": sys.executable}
    r = subprocess.run(["bash", "run_exp.sh", "--dry-run", "--quick", "--folder", str(tmp_path / "runs")], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    est = [ln for ln in r.stderr.splitlines() if ln.startswith("estimate:")]
    assert len(est) == 1 and "measured just now on cpu" in est[0], r.stderr
    assert "vgg11_bn_sgm cut 4 batch 32" in est[0]
