"""tools.import_official: published files (generated from the layouts by the fixtures' rule) become a
run folder whose model reproduces the golden forward pass; every bad input is one line and exit 2."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import SHARED_DATA

from tools.official_ckpt import ALLOWED_GLOBALS
from tools.official_layout import LAYOUT_DIR, PARTS, generate_weights, layout_file, read_layout
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
CIFAR = SHARED_DATA / "cifar10_subset"
RUN_NAME = ("pretrain_False_lambd_16_noise_0.025_epoch_240_bottleneck_noRELU_C8S1_log_1_ATstrength_0_lr_0.05"
            "_varthres_0.125")
GOLDEN = {"a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1": None,
          "c_cifar100_vgg11_bn_sgm_cut3_noRELU_C8S1": None,
          "e_facescrub_vgg11_bn_sgm_cut4_noRELU_C8S1": None,
          "d_tinyimagenet_resnet20_cut5_noRELU_C8S1": None}


def _layout(config):
    path = layout_file(SHARED_DATA, config)
    if not path.exists():
        pytest.skip(f"{path} not found: set CEM_DATA_ROOT to the shared data folder holding {LAYOUT_DIR}/")
    return read_layout(path)


def publish(config, where: Path, epoch="best", edit=None):
    """Writes checkpoint_{f,cloud,classifier}_<epoch>.tar as the published code saves them (bare state_dicts)."""
    layout = _layout(config)
    files, x = generate_weights(layout)
    if edit:
        edit(files)
    where.mkdir(parents=True, exist_ok=True)
    for stem, _ in PARTS:
        torch.save(files[stem], where / f"{stem}_{epoch}.tar")
    return layout, x


def fake_npz(tmp_path, classes, size):
    """A tiny dataset with the published model's class count and image size (accuracy is not the point)."""
    rng = np.random.default_rng(0)
    n = 2 * classes
    path = tmp_path / f"fake{classes}_{size}.npz"
    np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=np.arange(n) % classes)
    return f"npz:{path},0.5"


def cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "tools.import_official", *map(str, args), "--no_progress",
                           "--device", "cpu"], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def one_error_line(r, *fragments):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize("config", list(GOLDEN))
def test_import_reproduces_golden_forward(config, tmp_path):
    from lifecycle.trained_run import load_trained_run
    from tools.import_official import build_parser, import_official

    s = _layout(config)["settings"]
    golden = json.loads(layout_file(SHARED_DATA, f"golden_{config}").read_text())
    ckpt = tmp_path / "saves" / RUN_NAME
    _, x = publish(config, ckpt)
    if s["dataset"] == "cifar10" and CIFAR.exists():
        data = ["--dataset", "cifar10", "--data_root", SHARED_DATA, "--limit_test", "200"]
    else:
        data = ["--dataset", fake_npz(tmp_path, s["num_class"], s["image_size"]), "--data_root", tmp_path,
                "--limit_test", "20"]
    args = build_parser().parse_args([str(ckpt), *map(str, data), "--arch", s["arch"], "--cutlayer", str(s["cutlayer"]),
                                      "--folder", str(tmp_path / "runs"), "--filename", "imp", "--device", "cpu"])
    metrics = import_official(args, progress=False)
    assert metrics["status"] == "finished" and 0 <= metrics["train"]["test_acc"] <= 100
    run = tmp_path / "runs" / "imp"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["regularization_strength"] == 0.025 and cfg["lambd"] == 16 and cfg["bottleneck_option"] == "noRELU_C8S1"
    mapping = json.loads((run / "import_map.json").read_text())["mapping"]
    assert sum(len(v) for v in mapping.values()) == sum(len(e["keys"]) for e in _layout(config)["files"])

    tr = load_trained_run(run, device="cpu")  # the loader every attack uses: strict, eval mode
    with torch.no_grad():
        z = tr.model.encoder(x)
        logits = tr.model.server_forward(z)
    assert torch.allclose(z, torch.tensor(golden["z"]), rtol=1e-5, atol=1e-6)
    assert torch.allclose(logits, torch.tensor(golden["logits"]), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.exists(), reason=f"{CIFAR} not found: set CEM_DATA_ROOT to the shared data folder")
def test_cli_import_then_attack_only(tmp_path):
    config = "a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1"
    ckpt = tmp_path / RUN_NAME
    publish(config, ckpt)
    common = ("--folder", tmp_path / "runs", "--filename", "imp")
    r = cli(ckpt, "--dataset", "cifar10", "--data_root", SHARED_DATA, "--limit_test", "100", *common)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "--attack_only" in r.stdout
    r = cli(ckpt, "--dataset", "cifar10", "--data_root", SHARED_DATA, *common)
    one_error_line(r, "already exists", "--force")
    r = subprocess.run([sys.executable, "main_MIA.py", "--attack_only", "--folder", str(tmp_path / "runs"),
                        "--filename", "imp", "--attack_epochs", "1", "--attack_modes", "infer_time",
                        "--data_root", str(SHARED_DATA), "--device", "cpu", "--no_progress"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "runs" / "imp" / "metrics.json").read_text())
    assert metrics["attack"]["decoder"]["infer_time"]["final"]["mse_mean"] > 0


def test_wrong_shape_is_one_line(tmp_path):
    config = "a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1"

    def shrink(files):
        files["checkpoint_cloud"]["1.weight"] = files["checkpoint_cloud"]["1.weight"][:, :64]
    publish(config, tmp_path / RUN_NAME, edit=shrink)
    r = cli(tmp_path / RUN_NAME, "--dataset", fake_npz(tmp_path, 10, 32), "--data_root", tmp_path,
            "--folder", tmp_path / "runs")
    one_error_line(r, "checkpoint_cloud", "'1.weight'", "(256, 64, 3, 3)")
    assert not (tmp_path / "runs").exists(), "nothing is written for a file that does not fit"


def test_missing_file_and_wrong_epoch(tmp_path):
    config = "a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1"
    publish(config, tmp_path / RUN_NAME)
    (tmp_path / RUN_NAME / "checkpoint_classifier_best.tar").unlink()
    one_error_line(cli(tmp_path / RUN_NAME, "--dataset", "cifar10"), "checkpoint_classifier_best.tar", "missing")
    one_error_line(cli(tmp_path / "nowhere", "--dataset", "cifar10"), "does not exist")


@pytest.mark.parametrize("config", ["a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1",
                                    "d_tinyimagenet_resnet20_cut5_noRELU_C8S1"])
def test_sca_import_reproduces_the_published_sca_encoder(config, tmp_path):
    from lifecycle.trained_run import load_trained_run
    from tools.import_official import build_parser, import_official

    layout = _layout(f"{config}__SCA")
    s = layout["settings"]
    files, x = generate_weights(layout)
    ckpt = tmp_path / RUN_NAME.replace("ATstrength_0", "ATstrength_0.3")
    ckpt.mkdir()
    for stem, _ in PARTS:
        torch.save(files[stem], ckpt / f"{stem}_best.tar")
    args = build_parser().parse_args([str(ckpt), "--dataset", fake_npz(tmp_path, s["num_class"], s["image_size"]),
                                      "--data_root", str(tmp_path), "--limit_test", "8", "--arch", s["arch"],
                                      "--cutlayer", str(s["cutlayer"]), "--folder", str(tmp_path / "runs"),
                                      "--filename", "imp", "--device", "cpu"])
    metrics = import_official(args, progress=False)
    assert metrics["imported_from"]["variant"] == "SCA"
    cfg = json.loads((tmp_path / "runs" / "imp" / "config.json").read_text())
    assert (cfg["AT_regularization"], cfg["AT_regularization_strength"]) == ("SCA_new", 0.3)
    tr = load_trained_run(tmp_path / "runs" / "imp", device="cpu")  # rebuilt with its SCA layer, strictly
    golden = json.loads((REPO / "tests" / "fixtures" / "golden_sca.json").read_text())
    ref = next(e for e in golden["encoders"] if e["config"] == config)["z"]
    with torch.no_grad():
        z = tr.model.encoder(x).double()
    assert list(z.shape) == ref["shape"] and z.abs().sum().item() == pytest.approx(ref["abs_sum"], rel=1e-5)
    assert torch.allclose(z.flatten()[:64], torch.tensor(ref["head"], dtype=torch.float64), rtol=1e-5, atol=1e-6)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_forbidden_class_is_refused_without_running_it(tmp_path):
    config = "a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1"
    ckpt = tmp_path / RUN_NAME
    publish(config, ckpt)
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()), ckpt / "checkpoint_f_best.tar")  # GELU: not listed
    one_error_line(cli(ckpt, "--dataset", "cifar10", cwd=tmp_path), "torch.nn.modules.activation.GELU", "refusing")
    with open(ckpt / "checkpoint_f_best.tar", "wb") as fh:
        pickle.dump(Evil(), fh, protocol=2)  # a legacy-format pickle calling os.system
    one_error_line(cli(ckpt, "--dataset", "cifar10", cwd=tmp_path), "refusing")
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def test_non_finite_weights_are_refused(tmp_path):
    """A NaN server used to import as a 'finished' run scoring chance accuracy; now nothing is written."""
    config = "a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1"

    def poison(files):
        files["checkpoint_cloud"]["1.weight"].view(-1)[5] = float("nan")
    publish(config, tmp_path / RUN_NAME, edit=poison)
    r = cli(tmp_path / RUN_NAME, "--dataset", fake_npz(tmp_path, 10, 32), "--data_root", tmp_path,
            "--folder", tmp_path / "runs")
    one_error_line(r, "checkpoint_cloud_best.tar", "'1.weight'", "1 non-finite value")
    assert not (tmp_path / "runs").exists()
    # every part, either file kind: an inf in a bare state_dict, a NaN in a pickled (PATROL) module
    from tools.official_ckpt import read_published_file

    torch.save({"1.bias": torch.tensor([0.0, float("inf")])}, tmp_path / "head.tar")
    module = nn.Sequential(nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        module[0].bias[1] = float("nan")
    torch.save(module, tmp_path / "encoder.tar")
    for name, key in (("head.tar", "'1.bias'"), ("encoder.tar", "'0.bias'")):
        with pytest.raises(UserError, match=f"{name}: tensor {key} holds 1 non-finite"):
            read_published_file(tmp_path / name)


def test_malformed_patrol_module_is_one_line(tmp_path):
    """Only allowed classes, but a parameter that is not a tensor: the module's state_dict() raises."""
    config = "a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1"
    ckpt = tmp_path / RUN_NAME
    publish(config, ckpt)
    module = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
    module[0]._parameters["weight"] = 5  # written past nn.Module's checks, as a crafted pickle can
    torch.save(module, ckpt / "checkpoint_f_best.tar")
    r = cli(ckpt, "--dataset", "cifar10", "--folder", tmp_path / "runs", cwd=tmp_path)
    one_error_line(r, "checkpoint_f_best.tar", "malformed pickled module", "AttributeError")
    assert not (tmp_path / "runs").exists()


def test_allowed_globals_are_the_layouts_pickle_globals():
    listed = set()
    for config in ("a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1", "d_tinyimagenet_resnet20_cut5_noRELU_C8S1"):
        for entry in _layout(f"{config}__PATROL")["files"]:
            listed |= set(entry.get("pickle_globals", ()))
    assert listed and listed <= ALLOWED_GLOBALS
    assert ALLOWED_GLOBALS - listed <= {"builtins.set"}  # __builtin__.set as Python 3 may name it


# ---------------------------------------------------------------- PATROL: the encoder is a pickled module
def _author_classes():
    """Classes named as the authors' ResNet modules, so a pickle refers to them as the published one does."""
    import types

    pkg = sys.modules.setdefault("model_architectures", types.ModuleType("model_architectures"))
    mod = sys.modules.get("model_architectures.resnet_cifar")
    if mod is None:
        mod = types.ModuleType("model_architectures.resnet_cifar")
        for name in ("conv5x5", "ResNetBasicblock", "DownsampleA"):
            setattr(mod, name, type(name, (nn.Module,), {"__module__": mod.__name__}))
        sys.modules[mod.__name__] = pkg.resnet_cifar = mod
    return mod


def _leaf(keys, prefix):
    """The torch.nn module whose tensors are `keys` under `prefix` (conv from its weight, or BatchNorm)."""
    names = {k[len(prefix):]: shape for k, shape in keys if k.startswith(prefix) and "." not in k[len(prefix):]}
    w = names["weight"]
    if "running_mean" in names:
        return nn.BatchNorm2d(w[0])
    return nn.Conv2d(w[1], w[0], w[2], padding=w[2] // 2, bias="bias" in names)


def patrol_encoder_module(layout):
    """The pickled encoder of a PATROL run, rebuilt from the layout (keys and forward order)."""
    keys = [(k, tuple(s)) for k, s in next(e for e in layout["files"] if e["file"].startswith("checkpoint_f_"))["keys"]]
    author = _author_classes()
    seq = nn.Sequential()
    for entry in layout["forward_order_after_pruning"]:
        if not entry["part"].startswith("client"):
            continue
        i, kind = entry["index"], entry["type"]
        if kind in ("Conv2d", "BatchNorm2d"):
            m = _leaf(keys, f"{i}.")
        elif kind in ("ReLU", "Sigmoid", "MaxPool2d"):
            m = {"ReLU": nn.ReLU(), "Sigmoid": nn.Sigmoid(), "MaxPool2d": nn.MaxPool2d(2, 2)}[kind]
        else:  # conv5x5 / ResNetBasicblock: children named as in the keys
            m = getattr(author, kind)()
            subs = dict.fromkeys(k.split(".")[1] for k, _ in keys if k.startswith(f"{i}."))  # saved order
            for sub in subs:
                m.add_module(sub, _leaf(keys, f"{i}.{sub}."))
            if kind == "ResNetBasicblock" and m.conv_a.in_channels != m.conv_b.out_channels:
                m.downsample = author.DownsampleA()
                m.downsample.avg = nn.AvgPool2d(kernel_size=1, stride=2)
        seq.add_module(i, m)
    return seq


@pytest.mark.parametrize("config", ["a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1",
                                    "d_tinyimagenet_resnet20_cut5_noRELU_C8S1"])
def test_patrol_run_imports_with_its_pruned_shapes(config, tmp_path):
    from lifecycle.trained_run import load_trained_run
    from tools.import_official import build_parser, import_official

    layout = _layout(f"{config}__PATROL")
    s = layout["settings"]
    files, x = generate_weights(layout)
    ckpt = tmp_path / "gan_adv_step1_pruning190_infocons_sgm_lg1_thre0.125" / RUN_NAME
    ckpt.mkdir(parents=True)
    module = patrol_encoder_module(layout)
    module.load_state_dict(files["checkpoint_f"], strict=True)
    torch.save(module, ckpt / "checkpoint_f_best.tar")
    for stem in ("checkpoint_cloud", "checkpoint_classifier"):
        torch.save(files[stem], ckpt / f"{stem}_best.tar")
    data = fake_npz(tmp_path, s["num_class"], s["image_size"])
    args = build_parser().parse_args([str(ckpt), "--dataset", data, "--data_root", str(tmp_path), "--limit_test", "20",
                                      "--arch", s["arch"], "--cutlayer", str(s["cutlayer"]),
                                      "--folder", str(tmp_path / "runs"), "--filename", "imp", "--device", "cpu"])
    assert import_official(args, progress=False)["imported_from"]["variant"] == "PATROL"
    tr = load_trained_run(tmp_path / "runs" / "imp", device="cpu")
    ours = list(tr.model.encoder.state_dict().values())
    theirs = list(files["checkpoint_f"].values())
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert tr.cfg["AT_regularization"] == "pruning190"
    if s["arch"].startswith("vgg"):  # torch.nn only: the published encoder itself can run
        module.eval()
        with torch.no_grad():
            assert torch.allclose(tr.model.encoder(x), module(x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert tr.model(x).shape == (4, s["num_class"])
