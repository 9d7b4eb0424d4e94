"""The --AT_regularization defences behave as published by default (DESIGN.md §5): local_dp is
Gaussian, NoPeek's weight is 0.1*s (x10 on CIFAR-10), local DP comes before dropout and top-k,
gan_adv takes 3 steps, decays its decoder's lr, pre-trains it on noisy features and steps it on
eval-mode features. Runs recorded before these defaults (no AT_version) keep their meaning."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from datasets.base import TensorSplit
from defenses import GaussianNoise, build_defenses, parse_at_options
from defenses.adversarial import AdversarialTraining
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


def _gan_adv(**cfg_over):
    cfg = _cfg(AT_regularization="gan_adv", adv_AE_type="res_normN0C16", **cfg_over)
    adv = build_defenses(cfg, 10, 100, feature_shape=(8, 4, 4), image_size=16, mean=MEAN, std=STD).find("gan_adv")
    assert isinstance(adv, AdversarialTraining)
    return adv


@pytest.mark.parametrize("num_epochs,decays", [(240, (60, 150, 240)), (24, (6, 15, 24)), (120, (30, 75, 120))])
def test_defender_decoder_lr_drops_at_the_papers_milestones_scaled(num_epochs, decays):
    adv = _gan_adv(num_epochs=num_epochs)
    lrs = []
    for epoch in range(num_epochs):  # 0-based, as the trainer calls it; decays are 1-based epochs
        adv.on_epoch_start(None, epoch)
        lrs.append(adv.opt.param_groups[0]["lr"])
    want = [1e-3 * 0.2 ** sum(e + 1 >= m for m in decays) for e in range(num_epochs)]
    assert lrs == pytest.approx(want, rel=1e-9)
    assert lrs[decays[0] - 2] == pytest.approx(1e-3) and lrs[decays[0] - 1] == pytest.approx(2e-4)


def test_defender_decoder_steps_on_eval_mode_features_of_the_batch():
    torch.manual_seed(3)
    adv = _gan_adv()
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.BatchNorm2d(8))
    with torch.no_grad():
        enc[1].running_mean.fill_(0.7)
        enc[1].running_var.fill_(3.0)
    enc.train()
    adv.pretrained = True  # binds the encoder, no pre-training
    adv.on_train_start(SimpleNamespace(model=SimpleNamespace(encoder=enc)))
    x = torch.randn(16, 3, 16, 16)
    z_train = enc(x)  # the training forward (train mode) ...
    stats = enc[1].running_mean.clone()
    seen = []
    adv.decoder_step = lambda z, target, *a, **k: seen.append(z.clone()) or torch.zeros(())
    adv.encoder_loss(z_train, x, None, lr=0.05)
    enc.eval()
    with torch.no_grad():
        want = enc(x)
    assert len(seen) == 3
    assert all(torch.allclose(z, want, atol=1e-6) for z in seen)
    assert not torch.allclose(want, z_train, atol=1e-2)  # the two modes differ here
    assert torch.equal(enc[1].running_mean, stats)  # the eval pass left the statistics alone


def _fake_trainer(enc, batch=16):
    g = torch.Generator().manual_seed(4)
    train = TensorSplit(torch.zeros(40, 3, 16, 16, dtype=torch.uint8), torch.randint(0, 10, (40,), generator=g))
    test = TensorSplit(torch.full((24, 3, 16, 16), 255, dtype=torch.uint8), torch.randint(0, 10, (24,), generator=g))
    bundle = SimpleNamespace(train=train, test=test, mean=MEAN, std=STD)
    return SimpleNamespace(bundle=bundle, device=torch.device("cpu"), progress=False,
                           model=SimpleNamespace(encoder=enc), s=SimpleNamespace(batch_size=batch))


@pytest.mark.parametrize("data,pixel", [("train", 0.0), ("test", 1.0)])
def test_pretraining_is_mse_on_noisy_features_with_its_own_annealed_adam(data, pixel):
    torch.manual_seed(5)
    adv = _gan_adv(regularization="Gaussian_kl", regularization_strength=0.5, gan_pretrain_epochs=2,
                   gan_pretrain_data=data)
    enc = torch.nn.Conv2d(3, 8, 4, stride=4).train()
    calls = []

    def spy(z, target, opt=None, loss_type=None):
        calls.append((z.clone(), target.clone(), opt, loss_type, opt.param_groups[0]["lr"] if opt else None))
        return torch.zeros(())

    adv.decoder_step = spy
    adv.on_train_start(_fake_trainer(enc))
    assert adv.pretrained and enc.training
    assert calls and all(c[3] == "MSE" for c in calls)
    assert all(c[2] is not None and c[2] is not adv.opt for c in calls)  # not the per-batch optimizer
    assert {round(c[4], 9) for c in calls} == {1e-3, round(1e-5 + (1e-3 - 1e-5) / 2, 9)}  # cosine, 2 epochs
    noise = []
    for z, target, *_ in calls:
        assert torch.all(target == pixel)  # the images of the chosen split
        with torch.no_grad():
            noise.append((z - enc((target - 0.5) / 0.25)).flatten())
    noise = torch.cat(noise)
    assert abs(noise.std().item() - 0.5) < 0.05 and abs(noise.mean().item()) < 0.05


def test_pretraining_without_noise_sees_clean_features():
    adv = _gan_adv(gan_pretrain_epochs=1)
    enc = torch.nn.Conv2d(3, 8, 4, stride=4)
    seen = []
    adv.decoder_step = lambda z, target, *a, **k: seen.append((z, target)) or torch.zeros(())
    adv.on_train_start(_fake_trainer(enc))
    with torch.no_grad():
        assert all(torch.allclose(z, enc((t - 0.5) / 0.25), atol=1e-6) for z, t in seen)


def test_pretraining_lowers_the_mse_it_trains_on():
    torch.manual_seed(6)
    adv = _gan_adv(gan_pretrain_epochs=20)
    img = F.interpolate(torch.rand(40, 3, 4, 4), size=16, mode="bilinear", align_corners=False)
    trainer = _fake_trainer(torch.nn.Conv2d(3, 8, 4, stride=4))
    trainer.bundle.train = TensorSplit((img * 255).round().to(torch.uint8), torch.zeros(40, dtype=torch.long))
    x = ((trainer.bundle.train.x.float() / 255) - 0.5) / 0.25
    enc = trainer.model.encoder

    def mse():  # on batch statistics: 20 steps leave the running ones near their start
        adv.decoder.train()
        with torch.no_grad():
            return F.mse_loss(adv.decoder(enc(x)), adv.images(x)).item()

    before = mse()
    adv.on_train_start(trainer)
    assert mse() < 0.75 * before


def test_report_keeps_an_old_local_dp_run_apart_from_a_new_one(tmp_path):
    """A finished run from when local_dp meant Laplace is neither averaged with nor titled like a new
    (Gaussian) local_dp run: the report splits tables by identity and names AT_version."""
    import json

    from lifecycle.identity import identity
    from tools import collect

    new = _cfg(AT_regularization="local_dp", AT_regularization_strength=2.0)
    old = {k: v for k, v in new.items() if k not in ("AT_version", "patrol_optimizer", "gan_pretrain_data")}
    for name, c in (("old", old), ("new", new)):
        (tmp_path / name).mkdir()
        res = {"final": {"mse_mean": 0.1, "ssim_mean": 0.5, "psnr_mean": 10.0}}
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"status": "finished", "identity": identity(c), "config": c, "train": {"test_acc": 50.0},
             "attack": {"decoder": {"train_time": res}}}))
    runs, _ = collect.load_runs(tmp_path)
    titles = [collect.group_title(k) for k, _ in collect.groups(runs)]
    assert len(titles) == 2 and all("AT_version" in t for t in titles), titles


def test_an_old_local_dp_run_folder_is_attacked_with_laplace_noise_and_not_taken_for_a_new_run(tmp_path):
    import json

    from lifecycle.experiment import run_experiment
    from lifecycle.trained_run import load_trained_run
    from utils import UserError

    cfg = _cfg(dataset="digits", data_root=str(tmp_path / "data"), folder=str(tmp_path / "runs"), filename="r",
               num_epochs=1, batch_size=32, limit_train=64, limit_test=32, no_attack=True, device="cpu",
               AT_regularization="local_dp", AT_regularization_strength=2.0)
    cfg.pop("no_progress")
    run_experiment(cfg, progress=False)
    run = tmp_path / "runs" / "r"
    assert load_trained_run(run, device="cpu").defenses.find("local_dp").mechanism == "gaussian"
    # make it a folder written before AT_version (and the flags added with it) existed
    new_keys = ("AT_version", "patrol_optimizer", "gan_pretrain_data")
    for name in ("config.json", "metrics.json"):
        data = json.loads((run / name).read_text())
        for part in (data, data.get("config", {}), data["identity"]["train"]):
            for k in new_keys:
                part.pop(k, None)
        (run / name).write_text(json.dumps(data))
    assert load_trained_run(run, device="cpu").defenses.find("local_dp").mechanism == "laplace"
    with pytest.raises(UserError, match="AT_version"):
        run_experiment(cfg, progress=False)  # not "already finished": another configuration
