"""Split-model builders: shapes, parameter counts, composition, bottleneck grammar, errors."""
import pytest
import torch
import torch.nn as nn

from architectures import ARCHITECTURES, BottleneckSpec, build_split_model, max_cutlayer, parse_bottleneck
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(cin, cout, k=3, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def test_registry_and_max_cutlayer():
    assert set(ARCHITECTURES) == {"vgg11", "vgg11_bn", "vgg11_bn_sgm", "vgg13", "vgg13_bn",
                                  "resnet20", "resnet20_std", "resnet32"}
    expected = {"vgg11": 13, "vgg11_bn": 13, "vgg11_bn_sgm": 13, "vgg13": 15, "vgg13_bn": 15,
                "resnet20": 10, "resnet20_std": 10, "resnet32": 16}
    assert {a: max_cutlayer(a) for a in ARCHITECTURES} == expected


def test_known_check_default_cifar_setting():
    m = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1")
    assert m.feature_shape == (8, 8, 8)
    assert n_params(m.encoder) == 85256 == 1792 + 128 + 73856 + 256 + 9224
    # server mirror: only the conv 8->128 k3, feeding the next layer directly (as published)
    assert n_params(m.server.bottleneck) == conv(8, 128)
    assert m.arch == "vgg11_bn_sgm" and m.cutlayer == 4


def test_tinyimagenet_paper_setting():
    # the paper's TinyImageNet model (run_exp.sh preset): resnet20 cut 5 + noRELU_C8S1
    m = build_split_model("resnet20", 5, 200, 64, "noRELU_C8S1")
    assert m.feature_shape == (8, 16, 16)
    assert n_params(m.encoder) == 112472


def test_paper_resnet_shortcut_subsamples_and_appends_zero_channels():
    from architectures.resnet import PadShortcut
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    paper = PadShortcut(3, 7, 2, zeros_after=True)(x)
    assert paper.shape == (2, 7, 3, 3)
    assert torch.equal(paper[:, :3], x[:, :, ::2, ::2]) and not paper[:, 3:].any()
    he = PadShortcut(3, 7, 2, zeros_after=False)(x)
    assert torch.equal(he[:, 2:5], x[:, :, ::2, ::2]) and not he[:, :2].any() and not he[:, 5:].any()


# (arch, cut, image size, bottleneck) -> hand-derived (C, H, W) of z
SHAPES = [
    ("vgg11", 1, 32, "None", (64, 32, 32)),
    ("vgg11", 2, 32, "None", (64, 16, 16)),
    ("vgg11", 3, 48, "None", (128, 24, 24)),
    ("vgg11_bn", 4, 64, "None", (128, 16, 16)),
    ("vgg11", 7, 32, "None", (256, 4, 4)),
    ("vgg11", 10, 48, "None", (512, 3, 3)),
    ("vgg11", 13, 48, "None", (512, 1, 1)),
    ("vgg11", 13, 64, "None", (512, 2, 2)),
    ("vgg11_bn_sgm", 4, 48, "noRELU_C8S1", (8, 12, 12)),
    ("vgg11_bn_sgm", 4, 64, "noRELU_C8S1", (8, 16, 16)),
    ("vgg11_bn", 4, 32, "C16S2", (16, 4, 4)),
    ("vgg11_bn_sgm", 4, 48, "noRELU_C4S4K5", (4, 3, 3)),
    ("vgg11", 10, 48, "C8S2", (8, 2, 2)),     # odd 3x3 cut: ceil halving, mirrored exactly
    ("vgg13", 2, 32, "None", (64, 32, 32)),
    ("vgg13", 3, 48, "None", (64, 24, 24)),
    ("vgg13_bn", 6, 64, "None", (128, 16, 16)),
    ("vgg13_bn", 15, 32, "None", (512, 1, 1)),
    ("resnet20", 1, 48, "None", (16, 48, 48)),
    ("resnet20", 2, 32, "None", (32, 16, 16)),
    ("resnet20", 4, 48, "None", (32, 24, 24)),
    ("resnet20", 7, 64, "None", (64, 16, 16)),
    ("resnet20", 10, 48, "None", (128, 6, 6)),
    ("resnet20", 3, 64, "noRELU_C8S2", (8, 16, 16)),
    ("resnet20_std", 1, 32, "None", (16, 32, 32)),
    ("resnet20_std", 5, 48, "None", (32, 24, 24)),
    ("resnet20_std", 10, 64, "None", (64, 16, 16)),
    ("resnet20_std", 4, 32, "C4S1", (4, 32, 32)),
    ("resnet32", 6, 32, "None", (16, 32, 32)),
    ("resnet32", 7, 48, "None", (32, 24, 24)),
    ("resnet32", 16, 64, "None", (64, 16, 16)),
]


@pytest.mark.parametrize("arch,cut,size,bn,shape", SHAPES)
def test_feature_shape_and_forward(arch, cut, size, bn, shape):
    torch.manual_seed(0)
    m = build_split_model(arch, cut, 7, size, bn)
    assert m.feature_shape == shape
    assert m.training, "building must not leave the model in eval mode"
    x = torch.randn(2, 3, size, size)
    m.eval()
    with torch.no_grad():
        z = m.encoder(x)
        out = m(x)
        assert tuple(z.shape) == (2,) + shape
        assert out.shape == (2, 7)
        assert torch.equal(out, m.classifier(m.server(z)))
        assert torch.equal(out, m.server_forward(z))


# hand-computed encoder parameter counts (VGG convs carry a bias, ResNet convs do not)
VGG11_CUT3 = conv(3, 64) + conv(64, 128)
RES20_STEM = conv(3, 16, 5, False) + 32
RES20_BLOCK_16_32 = conv(16, 32, 3, False) + conv(32, 32, 3, False) + 128
STD_STEM = conv(3, 16, 3, False) + 32
STD_BLOCK_16 = 2 * conv(16, 16, 3, False) + 64
PARAMS = [
    ("vgg11", 1, 32, "None", conv(3, 64)),
    ("vgg11", 1, 64, "None", conv(3, 64)),
    ("vgg11", 3, 48, "None", VGG11_CUT3),
    ("vgg11", 4, 32, "None", VGG11_CUT3),
    ("vgg11_bn", 3, 32, "None", VGG11_CUT3 + 128 + 256),
    ("vgg11_bn", 4, 32, "C16S2", VGG11_CUT3 + 384 + conv(128, 16) + 32),
    ("vgg11_bn_sgm", 4, 64, "noRELU_C4S4K5", VGG11_CUT3 + 384 + conv(128, 4, 5) + conv(4, 4, 5)),
    ("vgg13", 2, 32, "None", conv(3, 64) + conv(64, 64)),
    ("vgg13_bn", 2, 48, "None", conv(3, 64) + conv(64, 64) + 256),
    ("resnet20", 1, 64, "None", RES20_STEM),
    ("resnet20", 2, 32, "None", RES20_STEM + RES20_BLOCK_16_32),
    ("resnet20", 3, 32, "None", RES20_STEM + RES20_BLOCK_16_32 + 2 * conv(32, 32, 3, False) + 128),
    ("resnet20_std", 1, 32, "None", STD_STEM),
    ("resnet20_std", 2, 48, "None", STD_STEM + STD_BLOCK_16),
    ("resnet32", 6, 32, "None", STD_STEM + 5 * STD_BLOCK_16),
]


@pytest.mark.parametrize("arch,cut,size,bn,count", PARAMS)
def test_encoder_parameter_counts(arch, cut, size, bn, count):
    assert n_params(build_split_model(arch, cut, 10, size, bn).encoder) == count


def test_whole_model_counts_match_reference_resnets():
    # He et al. CIFAR ResNets with option-A shortcuts: 269,722 and 464,154 parameters (10 classes)
    assert n_params(build_split_model("resnet20_std", 3, 10)) == 269722
    assert n_params(build_split_model("resnet32", 3, 10)) == 464154


def test_vgg_head_input_follows_image_size():
    for size, feat in ((32, 512), (48, 512), (64, 2048)):
        m = build_split_model("vgg11", 3, 10, size)
        assert m.classifier[2].in_features == feat


def test_encoder_tails():
    sgm = build_split_model("vgg11_bn_sgm", 3, 10)
    assert isinstance(list(sgm.encoder.children())[-1], nn.Sigmoid)
    res = build_split_model("resnet20", 4, 10)
    assert isinstance(list(res.encoder.children())[-1], nn.Sigmoid)
    plain_bn = build_split_model("vgg11", 4, 10, 32, "C8S1")
    last = list(plain_bn.encoder.children())[-1]
    assert isinstance(last, nn.BatchNorm2d) and last.num_features == 8
    plain = build_split_model("vgg11_bn", 3, 10)
    assert not isinstance(list(plain.encoder.children())[-1], (nn.Sigmoid, nn.BatchNorm2d))
    # the server's expanding conv feeds the next layer directly (no BN / ReLU after it, as published)
    srv = list(plain_bn.server.bottleneck.children())
    assert len(srv) == 1 and isinstance(srv[0], nn.Conv2d) and srv[0].out_channels == 128


def test_norelu_removes_device_relus():
    with_relu = build_split_model("vgg11_bn_sgm", 4, 10, 32, "C8S4")
    no_relu = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S4")
    count = lambda m: sum(isinstance(x, nn.ReLU) for x in m.encoder.bottleneck.modules())
    assert count(with_relu) == 2 and count(no_relu) == 0
    convs = [x for x in no_relu.encoder.bottleneck.modules() if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(128, 8, (2, 2)), (8, 8, (2, 2))]
    ups = [x for x in no_relu.server.bottleneck.modules() if isinstance(x, nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(8, 8), (8, 128)]


@pytest.mark.parametrize("arch,cut,bn", [("vgg11_bn_sgm", 2, "None"), ("vgg11_bn_sgm", 4, "noRELU_C8S1"),
                                         ("vgg11_bn_sgm", 4, "C8S2"), ("resnet20", 1, "None"),
                                         ("resnet20", 10, "None"), ("resnet20", 4, "noRELU_C4S1")])
def test_sigmoid_encoders_output_in_open_unit_interval(arch, cut, bn):
    torch.manual_seed(1)
    m = build_split_model(arch, cut, 10, 32, bn)
    x = torch.randn(4, 3, 32, 32)
    assert isinstance(list(m.encoder.children())[-1], nn.Sigmoid)
    with torch.no_grad():
        # float32 rounds sigmoid(t) to exactly 1 for t > ~17, which the fan-out init can reach
        z = m.encoder(x)
        assert z.min() >= 0 and z.max() <= 1
        z = m.double().encoder(x.double())
        assert z.min() > 0 and z.max() < 1


def test_init_scheme_and_untouched_bn_stats():
    m = build_split_model("vgg11_bn", 4, 10, 32, "C8S1")
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
            # shape inference must not have updated running statistics
            assert torch.all(mod.running_mean == 0) and torch.all(mod.running_var == 1)
        if isinstance(mod, nn.Linear):
            assert torch.all(mod.bias == 0) and mod.weight.std() < 0.02


def test_server_gradients_do_not_reach_encoder():
    m = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1")
    x = torch.randn(4, 3, 32, 32)
    z = m.encoder(x)
    m.server_forward(z.detach()).sum().backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    server_side = list(m.server.parameters()) + list(m.classifier.parameters())
    assert server_side and all(p.grad is not None for p in server_side)
    enc_ids = {id(p) for p in m.encoder.parameters()}
    assert not enc_ids & {id(p) for p in server_side}


def test_parse_bottleneck():
    assert parse_bottleneck("None") is None
    assert parse_bottleneck("none") is None
    assert parse_bottleneck("") is None
    assert parse_bottleneck(None) is None
    assert parse_bottleneck("noRELU_C8S1") == BottleneckSpec(8, 1, 3, False)
    assert parse_bottleneck("C16S2") == BottleneckSpec(16, 2, 3, True)
    assert parse_bottleneck("noRELU_C4S1K5") == BottleneckSpec(4, 1, 5, False)
    assert parse_bottleneck("C8") == BottleneckSpec(8, 1, 3, True)
    assert parse_bottleneck("C2S8K1").steps == 3


@pytest.mark.parametrize("option,fragment", [
    ("C", "C<c>"), ("X8", "neither"), ("C8S3", "power of 2"), ("C0S1", ">= 1"),
    ("C8S1K4", "odd"), ("noRELU", "required"), ("noRELU_noRELU_C8S1", "twice"),
    ("C8S", "number"), ("C8S1_X", "unexpected"), ("C8S0", "power of 2"), ("c8s1", "neither"),
])
def test_bad_bottleneck_strings(option, fragment):
    with pytest.raises(UserError) as err:
        build_split_model("vgg11_bn_sgm", 4, 10, 32, option)
    msg = str(err.value)
    assert repr(option) in msg and fragment in msg and "noRELU_C8S1" in msg


def test_bad_arch_lists_choices():
    for arch in ("vgg16", "resnet18", "", None):
        with pytest.raises(UserError) as err:
            build_split_model(arch, 2, 10)
        assert all(a in str(err.value) for a in ARCHITECTURES)
    with pytest.raises(UserError):
        max_cutlayer("vgg19")


@pytest.mark.parametrize("arch,cut", [("vgg11", 0), ("vgg11", 14), ("vgg13", 16), ("resnet20", 11),
                                      ("resnet32", 17), ("vgg11", -1), ("vgg11", 2.0), ("vgg11", True)])
def test_bad_cutlayer_names_range(arch, cut):
    with pytest.raises(UserError) as err:
        build_split_model(arch, cut, 10)
    assert f"1..{max_cutlayer(arch)}" in str(err.value)


def test_bad_sizes_and_classes():
    with pytest.raises(UserError, match="too small"):
        build_split_model("vgg11", 13, 10, 16)
    with pytest.raises(UserError):
        build_split_model("vgg11", 3, 0)
    with pytest.raises(UserError):
        build_split_model("vgg11", 3, 10, 0)

