"""Issue 27: the switches that reproduce the published code's behaviour. Each is left out of run
identities and attack keys at its default (older run folders keep theirs) and changes what it should."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import main_MIA
from attacks.base import TrainedAttack
from attacks.decoder import attacker_splits
from attacks.metrics import per_image_metrics, psnr_batch, summarize
from datasets.base import TensorSplit
from lifecycle.identity import PUBLISHED_SWITCHES, identity
from lifecycle.results import attack_key

PUBLISHED = {"cem_stats": "published", "cem_kmeans": "published", "attacker_data": "published",
             "decoder_heldout_bn": "train", "gan_adv_init": "xavier", "gan_loop": "published", "init": "published"}


def cfg(**over):
    c = vars(main_MIA.build_parser().parse_args([]))
    c.update(over)
    return c


def test_switches_count_only_away_from_their_default():
    assert set(PUBLISHED) == PUBLISHED_SWITCHES
    base = identity(cfg())
    parts = set(base["train"]) | set(base["attack"])
    assert not parts & PUBLISHED_SWITCHES      # a folder made before the switches keeps its identity
    old = {k: v for k, v in cfg().items() if k not in PUBLISHED_SWITCHES}
    assert identity(old) == base
    for key, value in PUBLISHED.items():
        ident = identity(cfg(**{key: value}))
        assert ident != base and (ident["train"].get(key) or ident["attack"].get(key)) == value, key
    assert "attacker_data" not in attack_key(cfg(), "decoder")
    assert attack_key(cfg(attacker_data="published"), "decoder")["attacker_data"] == "published"
    assert attack_key(cfg(gan_loop="published"), "gan")["gan_loop"] == "published"
    assert attack_key(cfg(gan_loop="published"), "decoder") == attack_key(cfg(), "decoder")


def test_psnr_batch_is_the_published_batch_average():
    mse = torch.tensor([0.01, 0.1, 0.001, 0.02, 0.05])
    # batches of 2: [0.01, 0.1], [0.001, 0.02], [0.05], weighted by their sizes
    want = (2 * 10 * math.log10(1 / 0.055) + 2 * 10 * math.log10(1 / 0.0105) + 10 * math.log10(1 / 0.05)) / 5
    assert psnr_batch(mse, 2) == pytest.approx(want)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8, generator=g)
    rec = (x + 0.3 * torch.randn(8, 3, 8, 8, generator=g)).clamp(0, 1)
    s = summarize(per_image_metrics(rec, x), batch_size=8)
    whole = 10 * math.log10(1 / float((rec - x).pow(2).mean()))
    assert s["psnr_batch_mean"] == pytest.approx(whole, rel=1e-5)
    assert s["psnr_batch_mean"] < s["psnr_mean"]   # Jensen: the log of a mean MSE is the larger


def _split(n, start):
    """Images whose pixels all hold their own number, so the tests can tell which image went where."""
    ids = torch.arange(start, start + n, dtype=torch.uint8)
    return TensorSplit(x=ids.view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous(), y=torch.arange(n) % 5)


def test_attacker_data_published_uses_every_image_and_checks_on_the_scored_ones():
    bundle = SimpleNamespace(train=_split(90, 0), val=_split(10, 100), test=_split(100, 110))
    fit, held, ev = attacker_splits(bundle, "train_time", 0)
    assert (len(fit), len(held), len(ev)) == (81, 9, 100)
    fit, held, ev_pub = attacker_splits(bundle, "train_time", 0, "published")
    assert len(fit) == 100 and torch.equal(ev_pub.x, ev.x) and torch.equal(held.x, ev.x)
    assert torch.equal(fit.x[90:], bundle.val.x)
    fit, held, ev = attacker_splits(bundle, "infer_time", 0)
    fit_p, held_p, ev_p = attacker_splits(bundle, "infer_time", 0, "published")
    assert (len(fit), len(held), len(fit_p), len(ev_p)) == (81, 9, 90, len(ev))
    ids = lambda split: set(split.x[:, 0, 0, 0].tolist())  # noqa: E731
    assert torch.equal(held_p.x, ev_p.x) and not ids(fit_p) & ids(ev_p)   # never fit on the scored images
    assert ids(fit_p) | ids(ev_p) == ids(fit) | ids(held) | ids(ev)   # the whole test set, none held out


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_decoder_heldout_bn(mode):
    torch.manual_seed(0)
    attack = TrainedAttack(epochs=1, heldout_bn=mode, batch_size=4)
    attack.model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    x = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    ctx = SimpleNamespace(obfuscate=lambda z: z, x_held=x, device=torch.device("cpu"))
    before = attack.model[1].running_mean.clone()
    with torch.no_grad():
        attack.heldout_mse(ctx, torch.randn(8, 2, 4, 4) + 3)
    moved = not torch.equal(before, attack.model[1].running_mean)
    assert moved == (mode == "train")   # published: the held-out images move BatchNorm's statistics


def test_gan_adv_init_xavier_is_the_published_init():
    from defenses.adversarial import AdversarialTraining

    def decoder(init):
        torch.manual_seed(0)
        return AdversarialTraining(1.0, 1, (8, 4, 4), 16, (0.5,) * 3, (0.25,) * 3, decoder="res_normN0C16",
                                   init=init).decoder

    ours, pub = decoder("default"), decoder("xavier")
    convs = [(a, b) for a, b in zip(ours.modules(), pub.modules()) if type(b) in (nn.Conv2d, nn.ConvTranspose2d)]
    assert convs
    for a, b in convs:
        assert not torch.equal(a.weight, b.weight)
        assert b.bias is None or not b.bias.any()
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(b.weight)
        assert b.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6   # Xavier-uniform's bound


@pytest.mark.parametrize("loop", ["ours", "published"])
def test_gan_loop(loop):
    from attacks.base import Context
    from attacks.gan import GANAttack

    calls = []
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    ctx = Context(encoder=nn.Flatten(0), obfuscate=lambda z: calls.append(1) or z + torch.randn_like(z),
                  feature_shape=(8, 8, 8), mean=(0, 0, 0), std=(1, 1, 1), x_fit=x, x_held=None, x_eval=x,
                  device=torch.device("cpu"))
    attack = GANAttack(generator="res_normN0C16", epochs=1, batch_size=4, n_critic=1, loop=loop, progress=False)
    attack.build(ctx)
    attack._z_fit = torch.randn(8, 8, 8, 8)
    modes = []
    attack.model.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    attack.train_epoch(ctx, 1, torch.Generator().manual_seed(0))
    # 2 batches, each one critic step then one generator step (n_critic 1)
    if loop == "ours":
        assert len(calls) == 2 and modes == [True, True, True, True]
    else:   # the critic's fakes from the generator in eval mode, the generator step on fresh noise
        assert len(calls) == 4 and modes == [False, True, False, True]


def test_cem_stats_reaches_the_loss():
    from defenses.build import build_defenses
    from defenses.cem import CEM

    def cem(**over):
        (d,) = [d for d in build_defenses(cfg(**over), 10, 45000).defenses if isinstance(d, CEM)]
        return d

    assert not cem().published_stats and cem(cem_stats="published").published_stats
    # published alpha: the loader's batches times the batch size (50,048 for the published 50k at 128)
    assert cem().n_train == 45000 and cem(cem_kmeans="published").n_train == 352 * 128
    assert cem(cem_kmeans="published").published_kmeans and not cem().published_kmeans


def test_paper_exact_sets_every_published_switch_and_later_flags_win():
    from lifecycle.flags import PAPER_EXACT

    pub = cfg(**vars(main_MIA.build_parser().parse_args(["--paper_exact", "--select_on", "val"])))
    assert "paper_exact" not in pub and pub["select_on"] == "val"
    assert all(pub[k] == v for k, v in PAPER_EXACT.items() if k != "select_on")
    assert PUBLISHED_SWITCHES <= set(PAPER_EXACT)   # every switch of issue 27 is in the set


def test_run_exp_paper_exact_runs_beside_ours(tmp_path):
    from tests.test_run_exp import commands, sh

    ours = commands(sh("--quick", "--dry-run", tmp=tmp_path))
    pub = commands(sh("--quick", "--dry-run", "--paper_exact", tmp=tmp_path))
    assert len(pub) == len(ours) == 2 and all("--paper_exact" in c for c in pub)
    assert not any("--paper_exact" in c for c in ours)
    names = lambda cmds: {c.split("--filename ")[1].split()[0] for c in cmds}  # noqa: E731
    assert not names(ours) & names(pub)   # their own run folders, in the same --folder


def test_cem_kmeans_published_seeds_keeps_empty_clusters_and_compacts():
    from defenses.cem_kmeans import _compact_published, _kmeanspp_init, fit_class_kmeans

    # Seeding: one point at distance 1 and one at 3 from the first seed: k-means++ picks the far one
    # with odds 9:1, the published seeding 3:1.
    zp = torch.tensor([[[0.0], [1.0], [3.0]]])
    mask, counts = torch.ones(1, 3, dtype=torch.bool), torch.tensor([3])
    far = {}
    for power in (1.0, 0.5):
        g = torch.Generator().manual_seed(0)
        picks = [_kmeanspp_init(zp, mask, counts, 2, g, power)[0] for _ in range(2000)]
        far[power] = sum(float(p[0, 1, 0]) == 3.0 for p in picks if float(p[0, 0, 0]) == 0.0) / max(
            1, sum(float(p[0, 0, 0]) == 0.0 for p in picks))
    assert far[1.0] == pytest.approx(0.9, abs=0.06) and far[0.5] == pytest.approx(0.75, abs=0.06)
    # Compaction, as the published kmeans_cuda: cluster 1 empty, cluster 3 has one member.
    var, w, n = torch.tensor([[1.0, 0, 3, 4]]), torch.tensor([[0.5, 0, 0.25, 0.25]]), torch.tensor([[2, 0, 1, 1]])
    v2, w2 = _compact_published(var, w, n)
    assert v2.tolist() == [[1.0, 3, 4, 4]] and torch.allclose(w2, torch.tensor([[0.5, 0.01, 0.01, 0.01]]))
    # An empty cluster stays valid (a candidate) in the published fit, invalid in ours.
    z = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    y = torch.zeros(4, dtype=torch.long)
    init = torch.tensor([[[0.0], [5.0], [100.0]]])
    ours = fit_class_kmeans(z, y, 1, 3, init=init)
    pub = fit_class_kmeans(z, y, 1, 3, init=init, published=True)
    assert ours[3].tolist() == [[True, True, False]] and pub[3].tolist() == [[True, True, True]]
    assert float(pub[0][0, 2, 0]) == 100.0   # its centroid stays where it was
    assert torch.allclose(pub[2], torch.tensor([[0.5, 0.5, 0.01]]))


def test_an_absent_switch_reads_as_its_default():
    from lifecycle.identity import absent, differences

    assert absent("cem_stats") == "own" and absent("decoder.attacker_data") == "split"
    assert absent("batch_size") == "<unset>"
    assert differences({}, {"gan_loop": "published"}) == ["gan_loop ours -> published"]
