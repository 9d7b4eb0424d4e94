"""Issue 38: `--init published` draws the target model's weights as the published models do
(model_architectures/vgg.py and resnet_cifar.py): checked per layer kind against the statistics of
each initialiser, so a wrong distribution, scale or bias rule fails."""
import math

import pytest
import torch
from torch import nn

import main_MIA
from architectures import build_split_model
from lifecycle.flags import PAPER_EXACT
from lifecycle.identity import identity
from utils import UserError


def _build(arch, cut, size, init, bottleneck="noRELU_C8S1"):
    torch.manual_seed(0)
    return build_split_model(arch, cut, 10, size, bottleneck, init=init).requires_grad_(False)


def _convs(module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _kurtosis(w):
    w = w.flatten().double()
    w = w - w.mean()
    return float((w**4).mean() / (w**2).mean() ** 2)


def _is_xavier_uniform(m):
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert m.weight.abs().max() <= bound + 1e-7
    assert float(m.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.08)
    assert _kurtosis(m.weight) < 2.1   # uniform: 1.8, normal: 3


def _is_pytorch_default(m):
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
    bound = 1.0 / math.sqrt(fan_in)   # kaiming_uniform(a=sqrt(5)) for weights, U(-bound, bound) for biases
    assert m.weight.abs().max() <= bound + 1e-7
    assert float(m.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.08)
    if m.bias is not None:
        assert m.bias.abs().max() <= bound + 1e-7 and m.bias.abs().min() > 0


def _is_he_normal_fan_out(m):
    k_h, k_w = m.kernel_size
    assert float(m.weight.std()) == pytest.approx(math.sqrt(2.0 / (k_h * k_w * m.out_channels)), rel=0.08)
    assert abs(float(m.weight.mean())) < 0.1 * float(m.weight.std())
    assert _kurtosis(m.weight) > 2.5


def test_published_vgg_init_xavier_on_the_device_defaults_elsewhere():
    model = _build("vgg11_bn_sgm", 4, 32, "published")
    enc = _convs(model.encoder)
    assert len(enc) == 3   # conv 3->64, conv 64->128 and the bottleneck conv 128->8
    for m in enc:
        _is_xavier_uniform(m)
        assert not m.bias.any()
    for bn in (m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
    server = _convs(model.server)
    assert server and isinstance(model.server.bottleneck[0], nn.Conv2d)
    for m in server:          # the server half of the bottleneck included
        _is_pytorch_default(m)
    linears = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    for m in linears:
        _is_pytorch_default(m)


def test_published_vgg_init_reaches_a_strided_bottleneck_and_patrols_layer():
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn", 4, 10, 32, "C8S4", extra_device_layer=True, init="published")
    model.requires_grad_(False)
    enc = _convs(model.encoder)
    assert len(enc) == 5   # PATROL's conv, two trunk convs, two stride-2 bottleneck convs
    for m in enc:
        assert m.weight.abs().max() <= math.sqrt(6.0 / sum(nn.init._calculate_fan_in_and_fan_out(m.weight))) + 1e-7
        assert not m.bias.any()
    assert all(isinstance(m, nn.ConvTranspose2d) for m in model.server.bottleneck if hasattr(m, "weight"))
    for m in _convs(model.server.bottleneck):
        _is_pytorch_default(m)


def test_published_resnet_init_he_normal_device_convs_biases_kept():
    model = _build("resnet20", 5, 64, "published")
    enc = _convs(model.encoder)
    bottleneck = model.encoder.bottleneck[0]
    for m in enc:
        if m.weight.numel() >= 1000:
            _is_he_normal_fan_out(m)
    # the published code leaves the device convs' biases alone: only the bottleneck conv has one
    assert [m for m in enc if m.bias is not None] == [bottleneck]
    fan_in = bottleneck.in_channels * 9
    assert bottleneck.bias.abs().min() > 0 and bottleneck.bias.abs().max() <= 1 / math.sqrt(fan_in)
    # its server loop reaches the top-level Conv2d, the bottleneck's expanding conv: normal, zero bias
    up = model.server.bottleneck[0]
    _is_he_normal_fan_out(up)
    assert not up.bias.any()
    blocks = [m for m in _convs(model.server) if m is not up]
    assert blocks
    for m in blocks:           # inside the residual blocks: PyTorch's default
        _is_pytorch_default(m)
    _is_pytorch_default(model.classifier[-1])


def test_ours_stays_the_default_and_differs():
    ours, pub = _build("vgg11_bn_sgm", 4, 32, "ours"), _build("vgg11_bn_sgm", 4, 32, "published")
    torch.manual_seed(0)
    plain = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1")
    for a, b in zip(ours.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    head = ours.classifier[-1]
    assert not head.bias.any() and float(head.weight.std()) == pytest.approx(0.01, rel=0.15)
    assert pub.classifier[-1].bias.any()
    with pytest.raises(UserError, match="--init"):
        build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1", init="xavier")


def test_init_is_in_paper_exact_and_only_a_published_init_enters_the_identity():
    assert PAPER_EXACT["init"] == "published"
    parser = main_MIA.build_parser()
    default = vars(parser.parse_args([]))
    assert default["init"] == "ours" and "init" not in identity(default)["train"]
    pub = vars(parser.parse_args(["--paper_exact"]))
    assert pub["init"] == "published" and identity(pub)["train"]["init"] == "published"
    assert vars(parser.parse_args(["--paper_exact", "--init", "ours"]))["init"] == "ours"


def test_a_run_builds_its_model_with_its_init():
    from lifecycle.experiment import _load_everything

    def head(init):
        cfg = vars(main_MIA.build_parser().parse_args(["--init", init, "--dataset", "digits", "--limit_train", "200",
                                                       "--limit_test", "50"]))
        torch.manual_seed(0)
        return _load_everything(cfg, "cpu")[1].classifier[-1]

    assert not head("ours").bias.any() and head("published").bias.any()   # PyTorch's default bias is not 0
