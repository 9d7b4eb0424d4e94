"""The folded eval copy (eval_fold.py) computes what the module computes in eval mode, follows its
weights as they train, and runs the module itself when it cannot fold."""
import pytest
import torch
from torch import nn

from accel.eval_fold import EvalFolder
from architectures import build_split_model


def trained_a_little(module, shape, steps=3):
    """Moves weights and BatchNorm statistics away from their initial values, so folding matters."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module.train()
    for _ in range(steps):
        opt.zero_grad()
        module(torch.randn(16, *shape) * 2 + 0.5).square().mean().backward()
        opt.step()
    return module.eval()


def graph_ops(gm):
    return [type(gm.get_submodule(n.target)).__name__ if n.op == "call_module" else str(n.target)
            for n in gm.graph.nodes if n.op in ("call_module", "call_function")]


@pytest.mark.parametrize("arch,cut", [("vgg11_bn_sgm", 4), ("vgg11_bn_sgm", 3), ("resnet20", 5)])
def test_folded_encoder_matches_eval_forward(arch, cut):
    enc = trained_a_little(build_split_model(arch, cut, 10, 32, "noRELU_C8S1").encoder, (3, 32, 32))
    x = torch.randn(8, 3, 32, 32)
    folder = EvalFolder()
    with torch.no_grad():
        want = enc(x)
        got = folder.prepare(enc)(x)
    assert folder.folded
    ops = graph_ops(folder.prepare(enc))
    assert "BatchNorm2d" not in ops  # every BatchNorm of these encoders follows a conv
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) > 0  # the original is untouched


def test_relu_moves_after_the_pool_exactly():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.Flatten(), nn.Linear(64, 2))
    net = trained_a_little(net, (3, 8, 8))
    folder = EvalFolder()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
        gm = folder.prepare(net)
        got = gm(x)
    ops = graph_ops(gm)
    assert ops.index("MaxPool2d") < ops.index(str(torch.relu_)) and "ReLU" not in ops
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_refolds_after_training_and_rebuilds_after_pruning():
    enc = trained_a_little(build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1").encoder, (3, 32, 32))
    folder = EvalFolder()
    x = torch.randn(4, 3, 32, 32)
    first = folder.prepare(enc)
    trained_a_little(enc, (3, 32, 32))  # new weights and running statistics, same tensors
    with torch.no_grad():
        again = folder.prepare(enc)
        assert again is first  # no re-trace, only a re-fold
        assert torch.allclose(again(x), enc(x), atol=2e-5, rtol=1e-4)
        conv = enc.layer3[0]  # what a pruner does: new, smaller parameter tensors
        keep = torch.arange(0, 128, 2)
        conv.weight = nn.Parameter(conv.weight[keep].clone())
        conv.bias = nn.Parameter(conv.bias[keep].clone())
        conv.out_channels = 64
        bn = enc.layer3[1]
        bn.weight, bn.bias = nn.Parameter(bn.weight[keep].clone()), nn.Parameter(bn.bias[keep].clone())
        bn.running_mean, bn.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
        bn.num_features = 64
        enc.bottleneck[0].weight = nn.Parameter(enc.bottleneck[0].weight[:, keep].clone())
        rebuilt = folder.prepare(enc)
        assert rebuilt is not first
        assert torch.allclose(rebuilt(x), enc(x), atol=2e-5, rtol=1e-4)


def test_train_mode_hooked_and_untraceable_modules_run_as_they_are():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace it
                return self.bn(self.conv(x))
            return x

    folder = EvalFolder()
    net = Branchy()
    assert folder.prepare(net) is net and not folder.folded  # train mode: batch statistics
    net.eval()
    assert folder.prepare(net) is net and not folder.folded
    enc = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1").encoder.eval()
    assert folder.prepare(enc) is not enc and folder.folded
    hook = enc.layer1[0].register_forward_hook(lambda m, args, out: None)  # the copy would skip it
    assert folder.prepare(enc) is enc and not folder.folded
    hook.remove()
