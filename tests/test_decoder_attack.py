import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import SHARED_DATA
from tiny_images import Split, smooth_u8

from architectures.decoders import build_decoder
from attacks.decoder import DecoderAttack, attacker_splits
from attacks.grid import save_grid
from attacks.metrics import per_image_metrics, summarize
from utils import UserError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DATA_ROOT = SHARED_DATA


pytestmark = pytest.mark.usefixtures("one_thread")


def id_images(n, num_classes, size=8):
    """Images whose first two pixels encode their index, to check disjointness after splitting."""
    x = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    idx = torch.arange(n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (idx % 256).to(torch.uint8), (idx // 256).to(torch.uint8)
    return Split(x=x, y=idx % num_classes)


def ids(split):
    return set((split.x[:, 0, 0, 0].long() + 256 * split.x[:, 0, 0, 1].long()).tolist())


def fixed_encoder(c_out=8):
    torch.manual_seed(123)
    return nn.Sequential(nn.Conv2d(3, c_out, 3, padding=1), nn.AvgPool2d(2))


# --- decoders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_shape,size", [
    ((8, 8, 8), 32), ((128, 16, 16), 32), ((8, 12, 12), 48), ((64, 6, 6), 48), ((128, 2, 2), 64),
    ((16, 32, 32), 32), ((8, 3, 3), 48), ((8, 5, 5), 32), ((8, 64, 64), 32)])
@pytest.mark.parametrize("name", ["res_normN1C8", "conv_normN2C8"])
def test_decoder_output_shape_and_range(name, feature_shape, size):
    dec = build_decoder(name, feature_shape, size)
    z = torch.randn(2, *feature_shape) * 3
    out = dec(z)
    assert out.shape == (2, 3, size, size)
    assert out.min() >= 0 and out.max() <= 1


def test_default_decoder_and_upsampling_count():
    dec = build_decoder("res_normN8C64", (8, 8, 8), 32)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in dec.modules()) == 2
    assert dec(torch.randn(3, 8, 8, 8)).shape == (3, 3, 32, 32)
    dec = build_decoder("conv_normN0C4", (16, 32, 32), 32, out_channels=1)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in dec.modules())
    assert dec(torch.randn(2, 16, 32, 32)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("name,feature_shape,size,n_up,params", [
    ("res_normN8C64", (8, 8, 8), 32, 2, 711539),      # the published default attack decoder
    ("res_normN4C64", (8, 8, 8), 32, 2, 415091),      # the published gan_adv defender decoder
    ("res_normN8C64", (8, 16, 16), 32, 1, 748595),    # cut 3: one upsampling from the true 16x16 features
    ("res_normN8C64_v0", (8, 8, 8), 32, 2, 672323),   # this project's earlier design
    ("res_normN4C64_v0", (8, 8, 8), 32, 2, 376387)])
def test_decoder_sizes_and_upsampling_from_the_true_feature_size(name, feature_shape, size, n_up, params):
    dec = build_decoder(name, feature_shape, size)
    assert dec.name == name and dec.n_up == n_up
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in dec.modules()) == n_up
    assert sum(p.numel() for p in dec.parameters()) == params


def test_published_and_v0_decoders_keep_distinct_state_dicts():
    new, old = build_decoder("res_normN1C8", (8, 8, 8), 32), build_decoder("res_normN1C8_v0", (8, 8, 8), 32)
    assert all(k.startswith("m.") for k in new.state_dict())
    assert not set(new.state_dict()) & set(old.state_dict())


@pytest.mark.parametrize("bad", ["", "res_norm", "res_normN8", "res_normN8C0", "vgg11", "res_normNxC64",
                                 "RES_normN8C64", "res_normN8C64 ", "conv_normN8C64_v0", "res_normN8C64_v1",
                                 "res_normN8C0_v0"])
def test_bad_decoder_names(bad):
    with pytest.raises(UserError, match="res_normN"):
        build_decoder(bad, (8, 8, 8), 32)


def test_decoder_needs_image_like_features():
    with pytest.raises(UserError):
        build_decoder("res_normN1C8", (512,), 32)


# --- attacker data ----------------------------------------------------------------------------------
def test_train_time_splits():
    test = id_images(120, 10)
    test = Split(x=test.x, y=torch.sort(test.y).values)  # stored class by class, like many test sets
    bundle = SimpleNamespace(train=id_images(500, 10), test=test, num_classes=10, image_size=8)
    fit, held, ev = attacker_splits(bundle, "train_time", seed=0)
    assert (len(fit), len(held), len(ev)) == (450, 50, 120)
    assert ids(fit).isdisjoint(ids(held)) and ids(fit) | ids(held) == set(range(500))
    assert ids(ev) == ids(bundle.test)  # all test images are scored
    assert len(set(ev.y[:10].tolist())) == 10  # the grid's first images span the classes
    fit2, held2, _ = attacker_splits(bundle, "train_time", seed=0)
    assert ids(held2) == ids(held)
    _, held3, _ = attacker_splits(bundle, "train_time", seed=1)
    assert ids(held3) != ids(held)
    assert isinstance(fit, Split) and fit.x.dtype == torch.uint8


def test_infer_time_splits_per_class():
    test = id_images(1000, 10)
    bundle = SimpleNamespace(train=id_images(50, 10), test=test, num_classes=10, image_size=8)
    fit, held, ev = attacker_splits(bundle, "infer_time", seed=3)
    assert (len(fit) + len(held), len(ev)) == (900, 100)
    assert len(held) == 90
    a, b, c = ids(fit), ids(held), ids(ev)
    assert a.isdisjoint(b) and a.isdisjoint(c) and b.isdisjoint(c) and a | b | c == set(range(1000))
    assert torch.equal(torch.bincount(ev.y, minlength=10), torch.full((10,), 10))
    assert torch.equal(torch.bincount(torch.cat([fit.y, held.y]), minlength=10), torch.full((10,), 90))
    assert set(ev.y[:10].tolist()) == set(range(10))  # grid images span the classes
    # Shuffled within class: not simply the last 10% of each class in file order.
    assert c != set(i for i in range(1000) if i // 10 >= 90)
    _, _, ev2 = attacker_splits(bundle, "infer_time", seed=3)
    assert ids(ev2) == c


def test_bad_attack_mode():
    bundle = SimpleNamespace(train=id_images(20, 2), test=id_images(20, 2), num_classes=2, image_size=8)
    with pytest.raises(UserError, match="train_time"):
        attacker_splits(bundle, "both", seed=0)


# --- the attack ---------------------------------------------------------------------------------------
def smooth_setup(n_fit=256, n_held=32, n_eval=48):
    fit = Split(smooth_u8(n_fit, seed=1), torch.zeros(n_fit, dtype=torch.long))
    held = Split(smooth_u8(n_held, seed=2), torch.zeros(n_held, dtype=torch.long))
    ev = Split(smooth_u8(n_eval, seed=3), torch.zeros(n_eval, dtype=torch.long))
    model = SimpleNamespace(encoder=fixed_encoder(), feature_shape=(8, 8, 8))
    return model, fit, held, ev


def mean_image_mse(fit, ev):
    mean_img = fit.x.float().div(255).mean(0, keepdim=True).expand(len(ev), -1, -1, -1)
    return summarize(per_image_metrics(mean_img, ev.x.float() / 255))


def test_attack_returns_metrics_grid_and_restores_encoder(tmp_path):
    model, fit, held, ev = smooth_setup()
    before = [p.detach().clone() for p in model.encoder.parameters()]
    model.encoder.train()
    calls = []

    def noisy(z):
        calls.append(z.shape[0])
        return z + 0.1 * torch.randn_like(z)

    attack = DecoderAttack("res_normN1C8", epochs=3, batch_size=64, lr=3e-3, seed=0, device="cpu", progress=False)
    res = attack.run(model, noisy, fit, held, ev, MEAN, STD)
    keys = {"mse_mean", "mse_std", "ssim_mean", "ssim_std", "ssim_lib_mean", "ssim_lib_std",
            "psnr_mean", "psnr_std", "n"}
    for summary in (res.final, res.best_heldout):
        assert keys <= set(summary)
        assert all(math.isfinite(summary[k]) for k in keys) and summary["n"] == 48
    assert (res.n_fit, res.n_heldout, res.n_eval) == (256, 32, 48)
    assert 1 <= res.best_epoch <= 3 and len(res.history) == 3 and res.wall_time_s > 0
    assert res.grid_originals.shape == res.grid_recons.shape == (16, 3, 16, 16)
    assert torch.equal(res.grid_originals, ev.x[:16].float() / 255)
    assert res.grid_recons.min() >= 0 and res.grid_recons.max() <= 1
    # Every training batch, every held-out evaluation and the final scoring query the obfuscation.
    assert len(calls) == 3 * 4 + 3 + 1 and sum(calls) == 3 * (256 + 32) + 48
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))
    assert set(res.summary()) >= {"final", "best_heldout", "best_epoch", "n_fit", "decoder", "epochs"}

    from PIL import Image
    path = save_grid(res.grid_originals, res.grid_recons, tmp_path / "sub" / "grid.png", min_tile=1)
    with Image.open(path) as im:
        assert im.size == (16 * 18 + 2, 2 * 18 + 2)
    with Image.open(save_grid(res.grid_originals, res.grid_recons, tmp_path / "big.png")) as im:
        assert im.size == (16 * 98 + 2, 2 * 98 + 2)  # 16-px tiles enlarged 6x to 96 px by default


def test_grid_with_fewer_images_than_a_row(tmp_path):
    from PIL import Image
    x = torch.rand(5, 3, 8, 8)
    with Image.open(save_grid(x, x, tmp_path / "g.png", nrow=16, min_tile=1)) as im:
        assert im.size == (5 * 10 + 2, 2 * 10 + 2)
    with Image.open(save_grid(x, x, tmp_path / "h.png", nrow=2, min_tile=1)) as im:
        assert im.size == (2 * 10 + 2, 6 * 10 + 2)  # 3 rows of originals above 3 of reconstructions


def test_attack_only_sees_obfuscated_features():
    """With z~ = 0 the decoder can only output a constant image, which can never beat the eval mean.
    If the attack skipped `obfuscate`, the clean features would let it beat that floor easily."""
    model, fit, held, ev = smooth_setup()
    floor = mean_image_mse(ev, ev)["mse_mean"]  # best possible constant prediction on the eval set
    kw = dict(epochs=6, batch_size=32, lr=3e-3, seed=0, device="cpu", progress=False)
    blind = DecoderAttack("res_normN1C8", **kw).run(model, torch.zeros_like, fit, held, ev, MEAN, STD)
    seeing = DecoderAttack("res_normN1C8", **kw).run(model, lambda z: z, fit, held, ev, MEAN, STD)
    assert blind.final["mse_mean"] >= floor - 1e-6
    assert blind.best_heldout["mse_mean"] >= floor - 1e-6
    assert seeing.final["mse_mean"] < 0.7 * floor, (seeing.final["mse_mean"], floor)


def test_feature_cache_does_not_change_results():
    model, fit, held, ev = smooth_setup(n_fit=96, n_held=16, n_eval=16)
    kw = dict(epochs=2, batch_size=32, seed=0, device="cpu", progress=False)
    cached = DecoderAttack("conv_normN1C8", **kw).run(model, lambda z: z, fit, held, ev, MEAN, STD)
    direct = DecoderAttack("conv_normN1C8", feature_cache_mb=0, **kw).run(model, lambda z: z, fit, held, ev, MEAN, STD)
    assert abs(cached.final["mse_mean"] - direct.final["mse_mean"]) < 1e-5


def test_attack_beats_mean_image_on_real_images():
    path = DATA_ROOT / "cifar10_subset" / "test_1000.npz"
    if not path.exists():
        pytest.skip(f"real-image subset not found at {path}; set CEM_DATA_ROOT to the shared data folder")
    with np.load(path, allow_pickle=False) as d:
        x = torch.from_numpy(d["x"][:600]).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(d["y"][:600]).long()
    bundle = SimpleNamespace(train=Split(x[:100], y[:100]), test=Split(x, y), num_classes=10, image_size=32)
    fit, held, ev = attacker_splits(bundle, "infer_time", seed=0)
    model = SimpleNamespace(encoder=nn.AvgPool2d(2), feature_shape=(3, 16, 16))
    res = DecoderAttack("res_normN1C16", epochs=6, batch_size=64, lr=3e-3, seed=0, device="cpu",
                        progress=False).run(model, lambda z: z, fit, held, ev, MEAN, STD)
    baseline = mean_image_mse(Split(torch.cat([fit.x, held.x]), None), ev)
    assert res.final["psnr_mean"] > baseline["psnr_mean"] + 3, (res.final, baseline)
    assert res.final["ssim_mean"] > baseline["ssim_mean"]
