"""GAN inversion attack: critic, gradient penalty, generator init, whole runs, sweep, CLI errors."""
import json

import pytest
import torch
import torch.nn as nn
from fake_runs import make_run

import run_gan_attack
from architectures.decoders import build_decoder
from architectures.discriminators import build_critic
from attacks.base import Context
from attacks.decoder import load_decoder, save_decoder
from attacks.gan import GANAttack, critic_loss, gradient_penalty
from lifecycle.attack_runner import attack_run, sweep
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"gan_AE_type": "res_normN0C8", "gan_epochs": 1, "gan_batch_size": 32, "attack_modes": "train_time",
        "attacks": "gan", "progress": False, "device": "cpu"}


@pytest.mark.parametrize("size,patches", [(32, 1), (48, 9), (64, 25), (9, 1), (20, 1)])
@pytest.mark.parametrize("channels", [3, 1])
def test_critic_scores_patches_like_the_published_one(size, channels, patches):
    """One score per image at 32 px (and, with a smaller last kernel, below), 9 and 25 at 48 and 64 px."""
    critic = build_critic(channels, size)
    out = critic(torch.rand(5, channels, size, size))
    assert out.shape == (5, patches) and torch.isfinite(out).all()
    assert sum(isinstance(m, nn.InstanceNorm2d) and m.affine for m in critic.modules()) == 2
    assert sum(p.numel() for p in critic.parameters()) == 1034113 - (3 - channels) * 64 * 25 - \
        (256 * 16 - 256 * critic.layer4.kernel_size[0] ** 2)


def test_critic_refuses_images_too_small_for_instance_norm():
    with pytest.raises(UserError, match="at least 9 pixels"):
        build_critic(3, 8)


def test_critic_loss_is_the_published_objective_for_patch_critics():
    """Mean over every patch score; gradient penalty on each image's summed scores (ones as grad_outputs)."""
    torch.manual_seed(0)
    critic = build_critic(3, 48)
    real, fake = torch.rand(4, 3, 48, 48), torch.rand(4, 3, 48, 48)
    torch.manual_seed(1)
    ours = critic_loss(critic, real, fake)
    torch.manual_seed(1)
    alpha = 1 - torch.rand(4, 1, 1, 1)  # our weight goes on the real image, theirs on the fake: same law
    x_hat = (real + alpha * (fake - real)).requires_grad_(True)  # the published interpolation
    o = critic(x_hat).view(-1)
    (g,) = torch.autograd.grad(o, x_hat, grad_outputs=torch.ones_like(o))
    gp = ((g.view(4, -1).norm(dim=1) - 1) ** 2).mean()
    published = -(critic(real).view(-1).mean() - critic(fake).view(-1).mean()) + 10 * gp
    assert torch.allclose(ours, published, rtol=1e-5)
    # a critic that averaged its patches per image would change the penalty: the check can fail
    mean_critic = lambda x: critic(x).mean(1)
    torch.manual_seed(1)
    assert not torch.allclose(critic_loss(mean_critic, real, fake), published, rtol=1e-3)


def test_gradient_penalty_zero_for_unit_norm_gradient():
    w = torch.randn(3 * 8 * 8)
    w = w / w.norm()
    linear = lambda x: x.flatten(1) @ w  # gradient w everywhere, norm 1
    real, fake = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    assert gradient_penalty(linear, real, fake).abs() < 1e-10
    doubled = lambda x: 2 * linear(x)  # norm 2 everywhere -> (2 - 1)^2
    assert torch.allclose(gradient_penalty(doubled, real, fake), torch.tensor(1.0))


def test_gradient_penalty_is_taken_on_interpolates():
    half_sq = lambda x: 0.5 * x.flatten(1).pow(2).sum(1)  # gradient x: its norm depends on where we look
    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    eps = torch.rand(4, 1, 1, 1)
    x_hat = eps * real + (1 - eps) * fake
    expected = (x_hat.flatten(1).norm(dim=1) - 1).pow(2).mean()
    assert torch.allclose(gradient_penalty(half_sq, real, fake, eps), expected)


def test_one_critic_step_lowers_the_critic_loss():
    torch.manual_seed(0)
    critic = build_critic(3, 32)
    real = torch.rand(16, 3, 32, 32) * 0.5 + 0.5
    fake = torch.rand(16, 3, 32, 32) * 0.5
    opt = torch.optim.Adam(critic.parameters(), lr=5e-3, betas=(0.5, 0.999))

    def loss():
        torch.manual_seed(1)  # the same interpolation weights before and after the step
        return critic_loss(critic, real, fake)

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert loss().item() < before.item()


def _ctx(feature_shape, size=32):
    x = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    return Context(encoder=nn.Identity(), obfuscate=lambda z: z, feature_shape=feature_shape, mean=(0, 0, 0),
                   std=(1, 1, 1), x_fit=x, x_held=None, x_eval=x, device=torch.device("cpu"))


def test_generator_starts_as_the_saved_decoder(tmp_path):
    torch.manual_seed(0)
    dec = build_decoder("res_normN1C8", (8, 8, 8), 32)
    dec.train()
    dec(torch.randn(16, 8, 8, 8) * 2)  # move BatchNorm statistics away from their initial values
    save_decoder(dec.eval(), tmp_path / "decoder_train_time.pt")
    logs = []
    attack = GANAttack("res_normN1C8", epochs=1, init_from=tmp_path / "decoder_train_time.pt", log=logs.append)
    attack.build(_ctx((8, 8, 8)))
    z = torch.randn(4, 8, 8, 8)
    assert torch.equal(attack.model.eval()(z), dec(z))
    assert torch.equal(load_decoder(tmp_path / "decoder_train_time.pt")(z), dec(z))
    assert "initialised from the saved decoder" in logs[-1]
    other = GANAttack("res_normN2C8", epochs=1, init_from=tmp_path / "decoder_train_time.pt", log=logs.append)
    other.build(_ctx((8, 8, 8)))
    assert "from scratch" in logs[-1] and other.settings()["init_from"] == "scratch"


def _old_design_decoder_file(path):
    """A decoder saved before res_normN{N}C{C} became the published one: the name, the earlier tensors."""
    torch.manual_seed(0)
    save_decoder(build_decoder("res_normN1C8_v0", (8, 8, 8), 32), path)
    ck = torch.load(path, weights_only=False)
    ck["arch"] = "res_normN1C8"
    torch.save(ck, path)
    return path


def test_generator_from_scratch_when_the_saved_decoder_has_the_old_design(tmp_path):
    path = _old_design_decoder_file(tmp_path / "decoder_train_time.pt")
    logs = []
    attack = GANAttack("res_normN1C8", epochs=1, init_from=path, log=logs.append)
    attack.build(_ctx((8, 8, 8)))
    assert "from scratch" in logs[-1] and "rerun the decoder attack" in logs[-1] and "\n" not in logs[-1]
    assert attack.settings()["init_from"] == "scratch"
    assert attack.model.state_dict().keys() == build_decoder("res_normN1C8", (8, 8, 8), 32).state_dict().keys()


def test_loading_an_old_design_decoder_is_one_user_error(tmp_path):
    path = _old_design_decoder_file(tmp_path / "decoder_train_time.pt")
    with pytest.raises(UserError, match="res_normN1C8_v0.*rerun the decoder attack"):
        load_decoder(path)
    ck = torch.load(path, weights_only=False)
    ck["arch"] = "res_normN1C8_v0"  # under its own name the old design still loads
    torch.save(ck, path)
    assert load_decoder(path).name == "res_normN1C8_v0"


def test_gan_checkpoint_with_the_old_critic_starts_over(tmp_path):
    logs = []
    attack = GANAttack("res_normN1C8", epochs=2, checkpoint_path=tmp_path / "gan.ckpt.pt", log=logs.append)
    attack.build(_ctx((8, 8, 8)))
    old_critic = {"features.0.weight": torch.zeros(64, 3, 5, 5), "head.weight": torch.zeros(1, 4096)}
    torch.save({"settings": attack.settings(), "epoch": 1, "model": attack.model.state_dict(),
                "training": {**attack.training_state(), "critic": old_critic}}, tmp_path / "gan.ckpt.pt")
    before = {k: v.clone() for k, v in attack.critic.state_dict().items()}
    assert attack._resume(torch.Generator()) is None
    assert "another design" in logs[-1] and "starting over" in logs[-1]
    assert all(torch.equal(before[k], v) for k, v in attack.critic.state_dict().items())


@pytest.mark.parametrize("cut,shape", [(3, (8, 16, 16)), (4, (8, 8, 8))])
def test_runs_attacked_with_their_own_shapes(tmp_path, cut, shape):
    run = make_run(tmp_path, cutlayer=cut, bottleneck="noRELU_C8S1", limit_train=48, limit_test=20)
    metrics = attack_run(run, {**TINY, "data_root": str(tmp_path)})
    res = metrics["attack"]["gan"]["train_time"]
    assert metrics["status"] == "finished" and res["n_eval"] == 20 and res["epochs"] == 1
    for block in ("final", "baseline_mean_image"):
        assert 0 < res[block]["mse_mean"] < 1
    assert (run / "images" / "gan_train_time.png").exists()
    saved = torch.load(run / res["saved_model"], weights_only=True)
    assert tuple(saved["feature_shape"]) == shape and saved["arch"] == "res_normN0C8"
    assert not (run / "attacks" / "gan_train_time.ckpt.pt").exists()
    assert "from scratch" in (run / "log.txt").read_text()


def test_killed_gan_attack_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    run = make_run(tmp_path, limit_train=40, limit_test=12)
    settings = {**TINY, "gan_epochs": 2, "checkpoint_every": 1, "data_root": str(tmp_path)}
    real_epoch = GANAttack.train_epoch

    def dies_in_epoch_2(self, ctx, epoch, gen):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, ctx, epoch, gen)

    monkeypatch.setattr(GANAttack, "train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        attack_run(run, settings)
    assert (run / "attacks" / "gan_train_time.ckpt.pt").exists()
    monkeypatch.setattr(GANAttack, "train_epoch", real_epoch)
    metrics = attack_run(run, settings)
    assert "resumed gan attack" in (run / "log.txt").read_text()
    assert metrics["attack"]["gan"]["train_time"]["epochs"] == 2


def test_sweep_skips_attacked_runs(tmp_path):
    from lifecycle.results import attack_key, slot

    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b")
    make_run(tmp_path, "unfinished", finished=False)
    m = json.loads((a / "metrics.json").read_text())
    slot(m, "gan", attack_key({**m["config"], **TINY}, "gan"), "sent").results["train_time"] = {"final": {}}
    (a / "metrics.json").write_text(json.dumps(m))
    # GAN results recorded before results versions (another generator and critic design) count as missing
    m = json.loads((b / "metrics.json").read_text())
    m["attack"] = {"gan": {"train_time": {"final": {}}}}
    (b / "metrics.json").write_text(json.dumps(m))
    seen = []
    status = sweep(tmp_path, TINY, run=lambda r, s: seen.append(r.name))
    assert seen == ["b"] and status == {str(a): "skipped", str(b): "attacked"}
    seen.clear()
    sweep(tmp_path, {**TINY, "n_critic": 5}, run=lambda r, s: seen.append(r.name))  # other GAN settings
    assert seen == ["a", "b"]
    seen.clear()
    sweep(tmp_path, TINY, force=True, run=lambda r, s: seen.append(r.name))
    assert seen == ["a", "b"]

    def fails_on_a(r, s):
        seen.append(r.name)
        if r.name == "a":
            raise UserError("broken")
    seen.clear()
    with pytest.raises(UserError, match="1 of 2 run"):
        sweep(tmp_path, TINY, force=True, run=fails_on_a)
    assert seen == ["a", "b"]  # b is still attacked after a failed


def _cli(capsys, *argv):
    code = run_gan_attack.main(list(argv) + ["--no_progress", "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    return code, lines


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    run = make_run(tmp_path, "nockpt")
    (run / "checkpoints" / "best.pt").unlink()
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "config.json").write_text(json.dumps({"model_name": "resnet50", "epochs": 90}))
    (foreign / "metrics.json").write_text(json.dumps({"status": "finished", "top1": 76.1}))
    torch.save({"state_dict": {}}, foreign / "checkpoints" / "best.pt")
    unknown = make_run(tmp_path, "unknown")
    cfg = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**cfg, "arch": "alexnet"}))
    for folder, needle in [(run, "best.pt"), (foreign, "not a run folder of this project"),
                           (unknown, "unknown arch 'alexnet'"), (tmp_path / "missing", "does not exist")]:
        code, lines = _cli(capsys, str(folder))
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    code, lines = _cli(capsys)
    assert code == 2 and len(lines) == 1 and "--sweep" in lines[0]
    code, lines = _cli(capsys, "--sweep", str(tmp_path / "empty_nothing"))
    assert code == 2 and len(lines) == 1
