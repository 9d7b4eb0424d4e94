"""Issue 38: the edges of `--cem_kmeans published` and `--attacker_data published` where the published
code does something other than the obvious (model_training_paral_pruning.py kmeans_cuda,
datasets_torch.py's infer_time loaders)."""
from types import SimpleNamespace

import torch

from attacks.decoder import attacker_splits
from datasets.base import TensorSplit
from defenses.cem_kmeans import fit_class_kmeans


def _fit(z, init, published, iters=50):
    info = {}
    out = fit_class_kmeans(torch.tensor(z).view(-1, 1), torch.zeros(len(z), dtype=torch.long), 1, len(init),
                           init=torch.tensor(init).view(1, -1, 1), iters=iters, published=published, info=info)
    return (*out, info["iters"])


def test_published_kmeans_stops_at_once_when_every_point_is_in_cluster_0():
    # Its labels start at 0, so an unchanged first assignment ends the loop before any update: the
    # centroid stays the seed and the variance is taken around it.
    mu, var, w, _, iters = _fit([0.0, 0.2, 0.4], [0.1, 5.0, 6.0], published=True)
    assert iters == 0 and mu[0, 0, 0] == torch.tensor(0.1)
    assert torch.allclose(var, torch.full((1, 3), (0.01 + 0.01 + 0.09) / 3))
    assert torch.allclose(w, torch.tensor([[1.0, 0.01, 0.01]]))
    mu, var, _, _, _ = _fit([0.0, 0.2, 0.4], [0.1, 5.0, 6.0], published=False)
    assert abs(float(mu[0, 0, 0]) - 0.2) < 1e-6 and abs(float(var[0, 0]) - 0.08 / 3) < 1e-6


def test_published_kmeans_at_the_cap_keeps_the_last_assignment():
    # One update moves cluster 1 to 5; the point at 2 is then nearer cluster 0, but at the cap the
    # published code scores the assignment that update used: [0 | 2, 3, 10].
    mu, var, w, _, iters = _fit([0.0, 2.0, 3.0, 10.0], [0.0, 2.4], published=True, iters=1)
    assert iters == 1 and mu.view(-1).tolist() == [0.0, 5.0]
    assert torch.allclose(var, torch.tensor([[0.0, (9 + 4 + 25) / 3]]))
    assert torch.allclose(w, torch.tensor([[0.75, 0.01]]))   # only clusters with more than one member
    # ours assigns once more: [0, 2 | 3, 10]
    _, var, w, _, _ = _fit([0.0, 2.0, 3.0, 10.0], [0.0, 2.4], published=False, iters=1)
    assert torch.allclose(var, torch.tensor([[2.0, 14.5]])) and torch.allclose(w, torch.tensor([[0.5, 0.5]]))


def test_published_kmeans_stops_each_class_on_its_own():
    # Class 0 stops at once (all in cluster 0); class 1 needs updates, which must not move class 0.
    z = torch.tensor([0.0, 0.2, 0.4, 0.0, 2.0, 3.0, 10.0]).view(-1, 1)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    init = torch.tensor([[0.1, 5.0], [0.0, 2.4]]).view(2, 2, 1)
    mu, var, _, _ = fit_class_kmeans(z, y, 2, 2, init=init, published=True)
    assert mu[0, 0, 0] == torch.tensor(0.1) and float(mu[0, 1, 0]) == 5.0
    alone = _fit([0.0, 2.0, 3.0, 10.0], [0.0, 2.4], published=True)
    assert torch.equal(mu[1], alone[0][0]) and torch.equal(var[1], alone[1][0])


def _ids(n):
    ids = torch.arange(n, dtype=torch.uint8)
    return TensorSplit(x=ids.view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(), y=torch.arange(n) % 7)


def test_published_infer_time_split_is_by_index():
    # datasets_torch.py: fit on test images 0 .. n - n//10 - 1, score the last n//10, in index order
    bundle = SimpleNamespace(train=_ids(10), val=None, test=_ids(103))
    fit, held, ev = attacker_splits(bundle, "infer_time", 0, "published")
    assert fit.x[:, 0, 0, 0].tolist() == list(range(93)) and ev.x[:, 0, 0, 0].tolist() == list(range(93, 103))
    assert torch.equal(held.x, ev.x) and torch.equal(ev.y, torch.arange(93, 103) % 7)
    fit_s, held_s, ev_s = attacker_splits(bundle, "infer_time", 0)   # ours: per class, seeded
    assert sorted(ev_s.x[:, 0, 0, 0].tolist()) != list(range(93, 103))
    assert len(fit_s) + len(held_s) + len(ev_s) == 103
