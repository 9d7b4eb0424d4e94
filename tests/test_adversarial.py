"""gan_adv (attacker-aware training): the penalty's threshold, the defender decoder learning, exact resume;
and the decoder attack on a dropout run seeing what the device sends."""
import pytest
import torch
import torch.nn.functional as F

import architectures.decoders as decoders
from defenses.adversarial import AdversarialTraining
from lifecycle.experiment import run_experiment
from main_MIA import build_parser
from utils import UserError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _setup(seed=0, **kw):
    torch.manual_seed(seed)
    adv = AdversarialTraining(1.0, 1, (8, 4, 4), 16, MEAN, STD, decoder="res_normN0C16", **kw)
    img = F.interpolate(torch.rand(16, 3, 4, 4), size=16, mode="bilinear", align_corners=False)  # smooth images
    x = (img - 0.5) / 0.25
    enc = torch.nn.Conv2d(3, 8, 4, stride=4)  # a fixed encoder: z holds the 4x4 content
    with torch.no_grad():
        z = enc(x)
    return adv, x, img, z


pytestmark = pytest.mark.usefixtures("one_thread")


def test_resuming_with_an_old_design_defender_decoder_is_one_user_error():
    """A run checkpointed before res_normN{N}C{C} became the published decoder cannot resume exactly."""
    adv, *_ = _setup()
    old = AdversarialTraining(1.0, 1, (8, 4, 4), 16, MEAN, STD, decoder="res_normN0C16_v0")
    state = {**adv.state_dict(), "decoder": old.state_dict()["decoder"]}
    with pytest.raises(UserError, match="gan_adv defender decoder.*--force"):
        adv.load_state_dict(state)
    adv.load_state_dict(adv.state_dict())  # its own state still loads


def test_images_undo_the_normalisation():
    adv, x, img, _ = _setup()
    assert torch.allclose(adv.images(x), img, atol=1e-6)


def test_penalty_zero_below_threshold_positive_above():
    adv, x, img, z = _setup()
    for _ in range(5):
        adv.decoder_step(z, img)
    adv.decoder.eval()
    with torch.no_grad():
        from attacks.metrics import ssim_paper
        s = ssim_paper(adv.decoder(z), img).mean().item()
    adv.ssim_threshold = s + 0.05
    assert adv.penalty(z, img).item() == 0.0
    adv.ssim_threshold = s - 0.05
    assert abs(adv.penalty(z, img).item() - 0.05) < 1e-4  # strength 1 * (SSIM - threshold)
    adv.strength = 3.0
    assert abs(adv.penalty(z, img).item() - 0.15) < 3e-4
    adv.loss_type = "MSE"
    assert adv.penalty(z, img).item() < 0  # -strength * MSE: the encoder is pushed to raise D's error


def test_defender_decoder_ssim_rises_over_its_steps():
    adv, x, img, z = _setup(seed=1)
    ssims = [adv.decoder_step(z, img).item() for _ in range(25)]
    assert sum(ssims[-5:]) / 5 > sum(ssims[:5]) / 5 + 0.1, ssims


def test_encoder_gets_the_penalty_gradient_decoder_does_not():
    adv, x, img, _ = _setup(seed=2)
    adv.ssim_threshold = -1.0  # always above the threshold
    enc = torch.nn.Conv2d(3, 8, 4, stride=4)
    before = [p.clone() for p in adv.decoder.parameters()]
    loss = adv.encoder_loss(enc(x), x, None, lr=0.05)
    changed = any(not torch.equal(a, b) for a, b in zip(before, adv.decoder.parameters()))
    assert changed  # its own step ran
    loss.backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.decoder.parameters())
    assert not adv.capturable


def _cfg(tmp_path, **over):
    cfg = vars(build_parser().parse_args([]))
    cfg.pop("no_progress")
    cfg.update(dataset="digits", data_root=str(tmp_path / "data"), folder=str(tmp_path / "runs"), num_epochs=2,
               batch_size=32, limit_train=96, limit_test=32, no_attack=True, device="cpu", lambd=0.0,
               regularization="None", regularization_strength=0.0, AT_regularization="gan_adv_step2",
               AT_regularization_strength=0.5, adv_AE_type="res_normN0C8", gan_pretrain_epochs=1,
               ssim_threshold=0.0)
    cfg.update(over)
    return cfg


def test_gan_adv_run_resumes_exactly(tmp_path):
    full = run_experiment(_cfg(tmp_path, filename="full"), progress=False)
    assert full["status"] == "finished"
    part = run_experiment(_cfg(tmp_path, filename="part"), progress=False, stop_after=1)
    assert part["status"] == "training"
    done = run_experiment(_cfg(tmp_path, filename="part", resume=True), progress=False)
    assert done["train"]["test_acc"] == full["train"]["test_acc"]
    a = torch.load(tmp_path / "runs" / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "part" / "checkpoints" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    da, db = a["defenses"]["gan_adv"], b["defenses"]["gan_adv"]
    assert da["pretrained"] and db["pretrained"]
    # 2 epochs: the decoder's lr milestones 60/150/240 of 240 all fall on epoch 2 (never before it)
    assert da["optimizer"]["param_groups"][0]["lr"] == db["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    for k in da["decoder"]:
        assert torch.equal(da["decoder"][k], db["decoder"][k]), k
    assert "adv_decoder_ssim" in (tmp_path / "runs" / "full" / "log.txt").read_text()
    again = run_experiment(_cfg(tmp_path, filename="full", attack_only=True, attack_epochs=1,
                                gan_AE_type="res_normN0C8", attack_modes="infer_time"), progress=False)
    assert again["status"] == "finished" and "infer_time" in again["attack"]["decoder"]  # rebuilt with gan_adv


def test_decoder_attack_on_a_dropout_run_sees_dropped_out_features(tmp_path, monkeypatch):
    seen = []
    original = decoders.ResNormDecoder.forward  # the class res_normN{N}C{C} builds

    def spy(self, z):
        seen.append((z == 0).float().mean().item())
        return original(self, z)

    monkeypatch.setattr(decoders.ResNormDecoder, "forward", spy)
    cfg = _cfg(tmp_path, filename="drop", num_epochs=1, AT_regularization="dropout0.5", AT_regularization_strength=1.0,
               regularization="Gaussian_kl", regularization_strength=0.05, no_attack=False, attack_epochs=1,
               gan_AE_type="res_normN0C8", attack_modes="infer_time")
    out = run_experiment(cfg, progress=False)
    assert out["status"] == "finished" and "infer_time" in out["attack"]["decoder"]
    assert seen and all(abs(f - 0.5) < 0.1 for f in seen), seen  # noise, then dropout: exact zeros reach it
    seen.clear()
    run_experiment({**cfg, "attack_only": True, "force": True}, progress=False)  # the re-attack path deploys it too
    assert seen and all(abs(f - 0.5) < 0.1 for f in seen), seen
