"""CEM maths against slow, obviously-correct loop implementations (DESIGN.md §6)."""
import math

import pytest
import torch

from defenses.cem import CEM, cem_batch_loss, fit_class_kmeans, lambda_eff


def loop_cem_loss(z, y, centroids, variances, weights, valid, sigma, tau, n_train,
                  log_entropy=True, gamma=0.01, alpha_scale=10.0, published_stats=False):
    """Reference: Python loops over classes and clusters, exactly as DESIGN §6.3 reads. With
    published_stats, the j-th distinct class of the batch (in label order) takes its stored v and pi
    from the class of the j-th sample in label order, as the published compute_class_means does."""
    C, K, _ = centroids.shape
    z = z.reshape(z.shape[0], -1)
    src = {c: c for c in range(C)}
    if published_stats:
        ys = sorted(int(t) for t in y)
        src = {c: ys[j] for j, c in enumerate(sorted(set(ys)))}
    members = {}
    for i in range(z.shape[0]):
        c = int(y[i])
        best, best_k = None, None
        for k in range(K):
            if not valid[c, k]:
                continue
            d = float(((z[i].detach() - centroids[c, k]) ** 2).sum())
            if best is None or d < best:
                best, best_k = d, k
        if best_k is not None:
            members.setdefault((c, best_k), []).append(i)
    total = 0.0
    classes = set()
    for (c, k), idx in members.items():
        classes.add(c)
        n = len(idx)
        b = torch.stack([((z[i] - centroids[c, k]) ** 2).mean() for i in idx]).mean()
        pi = float(weights[src[c], k])
        alpha = alpha_scale * n / (pi * n_train / C) if pi > 0 else 1.0
        alpha = 0.99 if alpha >= 1 else alpha if published_stats else min(alpha, 0.99)
        v = alpha * b + (1 - alpha) * float(variances[src[c], k])
        if log_entropy:
            total = total + pi * torch.relu(torch.log(v + gamma) - math.log(tau * sigma**2 + gamma))
        else:
            total = total + pi * (v + 0.001)
    return total / max(len(classes), 1)


def random_state(C=4, K=3, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centroids = torch.rand(C, K, D, generator=g)
    variances = torch.rand(C, K, generator=g) * 0.5
    valid = torch.rand(C, K, generator=g) > 0.3
    valid[:, 0] = True
    valid[C - 1] = False  # a class with no state at all
    weights = torch.rand(C, K, generator=g) * valid
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-9)
    return centroids, variances, weights, valid


@pytest.mark.parametrize("log_entropy", [True, False])
@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_batch_loss_matches_loop_value_and_gradient(log_entropy, sigma):
    C, K, D = 4, 3, 6
    cen, var, w, valid = random_state(C, K, D)
    g = torch.Generator().manual_seed(1)
    z = (torch.rand(32, D, generator=g) * 1.2).requires_grad_(True)
    y = torch.randint(0, C, (32,), generator=g)
    loss = cem_batch_loss(z, y, cen, var, w, valid, sigma, 0.125, 400, log_entropy=log_entropy)
    (gz,) = torch.autograd.grad(loss, z)
    z2 = z.detach().clone().requires_grad_(True)
    ref = loop_cem_loss(z2, y, cen, var, w, valid, sigma, 0.125, 400, log_entropy=log_entropy)
    (gz2,) = torch.autograd.grad(ref, z2)
    assert float(ref.detach()) > 0  # the comparison is not vacuous
    assert torch.allclose(loss, ref.to(loss.dtype), atol=1e-5, rtol=1e-5)
    assert torch.allclose(gz, gz2, atol=1e-5, rtol=1e-4)
    assert gz.abs().sum() > 0


@pytest.mark.parametrize("log_entropy", [True, False])
def test_published_stats_use_another_class_like_the_published_loop(log_entropy):
    C, K, D = 5, 3, 6
    cen, var, w, valid = random_state(C, K, D, seed=3)
    g = torch.Generator().manual_seed(4)
    z = (torch.rand(40, D, generator=g) * 1.2).requires_grad_(True)
    y = torch.randint(0, C, (40,), generator=g)
    pub = cem_batch_loss(z, y, cen, var, w, valid, 0.5, 0.125, 400, log_entropy=log_entropy, published_stats=True)
    (gz,) = torch.autograd.grad(pub, z)
    z2 = z.detach().clone().requires_grad_(True)
    ref = loop_cem_loss(z2, y, cen, var, w, valid, 0.5, 0.125, 400, log_entropy=log_entropy, published_stats=True)
    (gz2,) = torch.autograd.grad(ref, z2)
    own = cem_batch_loss(z.detach(), y, cen, var, w, valid, 0.5, 0.125, 400, log_entropy=log_entropy)
    assert float(ref.detach()) > 0 and not torch.allclose(pub, own)  # the lookup changes the loss
    assert torch.allclose(pub, ref.to(pub.dtype), atol=1e-5, rtol=1e-5)
    assert torch.allclose(gz, gz2, atol=1e-5, rtol=1e-4) and gz.abs().sum() > 0


def test_batch_loss_gradient_only_to_z():
    cen, var, w, valid = random_state()
    cen.requires_grad_(True)
    var.requires_grad_(True)
    z = torch.rand(16, 6, requires_grad=True)
    y = torch.randint(0, 3, (16,))
    loss = cem_batch_loss(z, y, cen, var, w, valid, 0.5, 0.125, 100)
    loss.backward()
    assert cen.grad is None and var.grad is None
    assert z.grad is not None


def test_batch_loss_zero_when_variance_below_threshold():
    # v_hat far below tau*sigma^2 -> relu clamps every term to zero
    cen, var, w, valid = random_state()
    var.zero_()
    z = cen[0, 0].expand(8, -1).clone().requires_grad_(True)
    y = torch.zeros(8, dtype=torch.long)
    loss = cem_batch_loss(z, y, cen, var, w, valid, sigma=1.0, var_threshold=0.125, n_train=100)
    assert float(loss.detach()) == 0.0


def _check_fixed_point(z, y, mu, var, w, valid, C, K):
    D = z.shape[1]
    for c in range(C):
        zc = z[y == c]
        if len(zc) == 0:
            assert not valid[c].any()
            continue
        d = ((zc.unsqueeze(1) - mu[c].unsqueeze(0)) ** 2).sum(-1)
        d[:, ~valid[c]] = float("inf")
        a = d.argmin(1)
        for k in range(K):
            m = zc[a == k]
            if valid[c, k]:
                assert len(m) > 0
                assert torch.allclose(mu[c, k], m.mean(0), atol=1e-4)  # centroid = its members' mean
                assert var[c, k] == pytest.approx(float(((m - mu[c, k]) ** 2).mean()), rel=1e-4, abs=1e-6)
                assert w[c, k] == pytest.approx(len(m) / len(zc), abs=1e-6)
            else:
                assert len(m) == 0 and w[c, k] == 0
        assert float(w[c].sum()) == pytest.approx(1.0, abs=1e-5)
    assert mu.shape == (C, K, D) and var.shape == (C, K) and w.shape == (C, K) and valid.shape == (C, K)


def test_kmeans_fixed_point_and_aligned_arrays():
    g = torch.Generator().manual_seed(3)
    C, K, D = 5, 3, 4
    # blobs per class, plus a class with fewer members than K and a class with none
    z = torch.cat([torch.randn(60, D, generator=g) + 4 * torch.randn(1, D, generator=g) for _ in range(3)] +
                  [torch.randn(2, D, generator=g)])
    y = torch.cat([torch.full((60,), c) for c in range(3)] + [torch.full((2,), 3)])
    mu, var, w, valid = fit_class_kmeans(z, y, C, K, generator=torch.Generator().manual_seed(0))
    assert valid[3].sum() == 2 and not valid[4].any()
    _check_fixed_point(z, y, mu, var, w, valid, C, K)
    # warm start from the previous centroids keeps the fixed-point property
    mu2, var2, w2, valid2 = fit_class_kmeans(z + 0.1, y, C, K, init=mu)
    _check_fixed_point(z + 0.1, y, mu2, var2, w2, valid2, C, K)


def test_kmeans_reports_how_many_updates_it_ran():
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(600, 8, generator=g), torch.arange(600) % 3
    info = {}
    mu, *_ = fit_class_kmeans(z, y, 3, 5, generator=torch.Generator().manual_seed(0), info=info)
    assert 1 < info["iters"] < 50  # unstructured data: several updates, then stable
    fit_class_kmeans(z, y, 3, 5, init=mu, info=info)
    assert info["iters"] == 1  # warm start at a fixed point: one update that changes nothing
    fit_class_kmeans(z, y, 3, 5, generator=torch.Generator().manual_seed(0), iters=2, info=info)
    assert info["iters"] == 2  # the cap, not convergence, ended it


def test_kmeans_duplicate_points_mark_clusters_invalid():
    z = torch.ones(10, 3)
    y = torch.zeros(10, dtype=torch.long)
    mu, var, w, valid = fit_class_kmeans(z, y, 1, 4, generator=torch.Generator().manual_seed(0))
    assert int(valid.sum()) == 1 and float(var[valid].max()) == 0.0


def test_lambda_eff_schedule():
    # the paper's rule: lambda * 0.001 / lr for every lr >= 4.1e-4 (no cap at lambda), lambda below
    for lr, want in ((0.05, 0.32), (1e-3, 16.0), (5e-4, 32.0), (4.1e-4, 16 * 0.001 / 4.1e-4), (4e-4, 16.0)):
        assert lambda_eff(16, lr) == pytest.approx(want, rel=1e-12), f"lr {lr}"
    assert lambda_eff(16, 1e-4) == 16
    assert lambda_eff(16, 0.05, "none") == 16 and lambda_eff(16, 5e-4, "none") == 16


def test_clusters_per_class_follow_paper_rule():
    from defenses import cem_clusters
    assert cem_clusters("vgg11_bn_sgm") == 5
    assert cem_clusters("resnet20") == 15  # Sigmoid encoder, but no 'sgm' in the name
    assert cem_clusters("vgg11_bn") == 15 and cem_clusters("resnet20_std") == 15


def test_cem_defence_loss_needs_state_then_refreshes():
    cem = CEM(lambd=16, sigma=0.05, var_threshold=0.125, num_classes=3, n_train=90, k=2, lr_coupling="none")
    z = torch.rand(90, 8)
    y = torch.arange(90) % 3
    assert cem.encoder_loss(z, None, y, lr=0.05) is None  # no state before the first refresh (epoch 1)
    cem.refresh(z, y)
    zq = z[:16].clone().requires_grad_(True)
    loss = cem.encoder_loss(zq, None, y[:16], lr=0.05)
    assert loss is not None and float(loss.detach()) > 0
    st = cem.state_dict()
    other = CEM(lambd=16, sigma=0.05, var_threshold=0.125, num_classes=3, n_train=90, k=2, lr_coupling="none")
    other.load_state_dict(st)
    assert torch.equal(other.encoder_loss(zq, None, y[:16], 0.05), loss)


def test_collapsed_features_are_reported_once():
    class FakeTrainer:
        epoch = 3

        def __init__(self, z, y):
            self.z, self.y, self.lines = z, y, []

        def train_features(self, augment=False):
            return self.z, self.y

        def log(self, msg):
            self.lines.append(msg)

    y = torch.arange(90) % 3
    g = torch.Generator().manual_seed(0)
    # a CEM-shrunk but working encoder: spread 0.4 sigma^2, as measured at the end of the quick run
    healthy = FakeTrainer(0.5 + 0.4 ** 0.5 * 0.05 * torch.randn(90, 8, generator=g), y)
    collapsed = FakeTrainer(0.6 + 1e-6 * torch.randn(90, 8, generator=g), y)
    for t in (healthy, collapsed):
        cem = CEM(lambd=16, sigma=0.05, var_threshold=0.125, num_classes=3, n_train=90, k=2)
        cem.on_epoch_end(t)
        cem.on_epoch_end(t)
    assert healthy.lines == []
    assert len(collapsed.lines) == 1 and "collapsed after epoch 4" in collapsed.lines[0]


@pytest.mark.parametrize("n, want_alpha", [(5, 0.99999994), (6, 0.99)])
def test_published_stats_keep_an_alpha_just_below_one(n, want_alpha):
    """The published `if var_lambda >= 1: var_lambda = 0.99` caps only from 1 on. Its float32
    (5 / (0.01 * 5000)) * 10 is 0.99999994 (0.01 is the published padding weight), which it keeps;
    ours caps every alpha at 0.99."""
    z, y = torch.zeros(n, 4), torch.zeros(n, dtype=torch.long)
    state = (torch.zeros(1, 1, 4), torch.tensor([[10.0]]), torch.tensor([[0.01]]), torch.ones(1, 1, dtype=torch.bool))

    def loss(published):
        return float(cem_batch_loss(z, y, *state, 0.5, 0.125, 5000, log_entropy=False, published_stats=published))

    # b = 0 (z on the centroid), stored v = 10: v_hat = (1 - alpha) * 10, loss = 0.01 * (v_hat + 0.001)
    alpha = (n * (1 / (torch.tensor(0.01) * 5000.0))) * 10
    assert float(alpha) == pytest.approx(want_alpha, abs=1e-9) if n == 5 else float(alpha) > 1
    assert loss(True) == pytest.approx(0.01 * ((1 - want_alpha) * 10 + 0.001), rel=1e-3)
    assert loss(False) == pytest.approx(0.01 * (0.01 * 10 + 0.001), rel=1e-6)
