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

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
CIFAR = SHARED_DATA / "cifar10_subset"
RUN_NAME = "pretrain_False_lambd_16_noise_0.025_epoch_240_bottleneck_noRELU_C8S1_log_1_ATstrength_0_lr_0.05_varthres_0.125"
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
    from tools.import_official import build_parser, import_official
    from trained_run import load_trained_run

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


def test_sca_checkpoint_is_refused(tmp_path):
    config = "a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1"
    layout = _layout(f"{config}__SCA")
    files, _ = generate_weights(layout)
    (tmp_path / "sca").mkdir()
    for stem, _ in PARTS:
        torch.save(files[stem], tmp_path / "sca" / f"{stem}_best.tar")
    one_error_line(cli(tmp_path / "sca", "--dataset", "cifar10", "--regularization_strength", "0.025"),
                   "SCA", "'9.W'", "not supported")


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


def test_allowed_globals_are_the_layouts_pickle_globals():
    listed = set()
    for config in ("a_cifar10_vgg11_bn_sgm_cut4_noRELU_C8S1", "d_tinyimagenet_resnet20_cut5_noRELU_C8S1"):
        for entry in _layout(f"{config}__PATROL")["files"]:
            listed |= set(entry.get("pickle_globals", ()))
    assert listed and listed <= ALLOWED_GLOBALS
    assert ALLOWED_GLOBALS - listed <= {"builtins.set"}  # __builtin__.set as Python 3 may name it
