"""The decoder-then-likelihood attacker (rmle_from_decoder, attacks/refine.py): the noise model it
reads from a run, that the likelihood term pulls a poor start towards the image, and that on a trained
run it is no worse than the decoder it starts from on the attacker's own held-out images."""
import json
from types import SimpleNamespace

import pytest
import torch
from tiny_images import Split, smooth_u8

import main_MIA
from attacks.base import Context, to_unit
from attacks.refine import DecoderLikelihoodAttack
from attacks.specs.rmle_from_decoder import noise_model, prior_weights
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_noise_model_follows_the_deployed_defence_and_view():
    cfg = {"regularization": "Gaussian_kl", "regularization_strength": 0.1, "AT_regularization": "None"}
    assert noise_model(cfg, "sent") == ("gaussian", 0.1)
    lap = {**cfg, "AT_regularization": "local_dp_laplace", "AT_regularization_strength": 4.0}
    assert noise_model(lap, "sent") == ("laplace", 0.25)
    assert noise_model(lap, "noise_only") == ("gaussian", 0.1)  # the published view leaves local DP out
    assert noise_model({**lap, "AT_regularization_strength": 0.0}, "sent") == ("gaussian", 0.1)  # 0: off
    assert noise_model({"regularization": "None"}, "sent") == ("gaussian", 1.0)
    assert prior_weights("1, 10") == (1.0, 10.0)
    for bad in ("", "a", "-1", "nan"):
        with pytest.raises(UserError, match="rfd_prior_weights"):
            prior_weights(bad)


@pytest.mark.parametrize("noise", [("gaussian", 0.01), ("laplace", 0.01)])
def test_the_likelihood_pulls_a_poor_start_towards_the_image(noise):
    """Identity encoder: the observed features are the (normalised) image plus small noise, so the
    refined image must end far closer to the truth than the decoder's flat grey guess it starts from."""
    torch.manual_seed(0)
    x_u8 = smooth_u8(8, 16, seed=3)
    x = to_unit(x_u8)
    z = (x - 0.5) / 0.25 + 0.01 * torch.randn_like(x)
    ctx = Context(encoder=torch.nn.Identity(), obfuscate=lambda v: v, feature_shape=(3, 16, 16), mean=MEAN,
                  std=STD, x_fit=x_u8, x_held=None, x_eval=x_u8, device=torch.device("cpu"))
    attack = DecoderLikelihoodAttack(start=None, steps=150, lr=0.05, tv_weight=0.0, noise=noise, progress=False)
    grey = lambda zz: torch.full((zz.shape[0], 3, 16, 16), 0.5)
    start = (grey(z) - x).pow(2).mean().item()
    refined = (attack.reconstruct(ctx, grey, z, 1.0) - x).pow(2).mean().item()
    assert refined < 0.2 * start, (refined, start)
    assert attack.reconstruct(ctx, grey, z, None).sub(0.5).abs().max() < 1e-6  # None: the decoder, unrefined


def test_on_a_trained_run_no_worse_than_its_decoder_on_held_out_images(copy_run, capsys):
    argv, run = copy_run
    rfd = ["--attack_only", "--attacks", "decoder,rmle_from_decoder", "--rfd_steps", "15", "--rfd_lr", "0.02",
           "--rfd_prior_weights", "0.1,1,10"]
    assert main_MIA.main(argv + rfd) == 0
    m = json.loads((run / "metrics.json").read_text())
    res = m["attack"]["rmle_from_decoder"]["train_time"]
    sel, chosen = res["settings"]["selection_mse"], res["settings"]["chosen_prior_weight"]
    assert set(sel) == {"decoder", "0.1", "1", "10"} and res["settings"]["selected_on"] == "heldout"
    assert sel["decoder" if chosen is None else f"{chosen:g}"] == min(sel.values()) <= sel["decoder"]
    assert res["settings"]["start"] == "decoder_train_time.pt" and res["settings"]["noise"] == ["gaussian", 0.05]
    assert m["attack_settings"]["rmle_from_decoder"]["rfd_steps"] == 15
    assert (run / "images" / "rmle_from_decoder_train_time.png").exists()
    capsys.readouterr()
    assert main_MIA.main(argv + rfd) == 0  # resumable: a second call finds the results
    assert "already finished" in capsys.readouterr().out
    assert main_MIA.main(argv + rfd[:-1] + ["1,x"]) == 2
    assert "error: bad --rfd_prior_weights '1,x'" in capsys.readouterr().err


def test_without_the_decoder_it_starts_from_it_says_so(tmp_path):
    attack = DecoderLikelihoodAttack(start=tmp_path / "decoder_train_time.pt", progress=False)
    model = SimpleNamespace(encoder=torch.nn.Identity(), feature_shape=(3, 16, 16))
    s = Split(smooth_u8(4, 16, seed=1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserError, match="run --attacks decoder,rmle_from_decoder"):
        attack.run(model, lambda z: z, s, s, s, MEAN, STD)


def test_the_sweep_planner_sees_each_new_attacker_as_missing_then_finished(copy_run, capsys):
    """run_exp.sh asks lifecycle.plan per configuration (no torch): a trained run lacking a new attacker's
    results is planned as an --attack_only job, and as finished once they are there."""
    from lifecycle.plan import plan_cli

    argv, run = copy_run
    new = ["--attacks", "decoder,rmle_from_decoder", "--rfd_steps", "2", "--rfd_max_images", "4"]
    for extra in (new, ["--attack_queries", "4"], ["--attacker_data", "aux:digits[0-4]"]):
        capsys.readouterr()
        assert plan_cli(argv + extra) == 0
        assert capsys.readouterr().out.split()[0] in ("incomplete", "attack"), extra
    assert main_MIA.main(argv + ["--attack_only"] + new) == 0
    capsys.readouterr()
    assert plan_cli(argv + new) == 0 and capsys.readouterr().out.split()[0] == "finished"
