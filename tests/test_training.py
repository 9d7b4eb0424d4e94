"""Trainer, run folders, resume and gradient routing (DESIGN.md §6.4, §7)."""
import csv
import json

import pytest
import torch
import torch.nn.functional as F

import model_training
from architectures import build_split_model
from defenses import build_defenses
from lifecycle.experiment import run_experiment
from main_MIA import build_parser


def cfg_for(tmp_path, **over):
    cfg = vars(build_parser().parse_args([]))
    cfg.pop("no_progress")
    cfg.update(dataset="digits", data_root=str(tmp_path / "data"), folder=str(tmp_path / "runs"),
               num_epochs=3, batch_size=64, limit_train=192, limit_test=64, no_attack=True,
               device="cpu", filename="r", lambd=16.0, regularization_strength=0.05, cem_lr_coupling="none")
    cfg.update(over)
    return cfg


def test_cem_gradient_reaches_encoder_not_server():
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, 3, 32, "noRELU_C8S1")
    cfg = {"regularization": "Gaussian_kl", "regularization_strength": 0.05, "lambd": 16.0,
           "var_threshold": 0.125, "arch": "vgg11_bn_sgm", "cem_lr_coupling": "none"}
    defenses = build_defenses(cfg, num_classes=3, n_train=60)
    x, y = torch.randn(60, 3, 32, 32), torch.arange(60) % 3
    model.eval()
    with torch.no_grad():
        defenses.find("cem").refresh(model.encoder(x).flatten(1), y)
    model.train()

    def grads(with_cem):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # same noise draw in both passes
        z = model.encoder(x[:32])
        loss = F.cross_entropy(model.server_forward(defenses.obfuscate(z, True)), y[:32])
        if with_cem:
            extra = defenses.encoder_loss(z, x[:32], y[:32], lr=0.05)
            assert extra is not None and float(extra.detach()) > 0
            loss = loss + extra
        loss.backward()
        enc = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
        server_params = list(model.server.parameters()) + list(model.classifier.parameters())
        srv = torch.cat([p.grad.flatten() for p in server_params])
        return enc, srv

    enc0, srv0 = grads(False)
    enc1, srv1 = grads(True)
    assert torch.equal(srv0, srv1), "the server must see only the task loss"
    assert (enc0 - enc1).abs().max() > 1e-6, "CEM must change the encoder's gradient"


def test_milestones_scale_with_epochs():
    assert model_training.milestones(240) == [60, 120, 180, 210]
    assert model_training.milestones(10) == [2, 5, 8, 9]
    assert model_training.scheduled_lr(0.05, 0, 240) == 0.05
    assert model_training.scheduled_lr(0.05, 120, 240) == pytest.approx(0.05 * 0.04)
    assert model_training.milestones(2) == [2]
    assert model_training.milestones(8, "none") == []
    assert model_training.milestones(8, "3,6") == [3, 6]
    from utils import UserError
    with pytest.raises(UserError, match="milestones"):
        model_training.milestones(8, "soon")


def test_lr_schedule_matches_paper_one_based():
    # the paper steps MultiStepLR with 1-based epochs: epoch 60 (counting from 1) already runs at 0.01
    expected = {59: 0.05, 60: 0.01, 61: 0.01, 119: 0.01, 120: 0.002, 121: 0.002, 179: 0.002, 180: 4e-4,
                181: 4e-4, 209: 4e-4, 210: 8e-5, 211: 8e-5}
    for epoch_1based, lr in expected.items():
        got = model_training.scheduled_lr(0.05, epoch_1based - 1, 240)  # the trainer's index is 0-based
        assert got == pytest.approx(lr, rel=1e-9), f"epoch {epoch_1based}: lr {got}, paper {lr}"


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_after_kill_mid_epoch_matches_uninterrupted(tmp_path, monkeypatch):
    full = run_experiment(cfg_for(tmp_path, filename="full"), progress=False)
    assert full["status"] == "finished" and full["train"]["epochs_done"] == 3

    original = model_training.Trainer.train_epoch

    def killed(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies inside epoch 3
        return original(self, epoch)

    monkeypatch.setattr(model_training.Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg_for(tmp_path, filename="killed"), progress=False)
    monkeypatch.setattr(model_training.Trainer, "train_epoch", original)
    run_dir = tmp_path / "runs" / "killed"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    with open(run_dir / "train_log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2  # finished epochs are kept

    from utils import UserError
    with pytest.raises(UserError, match="--resume"):
        run_experiment(cfg_for(tmp_path, filename="killed"), progress=False)
    done = run_experiment(cfg_for(tmp_path, filename="killed", resume=True), progress=False)
    assert done["status"] == "finished"
    a = _weights(tmp_path / "runs" / "full" / "checkpoints" / "last.pt")
    b = _weights(run_dir / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with open(run_dir / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "runs" / "full" / "train_log.csv") as f:
        ref = list(csv.DictReader(f))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref]
    assert rows[-1]["cem_loss"] != "" and rows[0]["cem_loss"] == ""  # CEM starts in epoch 2


def test_run_folder_outputs_and_finished_run_not_redone(tmp_path, capsys):
    cfg = cfg_for(tmp_path, num_epochs=1, lambd=0.0, filename=None)
    m = run_experiment(cfg, progress=False)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and "digits" in runs[0].name and "lambd0" in runs[0].name
    d = runs[0]
    for name in ("config.json", "metrics.json", "train_log.csv", "log.txt", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (d / name).exists(), name
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["status"] == "finished" and 0 <= saved["train"]["test_acc"] <= 100
    assert saved["config"]["feature_shape"] == [8, 8, 8]
    stamp = (d / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = run_experiment(cfg, progress=False)
    assert "already finished" in capsys.readouterr().out
    assert again == m and (d / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_resume_refuses_changed_settings(tmp_path, monkeypatch):
    original = model_training.Trainer.train_epoch

    def killed(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(model_training.Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg_for(tmp_path, lambd=0.0), progress=False)
    monkeypatch.setattr(model_training.Trainer, "train_epoch", original)
    from utils import UserError
    with pytest.raises(UserError, match="learning_rate"):
        run_experiment(cfg_for(tmp_path, lambd=0.0, resume=True, learning_rate=0.1), progress=False)


def _trainer(tmp_path, **over):
    from lifecycle.experiment import _load_everything

    cfg = cfg_for(tmp_path, **over)
    bundle, model, defenses, _ = _load_everything(cfg, torch.device("cpu"))
    settings = model_training.TrainSettings(num_epochs=3, batch_size=64, seed=cfg["random_seed"])
    return model_training.Trainer(model, bundle, defenses, torch.device("cpu"), tmp_path / "run", settings,
                                  progress=False, log=lambda m: None)


def _refresh_inputs(trainer):
    seen = []
    hook = trainer.model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    trainer.defenses.on_epoch_end(trainer)
    hook.remove()
    return torch.cat(seen)


def test_cem_refresh_sees_augmented_images_by_default(tmp_path):
    trainer = _trainer(tmp_path)
    plain = torch.cat([x for x, _ in trainer.plain_train_loader])
    first = _refresh_inputs(trainer)
    assert first.shape == plain.shape and not torch.allclose(first, plain), "refresh must see augmented images"
    assert torch.equal(_refresh_inputs(trainer), first), "same epoch, same augmentation (exact resume)"
    trainer.epoch = 1
    assert not torch.equal(_refresh_inputs(trainer), first), "a fresh augmentation each epoch"
    off = _trainer(tmp_path, cem_refresh_aug=0)
    assert torch.equal(_refresh_inputs(off), plain), "--cem_refresh_aug 0 fits on un-augmented images"


def test_feature_pass_and_evaluation_run_the_folded_encoder(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train_epoch(0)  # BatchNorm statistics away from their initial values
    z, _ = trainer.train_features()
    assert trainer._eval_encoder.folded, "the eval passes should run BatchNorm folded into the convs"
    with torch.no_grad():
        want = torch.cat([trainer.model.encoder(x).flatten(1) for x, _ in trainer.plain_train_loader])
    assert torch.allclose(z, want, atol=2e-5, rtol=1e-4)
    trainer.evaluate(trainer.test_loader)
    assert trainer._eval_encoder.folded


def test_select_on_test_keeps_best_of_last_epochs_and_resumes_exactly(tmp_path, monkeypatch):
    assert model_training.best_resets(240) == [40, 100, 200]
    assert model_training.best_resets(12) == [2, 5, 10]
    accs = [50, 60, 55, 40, 45, 70, 30, 35, 20, 25, 10, 15]  # per 1-based epoch 1..12

    def make(select_on, name):
        from lifecycle.experiment import _load_everything

        cfg = cfg_for(tmp_path, arch="resnet20_std", cutlayer=1, bottleneck_option="None", lambd=0.0)
        bundle, model, defenses, _ = _load_everything(cfg, torch.device("cpu"))
        s = model_training.TrainSettings(num_epochs=12, batch_size=64, select_on=select_on)
        (tmp_path / name).mkdir(exist_ok=True)
        t = model_training.Trainer(model, bundle, defenses, torch.device("cpu"), tmp_path / name, s,
                                   progress=False, log=lambda m: None)
        monkeypatch.setattr(t, "train_epoch", lambda e: {"lr": 0.05, "train_loss": 1.0, "train_acc": 0.0,
                                                         "cem_term": 0.0, "other_defense_term": 0.0})
        monkeypatch.setattr(t, "evaluate", lambda loader: float(accs[t.epoch]))
        return t

    assert make("val", "v").fit()["best_epoch"] == 6
    assert make("test", "t").fit()["best_epoch"] == 12   # reset after epoch 10: best of 11..12
    first = make("test", "r")
    first.fit(stop_after=11)
    assert first.best["epoch"] == 11
    again = make("test", "r")
    assert again.resume() and again.fit()["best_epoch"] == 12


def test_cem_column_holds_cem_alone_beside_another_encoder_term(tmp_path, monkeypatch):
    """With NoPeek + CEM, train_log.csv's cem_loss is CEM's term; NoPeek's goes to the log line."""
    from defenses.nopeek import NoPeek

    monkeypatch.setattr(NoPeek, "encoder_loss", lambda self, z, x, y, lr: z.new_tensor(1000.0))
    cfg = cfg_for(tmp_path, num_epochs=2, AT_regularization="nopeek", AT_regularization_strength=1.0)
    run_experiment(cfg, progress=False)
    run_dir = tmp_path / "runs" / "r"
    with open(run_dir / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    cem = float(rows[1]["cem_loss"])  # epoch 2: CEM is on
    assert 0 < cem < 20, rows[1]  # 1000/16 and more if NoPeek's term were counted in
    assert "encoder_loss_other 1000" in (run_dir / "log.txt").read_text()


def test_no_grad_passes_use_larger_batches_only_on_cuda():
    nb = model_training.no_grad_batch_size
    assert nb(torch.device("cpu"), 32) == 512 and nb("mps", 32) == 512  # the CPU path is unchanged
    assert nb(torch.device("cuda"), 32) == 2048 and nb("cuda:1", 64) == 512  # same pixels per batch
    assert nb("cuda", 16) == 8192 and nb("cuda", 224) == 512


def test_refresh_features_do_not_depend_on_the_no_grad_batch(tmp_path, monkeypatch):
    first = _trainer(tmp_path)
    ref, _ = first.train_features(augment=True)
    monkeypatch.setattr(model_training, "no_grad_batch_size", lambda device, size: 50)
    other = _trainer(tmp_path)
    other.model.load_state_dict(first.model.state_dict())
    assert other.aug_train_loader.batch_size == 50 != first.aug_train_loader.batch_size
    z, _ = other.train_features(augment=True)
    assert torch.allclose(z, ref, atol=2e-5, rtol=1e-4), "same images, same augmentations, any batch"


def test_checkpoints_every_n_seconds_stay_consistent_and_resume_exactly(tmp_path, monkeypatch):
    full = run_experiment(cfg_for(tmp_path, filename="full", num_epochs=4), progress=False)  # every epoch (CPU)
    clock, writes = {"t": 0.0}, []
    monkeypatch.setattr(model_training.time, "perf_counter", lambda: clock["t"])
    real_save, original = model_training.torch_save_atomic, model_training.Trainer.train_epoch

    def save(obj, path):
        writes.append((path.name, obj["epoch"]))
        real_save(obj, path)

    def epoch_of_20s(self, epoch, kill_at=None):
        clock["t"] += 20.0
        if epoch == kill_at:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(model_training, "torch_save_atomic", save)
    monkeypatch.setattr(model_training.Trainer, "train_epoch", lambda s, e: epoch_of_20s(s, e, kill_at=3))
    cfg = cfg_for(tmp_path, filename="sparse", num_epochs=4, checkpoint_seconds=30)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, progress=False)
    # epochs end at 20, 40, 60 s: only epoch 2 is 30 s past the start; epoch 3 only 20 s past that save
    assert [e for n, e in writes if n == "last.pt"] == [2]
    assert all(n == "last.pt" or writes[i + 1][0] == "last.pt" for i, (n, _) in enumerate(writes)), \
        "best.pt is written only together with last.pt, so both describe the same moment"
    run_dir = tmp_path / "runs" / "sparse"
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == last["best"]["epoch"] <= 2
    monkeypatch.setattr(model_training.Trainer, "train_epoch", epoch_of_20s)
    done = run_experiment({**cfg, "resume": True}, progress=False)
    assert done["status"] == "finished" and [e for n, e in writes if n == "last.pt"] == [2, 4]  # 3: 20 s after 2
    for name in ("last.pt", "best.pt"):
        a, b = _weights(tmp_path / "runs" / "full" / "checkpoints" / name), _weights(run_dir / "checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert done["train"]["test_acc"] == full["train"]["test_acc"]
    with open(run_dir / "train_log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]  # epoch 3's first row was dropped


def test_checkpoint_seconds_default_depends_on_the_device(tmp_path):
    assert _trainer(tmp_path).checkpoint_seconds == 0  # CPU: every epoch
    with pytest.raises(Exception, match="checkpoint_seconds"):
        run_experiment(cfg_for(tmp_path, checkpoint_seconds=-1.0), progress=False)
