"""The repeated-query attacker (--attack_queries K, issue 35): it sees the mean of K independent sends,
its results are keyed by K beside the K = 1 ones, its error falls with K on a σ = 0.1 run, a defence
without fresh randomness per send is told so instead of computed, and the report shows MSE against K."""
import json

import pytest
import torch

import main_MIA
from attacks.base import averaged
from attacks.flags import fresh_randomness
from tools import report

pytestmark = pytest.mark.usefixtures("one_thread")
RUN = ["--dataset", "digits", "--num_epochs", "1", "--limit_train", "200", "--limit_test", "40", "--device", "cpu",
       "--batch_size", "32", "--no_progress", "--lambd", "0", "--attack_modes", "train_time",
       "--filename", "r"]
RMLE = ["--attack_only", "--attacks", "rmle", "--rmle_max_images", "16", "--rmle_steps", "100", "--rmle_lr", "0.1",
        "--tv_weight", "0.01"]


def test_the_mean_of_k_sends_has_k_times_less_noise_variance():
    torch.manual_seed(0)
    z = torch.zeros(4000)
    noisy = lambda v: v + torch.randn_like(v)
    assert averaged(noisy, 1) is noisy
    assert abs(averaged(noisy, 16)(z).var().item() - 1 / 16) < 0.01


def test_fresh_randomness_per_send():
    base = {"regularization": "Gaussian_kl", "regularization_strength": 0.1, "AT_regularization": "None"}
    assert fresh_randomness(base, "sent") == ["Gaussian noise"]
    plain = {**base, "regularization_strength": 0.0}
    assert fresh_randomness(plain, "sent") == []
    drop = {**plain, "AT_regularization": "dropout0.2", "AT_regularization_strength": 1.0}
    assert fresh_randomness(drop, "sent") == ["dropout"] and fresh_randomness(drop, "noise_only") == []
    assert fresh_randomness({**plain, "AT_regularization": "topkprune0.5", "AT_regularization_strength": 1.0},
                            "sent") == []


def test_error_falls_with_k_on_a_sigma_01_run_and_the_report_shows_the_curve(tmp_path, capsys):
    flags = RUN + ["--regularization_strength", "0.1", "--data_root", str(tmp_path / "data"),
                   "--folder", str(tmp_path / "runs")]
    assert main_MIA.main(flags + ["--no_attack"]) == 0
    for k in (1, 4, 16):
        assert main_MIA.main(flags + RMLE + ["--attack_queries", str(k)]) == 0
    m = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    mse = {1: m["attack"]["rmle"]["train_time"]["final"]["mse_mean"]}
    for v in m["attack_variants"]["rmle"].values():
        mse[v["settings"]["attack_queries"]] = v["results"]["sent"]["train_time"]["final"]["mse_mean"]
        assert v["results"]["sent"]["train_time"]["settings"]["queries"] == v["settings"]["attack_queries"]
    assert "attack_queries" not in m["attack_settings"]["rmle"]  # K = 1 keeps the key results had before K
    assert mse[1] > mse[4] > mse[16], mse
    capsys.readouterr()
    assert main_MIA.main(flags + RMLE + ["--attack_queries", "4"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert report.main([str(tmp_path / "runs"), "--attack", "rmle", "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "results.md").read_text()
    section = md[md.index("## Repeated queries"):]
    row = next(line for line in section.splitlines() if line.startswith("| r |"))
    assert [f"{mse[k]:.4f}" in row for k in (1, 4, 16)] == [True] * 3, row
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Repeated queries: MSE against K" in page and (tmp_path / "rep" / "report_files" / "queries.png").is_file()


def test_a_run_without_fresh_randomness_says_so(tmp_path, capsys):
    flags = RUN + ["--regularization_strength", "0", "--data_root", str(tmp_path / "data"),
                   "--folder", str(tmp_path / "runs")]
    assert main_MIA.main(flags + ["--no_attack"]) == 0
    capsys.readouterr()
    assert main_MIA.main(flags + RMLE + ["--attack_queries", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sends the same features every time" in err, err
