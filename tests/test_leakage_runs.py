"""The leakage figures of real runs: end of training, --attack_only, python -m tools.leakage."""
import json

import pytest
import torch
from fake_runs import make_run

import main_MIA
from architectures import ARCHITECTURES, build_split_model
from defenses.leakage import jtj_trace
from lifecycle.leakage import leakage_key
from tools import leakage as leakage_cli


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def _drop_leakage(run):
    m = _metrics(run)
    old = m.pop("leakage")
    (run / "metrics.json").write_text(json.dumps(m))
    return old


def test_training_records_the_figures(tiny_run):
    m = _metrics(tiny_run)
    lk = m["leakage"]
    assert lk["settings"] == leakage_key(m["config"])
    assert lk["dfil"] > 0 and lk["dfil_rel_se"] < 0.05 and lk["probes"] >= 2
    assert lk["mse_bound_unbiased"] == pytest.approx(1 / lk["dfil"])
    assert lk["images"] == m["config"]["n_test"] and lk["groups"] >= 1
    assert lk["mi_bound_nats"] >= lk["mi_group_entropy_nats"] > 0
    assert lk["noise"]["fisher_per_value"] == pytest.approx(1 / m["config"]["regularization_strength"] ** 2)


def test_tools_leakage_adds_missing_figures_and_keeps_present_ones(copy_run, capsys):
    _, run = copy_run
    old = _drop_leakage(run)
    assert leakage_cli.main([str(run.parent), "--no_progress"]) == 0
    new = _metrics(run)["leakage"]
    for k in ("dfil", "dfil_se", "probes", "mi_bound_nats", "groups", "images"):
        assert new[k] == pytest.approx(old[k]), k  # seeded: the same probes and clusters
    assert leakage_cli.main([str(run), "--no_progress"]) == 0
    assert "already there" in capsys.readouterr().out
    assert _metrics(run)["leakage"]["wall_time_s"] == new["wall_time_s"]


def test_other_settings_recompute(copy_run):
    _, run = copy_run
    m = _metrics(run)
    m["leakage"]["settings"]["version"] = 0
    m["leakage"]["dfil"] = -1.0
    (run / "metrics.json").write_text(json.dumps(m))
    assert leakage_cli.main([str(run), "--no_progress"]) == 0
    lk = _metrics(run)["leakage"]
    assert lk["dfil"] > 0 and lk["settings"] == leakage_key(m["config"])


def test_attack_only_adds_missing_figures_without_reattacking(copy_run):
    argv, run = copy_run
    _drop_leakage(run)
    before = _metrics(run)["attack"]
    assert main_MIA.main(argv + ["--attack_only"]) == 0
    after = _metrics(run)
    assert after["leakage"]["dfil"] > 0 and after["attack"] == before and after["status"] == "finished"


def test_a_run_without_noise_reports_na(tmp_path):
    run = make_run(tmp_path / "runs", sigma=0.0, data_root=str(tmp_path / "data"), limit_test=20)
    assert leakage_cli.main([str(run), "--no_progress"]) == 0
    lk = _metrics(run)["leakage"]
    assert lk["dfil"] is None and lk["mse_bound_unbiased"] is None and lk["mi_bound_nats"] is None
    assert lk["dfil_note"] == "n/a (no noise)" and lk["noise"] is None


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    assert leakage_cli.main([str(tmp_path / "none")]) == 2
    assert leakage_cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "no finished run" in err


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_mode_goes_through_every_encoder(arch, one_thread):
    torch.manual_seed(0)
    enc = build_split_model(arch, 2, 10, 32, "noRELU_C4S1").encoder.eval()
    t = jtj_trace(enc, torch.rand(2, 3, 32, 32), max_probes=4, rel_se=0)
    assert t.probes == 4 and t.mean > 0 and torch.isfinite(torch.tensor(t.se))


def test_a_model_forward_mode_cannot_go_through_records_the_error(copy_run, monkeypatch):
    import defenses.leakage

    def no_jvp(*a, **k):
        raise NotImplementedError("no forward-mode rule for some_op\nmore lines")

    _, run = copy_run
    _drop_leakage(run)
    monkeypatch.setattr(defenses.leakage, "jtj_trace", no_jvp)
    assert leakage_cli.main([str(run), "--no_progress"]) == 0
    lk = _metrics(run)["leakage"]
    assert lk["error"] == "NotImplementedError: no forward-mode rule for some_op" and "dfil" not in lk
    assert "warning: leakage figures not computed" in (run / "log.txt").read_text()


def test_the_pipeline_differentiates_through_the_input_normalisation():
    # encoder = identity on the normalised image: J = diag(1/std_c), so Tr(JᵀJ)/d = mean_c 1/std_c² exactly
    from types import SimpleNamespace

    from datasets.base import TensorSplit
    from defenses.base import DefenseStack
    from defenses.noise import GaussianNoise
    from lifecycle.leakage import compute_leakage

    g = torch.Generator().manual_seed(0)
    test = TensorSplit(x=torch.randint(0, 256, (40, 3, 4, 4), generator=g, dtype=torch.uint8),
                       y=torch.arange(40) % 4)
    std = (0.2, 0.25, 0.5)
    bundle = SimpleNamespace(test=test, mean=(0.5, 0.4, 0.3), std=std, num_classes=4)
    model = SimpleNamespace(encoder=torch.nn.Flatten())
    sigma = 0.1
    out = compute_leakage({"arch": "vgg11_bn_sgm", "random_seed": 1}, model, bundle,
                          DefenseStack([GaussianNoise(sigma)]), torch.device("cpu"), progress=False, log=lambda m: None)
    exact = sum(1 / s ** 2 for s in std) / 3 / sigma ** 2
    assert out["dfil"] == pytest.approx(exact, rel=1e-5) and out["dfil_se"] == pytest.approx(0, abs=1e-6)
    assert out["images"] == 40 and out["feature_dims"] == 48 and out["groups"] <= 4 * 5
