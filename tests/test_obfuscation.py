"""Dropout, top-k and local DP do what they say, at training and at inference (what is sent); NoPeek
lowers the distance correlation."""
import math

import pytest
import torch

from defenses import DefenseStack, GaussianNoise
from defenses.nopeek import NoPeek, distance_correlation
from defenses.obfuscation import Dropout, LocalDP, TopKPrune


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("training", [True, False])
def test_dropout_zero_fraction_and_no_rescale(p, training):
    torch.manual_seed(0)
    z = torch.rand(64, 8, 8, 8) + 0.5  # no zeros of its own
    out = Dropout(p).obfuscate(z, training=training)
    frac = (out == 0).float().mean().item()
    assert abs(frac - p) < 0.01  # 32768 entries: binomial std ~0.003
    kept = out != 0
    assert torch.equal(out[kept], z[kept])  # no 1/(1-p) rescale, as published


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_topk_zero_fraction_and_keeps_each_samples_largest(p):
    torch.manual_seed(1)
    z = torch.randn(16, 8, 4, 4)
    z[0] *= 100.0  # one loud sample must not decide what the others keep (per-sample, not per-batch)
    out = TopKPrune(p).obfuscate(z, training=False)
    flat_in, flat_out = z.flatten(1), out.flatten(1)
    d = flat_in.shape[1]
    n_zero = round(p * d)
    assert ((flat_out == 0).sum(1) == n_zero).all()
    for i in range(16):
        order = flat_in[i].abs().argsort(descending=True)
        assert torch.equal(flat_out[i, order[:d - n_zero]], flat_in[i, order[:d - n_zero]])
        assert (flat_out[i, order[d - n_zero:]] == 0).all()
    # same result for a sample whatever its batch-mates
    assert torch.equal(TopKPrune(p).obfuscate(z[3:4], training=True), out[3:4])


@pytest.mark.parametrize("mechanism,eps", [("laplace", 2.0), ("laplace", 0.5), ("gaussian", 4.0)])
def test_local_dp_noise_scale_within_5_percent(mechanism, eps):
    torch.manual_seed(2)
    z = torch.zeros(200, 8, 8, 8)
    noise = LocalDP(eps, mechanism).obfuscate(z, training=False).flatten()
    if mechanism == "laplace":
        want = 1.0 / eps
        got = noise.abs().mean().item()  # E|Laplace(0, b)| = b
        assert abs(noise.std().item() - math.sqrt(2) * want) / (math.sqrt(2) * want) < 0.05
    else:
        want = math.sqrt(2 * math.log(1.25 / 1e-4)) / eps
        got = noise.std().item()
    assert abs(got - want) / want < 0.05
    assert abs(noise.mean().item()) < 0.05 * want


def test_pipeline_noise_then_dropout():
    torch.manual_seed(3)
    stack = DefenseStack([GaussianNoise(0.1), Dropout(0.5)])
    out = stack.deployed()(torch.ones(32, 4, 4, 4))
    assert ((out == 0).float().mean() - 0.5).abs() < 0.05  # dropout after the noise: exact zeros survive
    assert (out[out != 0] - 1).abs().max() > 0  # and the kept entries are noisy


def test_nopeek_lowers_distance_correlation_on_a_small_model():
    torch.manual_seed(4)
    x = torch.randn(64, 3, 8, 8)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))
    opt = torch.optim.Adam(enc.parameters(), lr=0.01)
    d = NoPeek(1.0)
    with torch.no_grad():
        start = distance_correlation(x, enc(x)).item()
    for _ in range(30):
        loss = d.encoder_loss(enc(x), x, None, lr=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = distance_correlation(x, enc(x)).item()
    assert math.isfinite(end) and end < start - 0.05, (start, end)
    assert abs(distance_correlation(x, x).item() - 1.0) < 1e-4
