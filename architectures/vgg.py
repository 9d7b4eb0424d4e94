"""VGG trunks for split learning, built from the config lists so any input size works."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch.nn as nn

CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}

EXTRA_PLANES = 16  # width of PATROL's extra device layer

# arch -> (config name, batch norm, sigmoid-terminated encoder)
VGG_ARCHS = {
    "vgg11": ("vgg11", False, False),
    "vgg11_bn": ("vgg11", True, False),
    "vgg11_bn_sgm": ("vgg11", True, True),
    "vgg13": ("vgg13", False, False),
    "vgg13_bn": ("vgg13", True, False),
}


def vgg_num_layers(arch: str) -> int:
    return len(CFGS[VGG_ARCHS[arch][0]])


def vgg_is_sigmoid(arch: str) -> bool:
    return VGG_ARCHS[arch][2]


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    block = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)]
    if batch_norm:
        block.append(nn.BatchNorm2d(c_out))
    block.append(nn.ReLU(inplace=True))
    return nn.Sequential(*block)


def vgg_trunk(arch: str, in_channels: int = 3) -> List[nn.Module]:
    """One module per config entry (max-pools included), so list index == layer number - 1."""
    cfg_name, batch_norm, _ = VGG_ARCHS[arch]
    layers: List[nn.Module] = []
    c = in_channels
    for v in CFGS[cfg_name]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(_conv_block(c, v, batch_norm))
        c = v
    return layers


def vgg_extra_layer(arch: str, cutlayer: int) -> Optional[Tuple[int, nn.Module, int]]:
    """PATROL's extra device layer: (trunk position, module, trunk input channels), or None.

    A conv 3->16 (+BN as the arch has it) + ReLU in front, so the first config conv reads 16
    channels; the paper code adds it only when the cut is at layer 2 or later.
    """
    if cutlayer < 2:
        return None
    return 0, _conv_block(3, EXTRA_PLANES, VGG_ARCHS[arch][1]), EXTRA_PLANES


def vgg_head(trunk_shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """Flatten -> Dropout-Linear-ReLU-Dropout-Linear-ReLU-Linear with F from the real feature size."""
    c, h, w = trunk_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Dropout(),
        nn.Linear(c * h * w, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
