"""PATROL (`pruningE`, DESIGN.md §5): extra device layer, channel pruning, checkpoints of pruned runs."""
import csv
import gc
import json
import math
import warnings

import pytest
import torch
from conftest import SHARED_DATA

from architectures import architecture_record, build_split_model, load_split_state
from defenses import build_defenses, extra_device_layer
from defenses.pruning import prune_encoder
from lifecycle.experiment import _load_everything, run_experiment
from lifecycle.trained_run import load_trained_run
from main_MIA import build_parser
from model_training import Trainer, TrainSettings
from utils import UserError

LAYOUTS = SHARED_DATA / "official_ckpt_layouts"


def _batches(image_size, n=2, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, image_size, image_size, generator=g), torch.randint(0, classes, (16,), generator=g))
            for _ in range(n)]


def _patrol_layouts():
    if not LAYOUTS.is_dir():
        pytest.skip(f"{LAYOUTS} not found: set CEM_DATA_ROOT to the shared data folder")
    return sorted(LAYOUTS.glob("*__PATROL.json"))


def _client_entry(layout):
    return next(f for f in layout["files"] if f["file"].startswith("checkpoint_f"))


def test_extra_layer_follows_the_option():
    on = {"AT_regularization": "pruning180", "AT_regularization_strength": 1.0}
    assert extra_device_layer(on)
    assert not extra_device_layer(dict(on, AT_regularization_strength=0.0))  # strength 0 disables all
    assert not extra_device_layer(dict(on, AT_regularization="dropout0.2"))


def test_vgg_cut1_gets_no_extra_layer_and_resnet_keeps_its_cut():
    plain = build_split_model("vgg11_bn_sgm", 1, 10, 32, "None")
    assert not build_split_model("vgg11_bn_sgm", 1, 10, 32, "None", extra_device_layer=True).extra_device_layer
    m = build_split_model("resnet20", 5, 10, 64, "noRELU_C8S1", extra_device_layer=True)
    assert list(m.encoder)[1] is m.encoder.extra and m.feature_shape == (8, 16, 16)
    assert plain.feature_shape == (64, 32, 32)


@pytest.mark.usefixtures("one_thread")
def test_extra_layer_and_pruned_shapes_match_the_published_patrol_layouts():
    for path in _patrol_layouts():
        layout = json.loads(path.read_text())
        st = layout["settings"]
        entry = _client_entry(layout)
        model = build_split_model(st["arch"], st["cutlayer"], st["num_class"], st["image_size"],
                                  st["bottleneck_option"], extra_device_layer=True)
        ours = [list(v.shape) for v in model.encoder.state_dict().values()]
        assert ours == [s for _, s in entry["keys_before_pruning"]], path.name
        plain = build_split_model(st["arch"], st["cutlayer"], st["num_class"], st["image_size"],
                                  st["bottleneck_option"])
        assert model.feature_shape == plain.feature_shape == tuple(layout["smashed_data_shape_per_image"])
        assert all(a.shape == b.shape for a, b in zip(model.server.state_dict().values(),
                                                      plain.server.state_dict().values()))
        # channel counts do not depend on the data (which channels go does): 64->60, 128->121 / 64->60
        prune_encoder(model, _batches(st["image_size"], n=1, classes=st["num_class"]))
        pruned = [list(v.shape) for v in model.encoder.state_dict().values()]
        assert pruned == [s for _, s in entry["keys"]], path.name


@pytest.mark.usefixtures("one_thread")
def test_pruning_removes_whole_channels_consistently_and_keeps_z():
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1", extra_device_layer=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = prune_encoder(model, _batches(32))
    assert counts == {"encoder.layer1.0": (64, 60), "encoder.layer3.0": (128, 121)}
    w0, w = before["encoder.layer1.0.weight"], model.encoder.layer1[0].weight.detach()
    # every kept filter is an original one, and BN and the next conv's inputs keep the same channels
    kept = [int((w0 - row).flatten(1).abs().sum(1).argmin()) for row in w]
    assert len(set(kept)) == 60 and all(torch.equal(w0[k], row) for k, row in zip(kept, w))
    assert torch.equal(model.encoder.layer1[1].running_var, before["encoder.layer1.1.running_var"][kept])
    assert model.encoder.layer3[0].weight.shape[1] == 60
    assert torch.equal(model.encoder.layer3[0].weight,
                       before["encoder.layer3.0.weight"][:, kept][[
                           int((before["encoder.layer3.0.weight"][:, kept] - r).flatten(1).abs().sum(1).argmin())
                           for r in model.encoder.layer3[0].weight.detach()]])
    # the untouched layers (<= 32 channels: the extra layer and the bottleneck) keep their shapes
    assert model.encoder.extra[0].out_channels == 16 and model.encoder.bottleneck[0].out_channels == 8
    assert model.encoder(torch.zeros(2, 3, 32, 32)).shape[1:] == model.feature_shape
    assert all(p.grad is None for p in model.parameters())


def _graph_tensors():
    """Ids of live tensors that belong to an autograd graph, unreachable cycles included."""
    with warnings.catch_warnings():  # isinstance() on torch.distributed's deprecated reduce_op warns
        warnings.simplefilter("ignore", FutureWarning)
        return {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None}


@pytest.mark.usefixtures("one_thread")
def test_pruning_leaves_no_autograd_graph_alive():
    """torch-pruning's trace makes reference cycles that hold an autograd graph of the model; on CUDA its
    gradient accumulators (default stream) broke the recapture of the training step after pruning."""
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1", extra_device_layer=True)
    gc.collect()
    before = _graph_tensors()
    prune_encoder(model, _batches(32))
    assert not _graph_tensors() - before  # without a gc pass of the test's own


def test_checkpoint_record_rebuilds_a_pruned_model_and_rejects_others():
    torch.manual_seed(0)
    model = build_split_model("resnet20", 5, 10, 32, "noRELU_C8S1", extra_device_layer=True)
    prune_encoder(model, _batches(32))
    rec = architecture_record(model)
    assert rec["extra_device_layer"] and rec["shapes"]["encoder.layer5.conv1.weight"] == [60, 32, 3, 3]
    assert json.loads(json.dumps(rec)) == rec  # plain data, no pickled module
    ck = {"model": model.state_dict(), "architecture": rec}
    fresh = build_split_model("resnet20", 5, 10, 32, "noRELU_C8S1", extra_device_layer=True)
    load_split_state(fresh, ck)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model.eval()(x), fresh.eval()(x))
    # back to the built shapes when a checkpoint from before pruning is loaded into a pruned model
    load_split_state(fresh, {"model": build_split_model("resnet20", 5, 10, 32, "noRELU_C8S1",
                                                        extra_device_layer=True).state_dict(),
                             "architecture": {"extra_device_layer": True, "shapes": {}}})
    assert fresh.encoder.layer5.conv1.out_channels == 64
    with pytest.raises(UserError, match="extra device layer"):
        load_split_state(build_split_model("resnet20", 5, 10, 32, "noRELU_C8S1"), ck)


def cfg_for(tmp_path, **over):
    cfg = vars(build_parser().parse_args([]))
    cfg.pop("no_progress")
    # no noise: test accuracy is then a deterministic function of the weights
    cfg.update(dataset="digits", data_root=str(tmp_path / "data"), folder=str(tmp_path / "runs"),
               num_epochs=2, batch_size=32, limit_train=64, limit_test=64, no_attack=True, device="cpu",
               filename="r", lambd=0.0, regularization="None", regularization_strength=0.0,
               AT_regularization="pruning1", AT_regularization_strength=1.0, milestones="none")
    cfg.update(over)
    return cfg


def _test_acc(run_dir):
    """Test accuracy of the best checkpoint, rebuilt the way --attack_only and every attack rebuild it."""
    tr = load_trained_run(run_dir, device="cpu")
    trainer = Trainer(tr.model, tr.bundle, tr.defenses, tr.device, run_dir / "scratch",
                      TrainSettings(num_epochs=1), progress=False)
    return trainer.evaluate(trainer.test_loader)


def test_pruned_run_trains_on_resumes_exactly_and_reloads_exactly(tmp_path):
    full = run_experiment(cfg_for(tmp_path, filename="full"), progress=False)
    runs = tmp_path / "runs"
    assert full["train"]["pruned_channels"] == {"encoder.layer1.0": [64, 60], "encoder.layer3.0": [128, 121]}
    with open(runs / "full" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert "pruned the encoder at the start of epoch 1" in (runs / "full" / "log.txt").read_text()

    # killed after the pruned epoch 1: resume must rebuild the pruned shapes and the optimizer
    run_experiment(cfg_for(tmp_path, filename="killed"), progress=False, stop_after=1)
    done = run_experiment(cfg_for(tmp_path, filename="killed", resume=True), progress=False)
    assert done["train"]["test_acc"] == full["train"]["test_acc"]
    a = torch.load(runs / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(runs / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    assert _test_acc(runs / "full") == full["train"]["test_acc"]
    again = run_experiment(cfg_for(tmp_path, filename="full", attack_only=True, attack_epochs=1,
                                   attack_modes="train_time", gan_AE_type="res_normN1C16"), progress=False)
    assert again["status"] == "finished" and "train_time" in again["attack"]["decoder"]


def test_bad_pruning_epoch_is_a_clear_error():
    cfg = {"regularization": "None", "regularization_strength": 0.0, "lambd": 0.0, "arch": "vgg11_bn_sgm",
           "AT_regularization": "pruning180", "AT_regularization_strength": 1.0, "num_epochs": 3}
    with pytest.raises(UserError, match="pruning epoch 180 is after the last epoch"):
        build_defenses(cfg, 10, 100)
    with pytest.raises(UserError, match="must be >= 1"):
        build_defenses(dict(cfg, AT_regularization="pruning0"), 10, 100)


def test_structure_change_rebuilds_optimizer_resets_best_and_calls_hooks(tmp_path):
    cfg = cfg_for(tmp_path, AT_regularization="pruning2")
    bundle, model, defenses, _ = _load_everything(cfg, torch.device("cpu"))
    trainer = Trainer(model, bundle, defenses, torch.device("cpu"), tmp_path / "run",
                      TrainSettings(num_epochs=2, batch_size=32), progress=False, log=lambda m: None)
    calls = []
    trainer.structure_hooks.append(lambda: calls.append(1))
    trainer.best = {"acc": 50.0, "epoch": 1}
    defenses.on_epoch_start(trainer, 0)  # epoch 1: nothing to do yet
    assert calls == [] and trainer.best["acc"] == 50.0
    defenses.on_epoch_start(trainer, 1)  # start of epoch 2: prune
    assert calls == [1] and trainer.best == {"acc": -1.0, "epoch": 0}
    in_opt = {id(p) for g in trainer.opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    assert defenses.find("pruning").state_dict()["pruned"]["encoder.layer1.0"] == [64, 60]


@pytest.mark.parametrize("mode", ["rebuild", "published"])
def test_patrol_optimizer_published_stops_training_the_replaced_tensors(tmp_path, mode):
    """The published code's optimizer keeps the pre-pruning tensors: with `published` the pruned layers
    stop training (and the survivors keep their momentum); with `rebuild` everything trains on."""
    cfg = cfg_for(tmp_path, AT_regularization="pruning2", patrol_optimizer=mode)
    bundle, model, defenses, _ = _load_everything(cfg, torch.device("cpu"))
    trainer = Trainer(model, bundle, defenses, torch.device("cpu"), tmp_path / "run",
                      TrainSettings(num_epochs=2, batch_size=32), progress=False, log=lambda m: None)
    x, y = next(iter(trainer.train_loader))
    trainer._step(x, y)  # epoch 1: every tensor gets a momentum buffer
    defenses.on_epoch_start(trainer, 1)  # start of epoch 2: prune
    enc = model.encoder
    pruned, survivor = enc.layer1[0].weight, enc.extra[0].weight  # 64 -> 60 channels; 16, never pruned
    before = pruned.detach().clone(), survivor.detach().clone()
    momentum = trainer.opt.state.get(survivor, {}).get("momentum_buffer")
    trainer._step(x, y)
    assert not torch.equal(survivor, before[1])
    if mode == "published":
        assert torch.equal(pruned, before[0])
        assert {"encoder.layer1.0.weight", "encoder.layer3.0.weight", "encoder.bottleneck.0.weight"} <= trainer.frozen
        assert "encoder.extra.0.weight" not in trainer.frozen and momentum is not None
    else:
        assert not torch.equal(pruned, before[0])
        assert trainer.frozen == set() and momentum is None


def test_published_patrol_optimizer_resumes_exactly(tmp_path):
    over = dict(AT_regularization="pruning1", patrol_optimizer="published")
    full = run_experiment(cfg_for(tmp_path, filename="full", **over), progress=False)
    run_experiment(cfg_for(tmp_path, filename="killed", **over), progress=False, stop_after=1)
    done = run_experiment(cfg_for(tmp_path, filename="killed", resume=True, **over), progress=False)
    assert done["train"]["test_acc"] == full["train"]["test_acc"]
    a = torch.load(tmp_path / "runs" / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["frozen"] == b["frozen"] and "encoder.layer1.0.weight" in a["frozen"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
