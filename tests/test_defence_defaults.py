"""The --AT_regularization defences behave as published by default (DESIGN.md §5): local_dp is
Gaussian, NoPeek's weight is 0.1*s (x10 on CIFAR-10), local DP comes before dropout and top-k,
gan_adv takes 3 steps. Runs recorded before these defaults (no AT_version) keep their meaning."""
import math

import pytest
import torch

from defenses import GaussianNoise, build_defenses, parse_at_options
from defenses.nopeek import NoPeek, distance_correlation
from defenses.obfuscation import Dropout, LocalDP, TopKPrune
from main_MIA import build_parser

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _cfg(**over):
    """A config as main_MIA.py's parser makes it today."""
    cfg = vars(build_parser().parse_args([]))
    cfg.update(regularization="None", regularization_strength=0.0, lambd=0.0, AT_regularization_strength=1.0)
    cfg.update(over)
    return cfg


# ---------------------------------------------------------------------------------------- local DP
def test_local_dp_is_gaussian_local_dp_laplace_is_laplace_and_the_old_name_still_parses():
    assert parse_at_options("local_dp", 2).local_dp == "gaussian"
    assert parse_at_options("local_dp_gaussian", 2).local_dp == "gaussian"  # an alias, so old commands parse
    assert parse_at_options("local_dp_laplace", 2).local_dp == "laplace"
    help_text = next(a.help for a in build_parser()._actions if a.dest == "AT_regularization")
    assert "local_dp_gaussian is the same option" in help_text


@pytest.mark.parametrize("text,want_std", [
    ("local_dp", math.sqrt(2 * math.log(1.25 / 1e-4)) / 4.0),   # Gaussian: sigma = sqrt(2 ln(1.25/delta))/eps
    ("local_dp_laplace", math.sqrt(2) / 4.0),                    # Laplace of scale 1/eps: std sqrt(2)/eps
])
def test_built_local_dp_sends_noise_of_the_published_scale(text, want_std):
    torch.manual_seed(0)
    stack = build_defenses(_cfg(AT_regularization=text, AT_regularization_strength=4.0), 10, 100)
    noise = stack.deployed()(torch.zeros(100, 8, 8, 8)).flatten()
    assert abs(noise.std().item() - want_std) / want_std < 0.03
    kurtosis = ((noise / noise.std()) ** 4).mean().item()  # 3 for a Gaussian, 6 for a Laplace
    assert abs(kurtosis - (3.0 if text == "local_dp" else 6.0)) < 0.5, kurtosis


def test_a_run_recorded_before_AT_version_keeps_its_laplace_local_dp_and_order():
    """config.json of a run made when local_dp meant Laplace has no AT_version: re-attacking it must
    query what it sent, and its identity must not match a new (Gaussian) local_dp run's."""
    from lifecycle.identity import identity, identity_differences

    new = _cfg(AT_regularization="local_dp_dropout0.2", AT_regularization_strength=2.0)
    old = {k: v for k, v in new.items() if k != "AT_version"}
    assert [type(d) for d in build_defenses(old, 10, 100).defenses] == [Dropout, LocalDP]
    assert build_defenses(old, 10, 100).defenses[1].mechanism == "laplace"
    assert build_defenses(new, 10, 100).defenses[0].mechanism == "gaussian"
    assert new["AT_version"] == 2
    diff = identity_differences(identity(old), identity(new), "train")
    assert any(d.startswith("AT_version") for d in diff), diff


# ---------------------------------------------------------------------------------------- NoPeek
@pytest.mark.parametrize("dataset,factor", [("cifar10", 1.0), ("cifar100", 0.1), ("facescrub", 0.1),
                                            ("digits", 0.1)])
def test_nopeek_weight_is_a_tenth_of_the_strength_times_ten_on_cifar10(dataset, factor):
    torch.manual_seed(1)
    stack = build_defenses(_cfg(dataset=dataset, AT_regularization="nopeek", AT_regularization_strength=2.0), 10, 100)
    (nopeek,) = stack.defenses
    assert isinstance(nopeek, NoPeek)
    x, z = torch.randn(16, 3, 8, 8), torch.randn(16, 4, 2, 2)
    got = nopeek.encoder_loss(z, x, None, lr=0.05).item()
    assert got == pytest.approx(2.0 * factor * distance_correlation(x, z).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------- pipeline order
def test_pipeline_is_noise_local_dp_dropout_topk():
    cfg = _cfg(regularization="Gaussian_kl", regularization_strength=0.1,
               AT_regularization="topkprune0.5_dropout0.2_local_dp", AT_regularization_strength=2.0)
    assert [type(d) for d in build_defenses(cfg, 10, 100).defenses] == [GaussianNoise, LocalDP, Dropout, TopKPrune]


def test_dropout_zeros_survive_the_local_dp_noise():
    """Dropout after local DP, as published: what is sent holds exact zeros (local DP last filled them)."""
    torch.manual_seed(2)
    stack = build_defenses(_cfg(AT_regularization="local_dp_dropout0.5", AT_regularization_strength=1.0), 10, 100)
    out = stack.deployed()(torch.ones(64, 8, 4, 4))
    assert abs((out == 0).float().mean().item() - 0.5) < 0.03


# ---------------------------------------------------------------------------------------- gan_adv
def test_gan_adv_takes_three_steps_unless_told():
    assert parse_at_options("gan_adv", 1).gan_adv_steps == 3
    assert parse_at_options("gan_adv_step1_pruning180", 1).gan_adv_steps == 1
    assert parse_at_options("gan_adv_step2", 1).gan_adv_steps == 2
