"""The leakage figures (defenses/leakage.py) against closed forms."""
import math

import pytest
import torch

from defenses.base import DefenseStack
from defenses.leakage import (
    add_noises,
    class_cluster_groups,
    dfil,
    gaussian_noise,
    group_stats,
    jtj_trace,
    laplace_noise,
    mixture_bound,
    noise_of,
)
from defenses.noise import GaussianNoise
from defenses.obfuscation import Dropout, LocalDP, TopKPrune


def _linear(a):
    return lambda x: x.reshape(x.shape[0], -1) @ a.T


def test_dfil_of_a_linear_encoder_is_frobenius_over_sigma2_d_within_its_error():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 12, generator=g, dtype=torch.float64)
    x = torch.rand(64, 3, 2, 2, dtype=torch.float64)
    sigma = 0.3
    out = dfil(_linear(a), x, gaussian_noise(sigma), generator=torch.Generator().manual_seed(1), max_probes=200)
    exact = float((a ** 2).sum()) / (sigma ** 2 * 12)
    assert out["dfil_rel_se"] < 0.05 and out["probes"] >= 2
    assert abs(out["dfil"] - exact) < 4 * out["dfil_se"]
    assert out["mse_bound_unbiased"] == pytest.approx(1 / out["dfil"])
    assert out["input_values"] == 12


def test_dfil_is_exact_when_the_columns_are_orthogonal():
    # JᵀJ diagonal: every Rademacher probe gives ‖Jv‖² = ‖J‖_F² exactly
    q, _ = torch.linalg.qr(torch.randn(30, 10, dtype=torch.float64))
    a = q * torch.linspace(0.5, 3.0, 10, dtype=torch.float64)
    out = dfil(_linear(a), torch.rand(5, 10, dtype=torch.float64), gaussian_noise(0.5))
    assert out["dfil"] == pytest.approx(float((a ** 2).sum()) / (0.25 * 10), rel=1e-9)
    assert out["dfil_se"] == pytest.approx(0.0, abs=1e-9) and out["probes"] == 2


def test_dividing_the_input_by_s_divides_dfil_by_s_squared():
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sigmoid(), nn.Conv2d(4, 2, 3)).double()
    x = torch.rand(8, 3, 6, 6, dtype=torch.float64)
    s = 4.0
    # f'(x) = f(x/s) has J'(x) = J(x/s)/s: compared at the points where both see the same input
    plain = jtj_trace(net, x / s, generator=torch.Generator().manual_seed(3), max_probes=6, rel_se=0)
    scaled = jtj_trace(lambda t: net(t / s), x, generator=torch.Generator().manual_seed(3), max_probes=6, rel_se=0)
    assert plain.probes == scaled.probes == 6
    assert scaled.mean == pytest.approx(plain.mean / s ** 2, rel=1e-9)


def test_probes_stop_at_the_cap_when_the_target_is_out_of_reach():
    a = torch.randn(3, 40, dtype=torch.float64)
    t = jtj_trace(_linear(a), torch.rand(1, 40, dtype=torch.float64), rel_se=1e-6, max_probes=7)
    assert t.probes == 7 and t.se > 0


def test_noise_kinds():
    assert noise_of(DefenseStack([GaussianNoise(0.5)])).fisher == pytest.approx(4.0)
    lap = noise_of(DefenseStack([LocalDP(2.0, "laplace")]))  # scale b = 1/eps = 0.5: Fisher 1/b²
    assert lap == laplace_noise(0.5) and lap.fisher == pytest.approx(4.0) and lap.variance == pytest.approx(0.5)
    both = add_noises(gaussian_noise(0.3), gaussian_noise(0.4))  # two Gaussians: exact
    exact = gaussian_noise(0.5)
    assert both.fisher == pytest.approx(exact.fisher) and both.entropy == pytest.approx(exact.entropy)
    mixed = noise_of(DefenseStack([GaussianNoise(0.3), LocalDP(2.0, "laplace")]))
    assert mixed.fisher <= min(1 / 0.09, 4.0) and mixed.entropy >= max(gaussian_noise(0.3).entropy, lap.entropy)
    # Post-processing after the noise leaves the noise's figures as they are
    assert noise_of(DefenseStack([GaussianNoise(0.5), Dropout(0.3)])).fisher == pytest.approx(4.0)


def test_no_additive_noise_is_na_never_a_number():
    for stack in (DefenseStack([]), DefenseStack([GaussianNoise(0.0)]), DefenseStack([Dropout(0.5), TopKPrune(0.5)])):
        noise = noise_of(stack)
        assert noise is None
        d = dfil(lambda x: x, torch.rand(2, 3), noise)
        m = mixture_bound(torch.rand(2, 3), torch.zeros(2, dtype=torch.long), noise)
        assert d["dfil"] is None and d["mse_bound_unbiased"] is None and d["dfil_note"] == "n/a (no noise)"
        assert m["mi_bound_nats"] is None and m["mi_bound_bits_per_dim"] is None


def _mixture(n_per=(300, 100, 200), d=6, spread=(0.1, 0.3, 0.05), seed=0):
    g = torch.Generator().manual_seed(seed)
    zs, gs = [], []
    for j, (n, s) in enumerate(zip(n_per, spread)):
        zs.append(5.0 * j + s * torch.randn(n, d, generator=g, dtype=torch.float64))
        gs.append(torch.full((n,), j))
    return torch.cat(zs), torch.cat(gs)


def test_mixture_bound_is_the_hand_formula():
    z, groups = _mixture()
    sigma = 0.2
    w, v = [], []
    for j in range(3):
        zj = z[groups == j]
        w.append(len(zj) / len(z))
        v.append(float(((zj - zj.mean(0)) ** 2).mean()))
    hand = -sum(wj * math.log(wj) for wj in w) + 6 / 2 * sum(wj * math.log(1 + vj / sigma ** 2) for wj, vj in zip(w, v))
    out = mixture_bound(z, groups, gaussian_noise(sigma))
    assert out["mi_bound_nats"] == pytest.approx(hand, rel=1e-9)
    assert out["mi_bound_bits_per_dim"] == pytest.approx(hand / math.log(2) / 6, rel=1e-9)
    assert out["groups"] == 3 and out["images"] == 600 and out["min_group_images"] == 100
    assert out["log_images_nats"] == pytest.approx(math.log(600))
    ws, vs, _ = group_stats(z, groups)
    assert torch.allclose(vs, torch.tensor(v, dtype=vs.dtype))


def test_mixture_bound_falls_with_sigma_towards_the_group_entropy():
    z, groups = _mixture()
    h_w = mixture_bound(z, groups, gaussian_noise(1.0))["mi_group_entropy_nats"]
    values = [mixture_bound(z, groups, gaussian_noise(s))["mi_bound_nats"] for s in (0.05, 0.2, 1.0, 10.0, 1000.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(h_w, abs=1e-4) and h_w > 0


def test_one_group_with_no_spread_sends_nothing():
    z = torch.ones(50, 4, dtype=torch.float64)
    out = mixture_bound(z, torch.zeros(50, dtype=torch.long), gaussian_noise(0.1))
    assert out["mi_bound_nats"] == pytest.approx(0.0, abs=1e-12)


def test_mixture_bound_holds_over_gaussian_inputs_with_a_linear_encoder():
    # x ~ N(0, I), z = A x + σ ε: I(x; z) = ½ log det(I + A Aᵀ/σ²) in closed form
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.3, 0.1], dtype=torch.float64)
    sigma = 0.5
    true = 0.5 * float(torch.linalg.slogdet(torch.eye(4, dtype=torch.float64) + a @ a.T / sigma ** 2)[1])
    z = torch.randn(20000, 4, generator=g, dtype=torch.float64) @ a.T
    one = torch.zeros(len(z), dtype=torch.long)
    out = mixture_bound(z, one, gaussian_noise(sigma))
    assert out["mi_bound_nats"] >= true
    # with more images per group than dims, the log-det form is given and is the closed form up to sampling
    assert out["mi_logdet_nats"] == pytest.approx(true, rel=0.02)
    assert out["mi_bound_nats"] >= out["mi_logdet_nats"]


def test_logdet_form_is_na_with_too_few_images_per_group():
    z, groups = _mixture(n_per=(5, 30, 30))
    assert mixture_bound(z, groups, gaussian_noise(0.1))["mi_logdet_nats"] is None


def test_class_cluster_groups_find_the_mixture_and_give_the_same_bound():
    z, true = _mixture(n_per=(60, 60, 60, 60), spread=(0.1, 0.1, 0.1, 0.1))
    y = (true >= 2).long()  # classes {0, 1} own clusters {0, 1} and {2, 3}
    groups = class_cluster_groups(z.float(), y, num_classes=2, k=2, seed=0)
    assert groups.unique().numel() == 4
    for j in range(4):  # every true cluster is one found group
        assert groups[true == j].unique().numel() == 1
    assert mixture_bound(z, groups, gaussian_noise(0.2))["mi_bound_nats"] == \
        pytest.approx(mixture_bound(z, true, gaussian_noise(0.2))["mi_bound_nats"], rel=1e-9)
