"""Issue 20 item 2: both attacker views. `sent` queries through every defence the device applies;
`noise_only` (the published attacker) through the Gaussian noise alone. Results are kept per view and
the report says which view each number comes from."""
import json

import pytest
import torch
from fake_runs import make_run

from attacks.base import Attack
from defenses.base import DefenseStack
from defenses.noise import GaussianNoise
from defenses.obfuscation import Dropout, LocalDP, TopKPrune
from lifecycle.attack_runner import attack_run
from lifecycle.identity import identity
from tools import report
from utils import normalize

pytestmark = pytest.mark.usefixtures("one_thread")
P, SIGMA = 0.5, 0.05


def test_noise_only_view_leaves_out_every_defence_but_the_noise():
    torch.manual_seed(0)
    stack = DefenseStack([GaussianNoise(SIGMA), LocalDP(2.0), Dropout(P), TopKPrune(0.75)])
    z = torch.rand(64, 4, 4, 4) + 1.0
    noisy = stack.deployed("noise_only")(z) - z
    assert (noisy.std() - SIGMA).abs() < 0.1 * SIGMA  # the noise alone: no local-DP noise on top
    assert (stack.deployed("sent")(z) == 0).float().mean() == 0.75  # dropout, then top-k of each sample
    with pytest.raises(ValueError, match="noise_only"):
        stack.deployed("raw")


def _dropout_run(tmp_path):
    run = make_run(tmp_path, limit_train=40, limit_test=12, sigma=SIGMA)
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(AT_regularization=f"dropout{P}", AT_regularization_strength=1.0)
    (run / "config.json").write_text(json.dumps(cfg))
    m = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**m, "config": cfg}))
    return run


def test_noise_only_attacks_a_dropout_run_with_undropped_noisy_features(tmp_path, monkeypatch):
    run = _dropout_run(tmp_path)
    queries = []
    real_run = Attack.run

    def spy(self, split_model, obfuscate, fit, heldout, evals, mean, std):
        with torch.no_grad():  # what the attacker's queries look like on the encoder's real features
            z = split_model.encoder(normalize(fit.x[:16].float() / 255, mean, std))
            queries.append((z, obfuscate(z)))
        return real_run(self, split_model, obfuscate, fit, heldout, evals, mean, std)

    monkeypatch.setattr(Attack, "run", spy)
    settings = {"attacks": "rmle", "attack_modes": "train_time", "rmle_steps": 2, "rmle_max_images": 4,
                "data_root": str(tmp_path), "device": "cpu", "progress": False}
    for view in ("sent", "noise_only"):
        attack_run(run, {**settings, "attack_view": view})
    (z, sent), (_, noise_only) = queries
    assert (z != 0).all()
    assert abs((sent == 0).float().mean().item() - P) < 0.05   # about P of them dropped
    assert (noise_only != 0).all()                              # none dropped ...
    assert ((noise_only - z).std() - SIGMA).abs() < 0.1 * SIGMA  # ... and noisy
    m = json.loads((run / "metrics.json").read_text())
    sent_res, noise_res = m["attack"]["rmle"]["train_time"], m["attack_views"]["noise_only"]["rmle"]["train_time"]
    assert sent_res["view"] == "sent" and noise_res["view"] == "noise_only"
    assert noise_res["grid"] == "images/rmle_train_time_noise_only.png" and (run / noise_res["grid"]).exists()
    assert sent_res["grid"] == "images/rmle_train_time.png" and (run / sent_res["grid"]).exists()


def _metrics(lambd, mse_sent, mse_noise):
    from main_MIA import build_parser

    c = vars(build_parser().parse_args([]))
    c.update(lambd=lambd, AT_regularization="dropout0.2", AT_regularization_strength=1.0)
    res = lambda mse: {"train_time": {"final": {"mse_mean": mse, "ssim_mean": 0.5, "psnr_mean": 10.0}}}
    return {"status": "finished", "identity": identity(c), "config": c, "train": {"test_acc": 50.0},
            "attack": {"decoder": res(mse_sent)}, "attack_views": {"noise_only": {"decoder": res(mse_noise)}}}


def test_report_and_cem_gain_table_name_the_view(tmp_path):
    root = tmp_path / "runs"
    for name, m in (("l0", _metrics(0.0, 0.10, 0.02)), ("l16", _metrics(16.0, 0.12, 0.03))):
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(m))
    assert report.main([str(root)]) == 0
    md = (root / "results.md").read_text()
    gain = md.split("## CEM gain per defence")[1]
    rows = {}
    for block in gain.split("**")[1::2]:
        section = gain.split(f"**{block}**")[1].split("**")[0]
        rows[block] = [line for line in section.splitlines() if line.startswith("| dropout0.2")]
    (sent,) = [k for k in rows if "attacker view sent" in k]
    (noise,) = [k for k in rows if "attacker view noise_only" in k]
    assert "+20.0%" in rows[sent][0] and "+50.0%" in rows[noise][0]  # each view's own gain
    assert md.count("### ") == 2 and "attacker view noise_only" in md
    csv_rows = (root / "results.csv").read_text().splitlines()
    assert csv_rows[0].split(",").count("view") == 1 and len(csv_rows) == 5
