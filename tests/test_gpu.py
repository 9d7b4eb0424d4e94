"""GPU-only behaviour: runs where CUDA is present (the lent GPU machine), skipped elsewhere."""
import pytest
import torch

from defenses.cem import cem_batch_loss, fit_class_kmeans

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")  # this file tests CUDA-only behaviour on purpose


def test_cem_loss_and_kmeans_agree_between_cpu_and_cuda():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(2000, 512, generator=g)
    y = torch.randint(0, 10, (2000,), generator=g)
    cpu = fit_class_kmeans(z, y, 10, 5, generator=torch.Generator().manual_seed(1))
    gpu = fit_class_kmeans(z.to(GPU), y.to(GPU), 10, 5, init=cpu[0].to(GPU))
    assert all(t.device.type == "cuda" for t in gpu)
    assert torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-4)  # warm start from the CPU fit is a fixed point
    zb = z[:128].clone().requires_grad_(True)
    zg = z[:128].to(GPU).requires_grad_(True)
    lc = cem_batch_loss(zb, y[:128], *cpu, 0.05, 0.125, 2000)
    lg = cem_batch_loss(zg, y[:128].to(GPU), *[t.to(GPU) for t in cpu], 0.05, 0.125, 2000)
    lc.backward()
    lg.backward()
    assert torch.allclose(lc, lg.cpu(), atol=1e-5)
    assert torch.allclose(zb.grad, zg.grad.cpu(), atol=1e-6)


def test_compiled_cem_loss_matches_eager():
    from defenses.cem import prepare_state, prepared_loss

    g = torch.Generator().manual_seed(2)
    z = torch.rand(1000, 512, generator=g).to(GPU)
    y = torch.randint(0, 10, (1000,), generator=g).to(GPU)
    state = fit_class_kmeans(z, y, 10, 5, generator=torch.Generator().manual_seed(0))
    out = []
    for use_compile in (False, True):
        st = prepare_state(*state, 0.05, 0.125, 1000, compile=use_compile)
        zb = z[:128].clone().requires_grad_(True)
        loss = prepared_loss(zb, y[:128], st)
        loss.backward()
        out.append((loss.detach(), zb.grad))
    import defenses.cem as cem_mod
    assert not cem_mod._compiled["failed"], "torch.compile fell back to eager on this GPU"
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-6)


def test_training_and_attack_run_on_cuda(tmp_path):
    from lifecycle.experiment import run_experiment
    from main_MIA import build_parser

    cfg = vars(build_parser().parse_args([]))
    cfg.pop("no_progress")
    cfg.update(dataset="digits", data_root=str(tmp_path), folder=str(tmp_path / "runs"), filename="gpu",
               num_epochs=2, attack_epochs=1, gan_AE_type="res_normN1C16", device="cuda", bf16=True)
    m = run_experiment(cfg, progress=False)
    assert m["status"] == "finished" and m["config"]["device"].startswith("cuda")
    assert m["train"]["test_acc"] > 0
    ck = torch.load(tmp_path / "runs" / "gpu" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["defenses"]["cem"]["state"] is not None  # CEM state saved (on the CPU) for resume


def test_no_host_device_sync_in_the_training_step(tmp_path):
    """CUDA sync debug mode raises on any synchronising call inside one training epoch."""
    from architectures import build_split_model
    from datasets import load_dataset
    from defenses import build_defenses
    from model_training import Trainer, TrainSettings

    b = load_dataset("digits", str(tmp_path), select_on="test")
    model = build_split_model("vgg11_bn_sgm", 4, b.num_classes, b.image_size, "noRELU_C8S1")
    d = build_defenses({"regularization": "Gaussian_kl", "regularization_strength": 0.05, "lambd": 16,
                        "var_threshold": 0.125, "arch": "vgg11_bn_sgm"}, b.num_classes, len(b.train))
    tr = Trainer(model, b, d, torch.device("cuda"), tmp_path, TrainSettings(num_epochs=4), progress=False)
    assert tr.checkpoint_seconds == 30 and tr.aug_train_loader.batch_size == 2048  # CUDA's defaults
    tr.train_epoch(0)
    d.on_epoch_end(tr)

    # The per-epoch .item() calls at the end are allowed; everything in the batch loop must not sync.
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loader = tr.train_loader
        loader.set_epoch(1)
        it = iter(loader)
        for _ in range(3):
            x, y = next(it)
            z = tr.model.encoder(tr._prep(x))
            out = tr.model.server_forward(tr.defenses.obfuscate(z, training=True))
            loss = torch.nn.functional.cross_entropy(out, y) + tr.defenses.encoder_loss(z, x, y, lr=0.05)
            tr.opt.zero_grad(set_to_none=True)
            loss.backward()
            tr.opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss.detach()).all()


def _digits_trainer(tmp_path, capture, **settings):
    from architectures import build_split_model
    from datasets import load_dataset
    from defenses import build_defenses
    from model_training import Trainer, TrainSettings

    b = load_dataset("digits", str(tmp_path), select_on="test")
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, b.num_classes, b.image_size, "noRELU_C8S1")
    d = build_defenses({"regularization": "Gaussian_kl", "regularization_strength": 0.05, "lambd": 16,
                        "var_threshold": 0.125, "arch": "vgg11_bn_sgm"}, b.num_classes, len(b.train))
    return Trainer(model, b, d, GPU, tmp_path / capture, TrainSettings(num_epochs=8, capture=capture, **settings),
                   progress=False)


@pytest.mark.parametrize("bf16", [False, True])
def test_captured_training_agrees_with_eager(tmp_path, bf16):
    logs = {}
    for mode in ("off", "on"):
        tr = _digits_trainer(tmp_path, mode, bf16=bf16)
        logs[mode] = []
        for e in range(4):
            torch.manual_seed(e)
            torch.cuda.manual_seed(e)
            logs[mode].append(tr.train_epoch(e))
            tr.defenses.on_epoch_end(tr)
        if mode == "on":
            assert tr.stepper.enabled and tr.stepper.failed is None and tr.stepper.captures >= 1
    for a, b in zip(logs["off"], logs["on"]):
        # Same maths; only atomics, cuDNN algorithms and the noise stream may differ.
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.05 * a["train_loss"] + 0.02, (a, b)
        assert abs(a["train_acc"] - b["train_acc"]) <= 6.0, (a, b)
        assert abs(a["cem_term"] - b["cem_term"]) <= 0.1 * abs(a["cem_term"]) + 1e-3, (a, b)
    assert logs["on"][-1]["cem_term"] > 0


def test_captured_step_has_no_host_sync(tmp_path):
    tr = _digits_trainer(tmp_path, "on")
    for e in range(2):
        tr.train_epoch(e)
        tr.defenses.on_epoch_end(tr)
    assert tr.stepper.captures >= 1
    loader = tr.train_loader
    loader.set_epoch(2)
    key = tr.step_key()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, y) in enumerate(loader):
            tr.stepper(key, x, y)
            if i == 4:
                break
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(tr._sums).all()


def test_captured_attack_agrees_with_eager():
    from architectures import build_split_model
    from attacks.decoder import DecoderAttack
    from datasets import TensorSplit

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(600, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (600,), generator=g)
    fit, held, ev = TensorSplit(x[:450], y[:450]), TensorSplit(x[450:500], y[450:500]), TensorSplit(x[500:], y[500:])
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1").to(GPU).eval()
    res = {}
    for mode in ("off", "on"):
        att = DecoderAttack("res_normN1C16", epochs=3, batch_size=64, device=GPU, progress=False, capture=mode)
        res[mode] = att.run(model, lambda z: z + 0.05 * torch.randn_like(z), fit, held, ev,
                            (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    a, b = res["off"].final["mse_mean"], res["on"].final["mse_mean"]
    assert abs(a - b) <= 0.05 * a, (a, b)


def test_pruning_under_capture_recaptures_and_keeps_training(tmp_path):
    """PATROL on CUDA with whole-step capture: the pruned model gets fresh graphs, the loss stays finite."""
    from architectures import build_split_model
    from datasets import load_dataset
    from defenses import build_defenses
    from model_training import Trainer, TrainSettings

    b = load_dataset("digits", str(tmp_path), select_on="test")
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, b.num_classes, b.image_size, "noRELU_C8S1",
                              extra_device_layer=True)
    # no CEM and a constant lr: only the pruning can change the step's key
    d = build_defenses({"regularization": "Gaussian_kl", "regularization_strength": 0.05, "lambd": 0,
                        "var_threshold": 0.125, "arch": "vgg11_bn_sgm", "num_epochs": 4,
                        "AT_regularization": "pruning3", "AT_regularization_strength": 1.0},
                       b.num_classes, len(b.train))
    tr = Trainer(model, b, d, GPU, tmp_path / "run", TrainSettings(num_epochs=4, capture="on", milestones="none"),
                 progress=False, log=lambda m: None)
    captures = []
    for e in range(4):  # epoch 1 runs eagerly (lr warm-up), 2 is captured, 3 starts with the pruning
        tr.defenses.on_epoch_start(tr, e)
        stats = tr.train_epoch(e)
        tr.defenses.on_epoch_end(tr)
        captures.append(tr.stepper.captures)
        assert torch.isfinite(torch.tensor(stats["train_loss"])), stats
    assert tr.model.encoder.layer1[0].out_channels == 60 and tr.model.encoder.layer3[0].out_channels == 121
    assert tr.stepper.failed is None and captures[3] == captures[2] > captures[1] >= 1  # recaptured once, after pruning
    assert all(p.is_cuda for p in tr.model.parameters())
