"""SCA (`--AT_regularization SCA_new`, defenses/sca.py): the published sparse-coding layers, their place
in the encoder, the published checkpoint layout, and a tiny training run.

tests/fixtures/golden_sca.json was made by a throwaway script (not in the repository) that ran the
published classes (xiasong0501/CEM @ 5ddd1fd: model_architectures/vgg.py `LCALayer`, lcapt/lca.py
`LCAConv2D`, and the whole `vgg11_bn_sgm` / `ResNet20` with SCA=True) from their verbatim sources on
CPU; its `how` field says how inputs and weights were drawn, and the helpers below redo exactly that.
"""
import json
import math
import pathlib

import pytest
import torch
from conftest import SHARED_DATA

from architectures import build_split_model
from defenses import build_defenses, device_tail, parse_at_options
from defenses.sca import ConvLCA, DictionaryLCA
from lifecycle.experiment import run_experiment
from main_MIA import build_parser
from tools.official_layout import generate_weights, layout_file, load_published, read_layout
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = json.loads((pathlib.Path(__file__).parent / "fixtures" / "golden_sca.json").read_text())
ON = {"AT_regularization": "SCA_new", "AT_regularization_strength": 0.3, "bottleneck_option": "noRELU_C8S1"}


def _sha(t):
    import hashlib
    return hashlib.sha256(t.detach().float().contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def _close(t, ref, rel=1e-5, what=""):
    t = t.detach().double()
    scale = max(ref["abs_sum"] / max(t.numel(), 1), 1e-12)
    assert list(t.shape) == ref["shape"], what
    assert t.sum().item() == pytest.approx(ref["sum"], abs=rel * scale * t.numel()), f"{what}: sum"
    assert t.abs().sum().item() == pytest.approx(ref["abs_sum"], rel=rel), f"{what}: abs sum"
    assert t.pow(2).sum().item() == pytest.approx(ref["sq_sum"], rel=2 * rel), f"{what}: squares"
    head = torch.tensor(ref["head"], dtype=torch.float64)
    assert torch.allclose(t.flatten()[:len(head)], head, rtol=rel, atol=rel * scale), f"{what}: first values"


def _ours(case):
    shape = case["x_shape"][1:]
    if case["name"].startswith("resnet"):
        return ConvLCA(shape[0])
    w = case["params"]["W"]["shape"]
    return DictionaryLCA(shape, num_neurons=w[0], steps=3 if "3_steps" in case["name"] else 1)


@pytest.mark.parametrize("case", GOLDEN["layers"], ids=lambda c: c["name"])
def test_layer_matches_the_published_class(case):
    torch.manual_seed(case["seed"])
    layer = _ours(case)  # same init as the published class under the same seed
    for name, p in layer.named_parameters():
        ref = case["params"][name]
        assert list(p.shape) == ref["shape"] and p.requires_grad == ref["requires_grad"], name
        assert _sha(p) == ref["sha256"], f"{name}: initial weights differ from the published init"
    g = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(*case["x_shape"], generator=g).requires_grad_(True)
    assert _sha(x) == case["x_sha256"]
    out = layer(x)
    r = torch.randn(out.shape, generator=g)
    (out * r).sum().backward()
    _close(out, case["out"], what="output")
    means = torch.tensor(case["out_channel_means"], dtype=torch.float64).view(out.shape[:2])
    assert torch.allclose(out.detach().double().mean(dim=(2, 3)), means, rtol=1e-5, atol=1e-6)
    if case["out_full"] is not None:
        full = torch.tensor(case["out_full"]).view(out.shape)
        assert torch.allclose(out, full, rtol=1e-5, atol=1e-6), f"{(out - full).abs().max():.3g}"
    _close(x.grad, case["grad_x"], rel=1e-4, what="input gradient")  # through all 1000 LCA steps for resnet
    for name, p in layer.named_parameters():
        ref = case["grad_params"][name]
        if ref is None:
            assert p.grad is None, f"{name} is frozen in the published layer"
        else:
            _close(p.grad, ref, rel=1e-4, what=f"{name} gradient")


def _sca_model(config):
    layout = read_layout(_need(layout_file(SHARED_DATA, f"{config}__SCA")))
    s = layout["settings"]
    cfg = dict(ON, arch=s["arch"], AT_regularization=s["AT_regularization"],
               AT_regularization_strength=s["AT_regularization_strength"], bottleneck_option=s["bottleneck_option"])
    model = build_split_model(s["arch"], s["cutlayer"], s["num_class"], s["image_size"], s["bottleneck_option"],
                              device_tail=device_tail(cfg))
    return model, layout


def _need(path):
    if not path.exists():
        pytest.skip(f"{path} not found: set CEM_DATA_ROOT to the shared data folder")
    return path


@pytest.mark.parametrize("case", GOLDEN["encoders"], ids=lambda c: c["config"])
def test_sca_encoder_has_the_published_layout_and_forward(case):
    model, layout = _sca_model(case["config"])
    files, x = generate_weights(layout)
    assert x.sum().item() == pytest.approx(case["x_sum"], abs=1e-6 * x.abs().sum().item())  # float32 sums vary
    mapping = load_published(model, files)  # by position: kinds (W / weights / forward_pass) and shapes
    assert [t for t, _ in mapping["checkpoint_f"]] == list(files["checkpoint_f"])
    assert sum(len(v) for v in mapping.values()) == len(model.state_dict())
    f_entry = next(e for e in layout["files"] if e["file"].startswith("checkpoint_f_"))
    assert sum(p.numel() for p in model.encoder.parameters()) == f_entry["num_params"]
    assert model.feature_shape == tuple(layout["smashed_data_shape_per_image"])
    model.eval()
    with torch.no_grad():
        z = model.encoder(x)
        logits = model.server_forward(z)
    _close(z, case["z"], what="z")
    means = torch.tensor(case["z_channel_means"], dtype=torch.float64).view(z.shape[:2])
    assert torch.allclose(z.double().mean(dim=(2, 3)), means, rtol=1e-5, atol=1e-6)
    if case["z_full"] is not None:
        # Element-wise to 1e-5: the golden z was computed on another CPU, and one LCA step's threshold
        # turns a float32 rounding difference of the bottleneck into a few 1e-6 of z (4.7e-6 seen on one
        # of 2,048 values here); a wrong layer, step count or threshold is off by orders more.
        assert torch.allclose(z, torch.tensor(case["z_full"]).view(z.shape), rtol=1e-5, atol=1e-5)
    _close(logits, case["logits"], rel=1e-4, what="logits")
    centred = (logits - logits.mean(0))[:, :10]
    assert torch.allclose(centred.double(), torch.tensor(case["logits_centred_head"], dtype=torch.float64).view(
        centred.shape), rtol=1e-3, atol=1e-4 * case["logits"]["abs_sum"] / logits.numel())


def test_the_layer_sits_between_bottleneck_and_sigmoid_and_changes_z():
    torch.manual_seed(0)
    plain = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1")
    torch.manual_seed(0)
    sca = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1", device_tail=device_tail(dict(ON, arch="vgg11")))
    assert list(sca.encoder._modules)[-3:] == ["bottleneck", "tail", "sigmoid"]
    assert isinstance(sca.encoder.tail, DictionaryLCA) and sca.encoder.tail.W.shape == (512, 512)
    sca.load_state_dict({**plain.state_dict(), "encoder.tail.W": sca.encoder.tail.W.detach()}, strict=True)
    x = torch.randn(3, 3, 32, 32)
    plain.eval(), sca.eval()
    with torch.no_grad():
        pre = plain.encoder[:-1](x)  # everything before the sigmoid
        want = torch.sigmoid(sca.encoder.tail(pre))
        z_sca, z_plain = sca.encoder(x), plain.encoder(x)
    assert torch.allclose(z_sca, want, atol=1e-6)
    assert (z_sca - z_plain).abs().max() > 1e-2, "the SCA layer must change what the device sends"
    # the server reads the same shape, and the attacker queries the same encoder
    assert sca.feature_shape == plain.feature_shape
    resnet = build_split_model("resnet20", 5, 10, 64, "noRELU_C8S1", device_tail=device_tail(dict(ON, arch="resnet20")))
    assert isinstance(resnet.encoder.tail, ConvLCA) and not resnet.encoder.tail.weights.requires_grad


def test_option_parsing_and_switches():
    assert parse_at_options("SCA_new", 0.3).sca and parse_at_options("SCA", 0.3).enabled() == ["sca"]
    both = parse_at_options("gan_adv_step1_SCA_new", 0.3)
    assert both.sca and both.gan_adv_steps == 1
    assert not parse_at_options("SCA_new", 0.0).sca  # strength 0 turns it off, as published
    assert device_tail(dict(ON, arch="vgg11_bn_sgm", AT_regularization_strength=0.0)) is None
    assert device_tail(dict(ON, arch="vgg11_bn_sgm", AT_regularization="nopeek")) is None
    with pytest.raises(UserError, match="unknown --AT_regularization text 'old' in 'SCA_old'"):
        parse_at_options("SCA_old", 0.3)
    with pytest.raises(UserError, match="needs a bottleneck"):
        device_tail(dict(ON, arch="vgg11_bn_sgm", bottleneck_option="None"))
    stack = build_defenses(dict(ON, arch="vgg11_bn_sgm", regularization="Gaussian_kl", regularization_strength=0.025),
                           10, 100)
    assert [d.name for d in stack.defenses] == ["noise", "sca"]
    z = torch.rand(2, 8, 8, 8)
    assert torch.equal(stack.find("sca").obfuscate(z, training=True), z)  # the layer is in the encoder


def test_tiny_sca_training_run_finishes_and_reloads(tmp_path):
    cfg = vars(build_parser().parse_args([]))
    cfg.pop("no_progress")
    cfg.update(dataset="digits", data_root=str(tmp_path / "data"), folder=str(tmp_path / "runs"), num_epochs=2,
               batch_size=32, limit_train=64, limit_test=64, device="cpu", filename="sca", lambd=0.0,
               regularization="Gaussian_kl", regularization_strength=0.025, milestones="none",
               AT_regularization="SCA_new", AT_regularization_strength=0.3, attack_epochs=1,
               attack_modes="train_time", gan_AE_type="res_normN1C16")
    out = run_experiment(cfg, progress=False)
    assert out["status"] == "finished" and math.isfinite(out["train"]["test_acc"])
    assert "train_time" in out["attack"]["decoder"]
    ck = torch.load(tmp_path / "runs" / "sca" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert ck["encoder.tail.W"].shape == (512, 512)
