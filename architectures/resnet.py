"""ResNet trunks for split learning.

`resnet20`: the paper's TinyImageNet variant (5x5 stem, stages of 32/64/128 planes that all start
with stride 2, parameter-free subsampling shortcut with the zero channels appended after the input's;
sigmoid-terminated encoder).
`resnet20_std` / `resnet32`: the CIFAR ResNets of He et al. (3x3 stem, 16/32/64 planes, strides
1/2/2, option-A shortcut). Layers are counted stem = 1, then one per basic block.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch.nn as nn
import torch.nn.functional as F

# arch -> (stem kernel, planes per stage, first stride per stage, blocks per stage, shortcut zero channels
#          appended after the input's (paper) instead of split on both sides (He et al.), sigmoid encoder)
RESNET_ARCHS = {
    "resnet20": (5, (32, 64, 128), (2, 2, 2), 3, True, True),
    "resnet20_std": (3, (16, 32, 64), (1, 2, 2), 3, False, False),
    "resnet32": (3, (16, 32, 64), (1, 2, 2), 5, False, False),
}
STEM_PLANES = 16


class PadShortcut(nn.Module):
    """Parameter-free shortcut: stride subsampling plus zero channels to match planes.

    Subsampling every `stride`-th pixel gives ceil(n / 2), matching the block's stride-2 3x3 conv (the
    paper's shortcut is an average pool with a 1x1 window, i.e. the same subsampling). Where the zero
    channels go changes the function, since the sum with the block's output is per channel: the paper
    appends them after the input's (`zeros_after`), He et al.'s option A splits them on both sides.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, zeros_after: bool):
        super().__init__()
        self.extra = out_planes - in_planes
        self.stride = stride
        self.zeros_after = zeros_after

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra > 0:
            lo = 0 if self.zeros_after else self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}, zeros_after={self.zeros_after}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, zeros_after: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(in_planes, planes, stride, zeros_after)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet_num_layers(arch: str) -> int:
    return 1 + 3 * RESNET_ARCHS[arch][3]


def resnet_is_sigmoid(arch: str) -> bool:
    return RESNET_ARCHS[arch][5]


def resnet_trunk(arch: str, in_channels: int = 3) -> List[nn.Module]:
    """Stem followed by the basic blocks, one list entry per counted layer."""
    stem_k, planes, strides, n_blocks, zeros_after, _ = RESNET_ARCHS[arch]
    layers: List[nn.Module] = [nn.Sequential(
        nn.Conv2d(in_channels, STEM_PLANES, stem_k, stride=1, padding=stem_k // 2, bias=False),
        nn.BatchNorm2d(STEM_PLANES),
        nn.ReLU(inplace=True),
    )]
    c = STEM_PLANES
    for p, s in zip(planes, strides):
        for i in range(n_blocks):
            layers.append(BasicBlock(c, p, s if i == 0 else 1, zeros_after))
            c = p
    return layers


def resnet_extra_layer(arch: str, cutlayer: int) -> Optional[Tuple[int, nn.Module, int]]:
    """PATROL's extra device layer: (trunk position, module, trunk input channels).

    A bare 3x3 conv stem->stem channels (no bias, BN or ReLU) right after the stem, as the paper code.
    """
    return 1, nn.Conv2d(STEM_PLANES, STEM_PLANES, 3, padding=1, bias=False), 3


def resnet_head(trunk_shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(trunk_shape[0], num_classes))
