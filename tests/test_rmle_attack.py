"""White-box optimisation attack (rMLE) and the attack selection of main_MIA --attack_only."""
import json
from types import SimpleNamespace

import pytest
import torch
from fake_runs import make_run
from tiny_images import Split, smooth_u8

import main_MIA
from architectures import build_split_model
from attacks.optimization import RMLEAttack, total_variation
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def smooth(n, size=16, seed=0):
    return Split(smooth_u8(n, size, seed), torch.zeros(n, dtype=torch.long))


def test_total_variation():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.equal(total_variation(flat), torch.zeros(2))
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # every horizontal neighbour differs by 1, vertical ones not at all
    assert torch.allclose(total_variation(stripes), torch.tensor([1.0]))


def test_recovers_the_input_through_an_identity_like_encoder():
    model = SimpleNamespace(encoder=torch.nn.Identity(), feature_shape=(3, 16, 16))
    fit, ev = smooth(32, seed=1), smooth(24, seed=2)
    res = RMLEAttack(steps=300, lr=0.1, tv_weight=0.0, device="cpu", progress=False).run(
        model, lambda z: z, fit, Split(fit.x[:0], fit.y[:0]), ev, MEAN, STD)
    assert res.final["mse_mean"] < 1e-3, res.final
    assert res.baseline_mean_image["mse_mean"] > 10 * res.final["mse_mean"]


def test_makes_progress_through_a_real_encoder():
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn", 2, 10, 32, "noRELU_C8S1").eval()
    fit, ev = smooth(32, size=32, seed=1), smooth(16, size=32, seed=2)
    noisy = lambda z: z + 0.01 * torch.randn_like(z)
    res = RMLEAttack(steps=60, lr=0.1, tv_weight=0.01, device="cpu", progress=False).run(
        model, noisy, fit, Split(fit.x[:0], fit.y[:0]), ev, MEAN, STD)
    start = res.baseline_mean_image["mse_mean"]  # the search starts from the attacker's mean image
    assert res.final["mse_mean"] < 0.7 * start, (res.final["mse_mean"], start)
    assert all(p.requires_grad for p in model.parameters())  # the caller's model comes back as it was


def test_bad_settings():
    with pytest.raises(UserError, match="rmle_steps"):
        RMLEAttack(steps=0)


def test_attack_only_runs_a_list_of_attacks(tmp_path, capsys):
    run = make_run(tmp_path / "runs", "r", limit_train=40, limit_test=12)
    argv = ["--attack_only", "--folder", str(tmp_path / "runs"), "--filename", "r", "--dataset", "digits",
            "--data_root", str(tmp_path), "--device", "cpu", "--no_progress", "--attack_modes", "train_time",
            "--attacks", "rmle,decoder", "--attack_epochs", "1", "--gan_AE_type", "res_normN0C8",
            "--rmle_max_images", "5", "--rmle_steps", "3"]
    assert main_MIA.main(argv) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["attack"]) == {"decoder", "rmle"}
    assert m["attack"]["rmle"]["train_time"]["settings"]["steps"] == 3
    assert m["attack"]["rmle"]["train_time"]["n_eval"] == 5 and m["attack"]["decoder"]["train_time"]["n_eval"] == 12
    assert (run / "images" / "rmle_train_time.png").exists()
    saved = torch.load(run / "attacks" / "decoder_train_time.pt", weights_only=True)
    assert saved["arch"] == "res_normN0C8" and tuple(saved["feature_shape"]) == (4, 16, 16)
    assert main_MIA.main(argv[:-6] + ["--attacks", "decoder,magic"]) == 2
    assert "--attacks" in capsys.readouterr().err


def test_results_written_meanwhile_by_another_attacker_are_kept(tmp_path):
    from lifecycle.attack_runner import run_attacks
    from lifecycle.trained_run import load_trained_run

    run = make_run(tmp_path, limit_train=40, limit_test=12)
    tr = load_trained_run(run, {"data_root": str(tmp_path)}, device="cpu")
    stale = json.loads((run / "metrics.json").read_text())  # read before the other attacker wrote
    other = {**stale, "attack": {"gan": {"train_time": {"final": {"mse_mean": 0.5}}}}}
    (run / "metrics.json").write_text(json.dumps(other))
    cfg = {**tr.cfg, "attacks": "rmle", "attack_modes": "train_time", "rmle_steps": 2, "rmle_max_images": 4}
    run_attacks(cfg, run, tr.model, tr.bundle, tr.defenses, tr.device, stale, progress=False, log=lambda m: None)
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["attack"]) == {"gan", "rmle"} and m["attack"]["gan"]["train_time"]["final"]["mse_mean"] == 0.5
