"""WGAN-GP critic of the GAN inversion attack: the published `DGWGAN32`, a fully convolutional critic.

5x5 stride-2 convs (channels -> 64 -> 128 -> 256), LeakyReLU 0.2, instance norm with affine parameters
after the second and third (no batch norm: the gradient penalty is defined per sample), then a 4x4 conv
(256 -> 1, no padding). At 32 px that leaves one score per image; at 48 and 64 px a 3x3 and a 5x5 map,
so the published critic scores 9 and 25 overlapping patches per image, and so does this one: the
output is (B, P) with P patches, pinned by golden_critic_DGWGAN32_{32,48,64}px.json. The GAN loss
averages over every score (the published mean over the flattened output) and takes the gradient
penalty on each image's summed scores (the published `grad_outputs` of ones), so the objective is the
published one at every size. Attribute names follow the published module so its state dicts load
strictly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from utils import UserError

WIDTH = 64
MIN_SIZE = 9  # instance norm needs more than one position after the third conv (9 -> 5 -> 3 -> 2)


def _map_size(size: int) -> int:
    for _ in range(3):
        size = (size + 2 * 2 - 5) // 2 + 1  # kernel 5, stride 2, padding 2
    return size


def _conv_norm(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 5, 2, 2), nn.InstanceNorm2d(c_out, affine=True),
                         nn.LeakyReLU(0.2))


class Critic(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if int(image_size) < MIN_SIZE:
            raise UserError(f"the GAN critic needs images of at least {MIN_SIZE} pixels (got {image_size})")
        self.image_size = int(image_size)
        self.layer1 = nn.Sequential(nn.Conv2d(int(in_channels), WIDTH, 5, 2, 2), nn.LeakyReLU(0.2))
        self.layer2 = _conv_norm(WIDTH, 2 * WIDTH)
        self.layer3 = _conv_norm(2 * WIDTH, 4 * WIDTH)
        # Below 25 px the map is smaller than the published 4x4 kernel; a kernel the size of the map
        # keeps such images scoreable (one score each; no published counterpart).
        s = _map_size(self.image_size)
        kernel = min(4, s)
        self.layer4 = nn.Conv2d(4 * WIDTH, 1, kernel)
        self.n_patches = (s - kernel + 1) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, P) unbounded scores, P = 1 up to 32 px, 9 at 48 px, 25 at 64 px."""
        return self.layer4(self.layer3(self.layer2(self.layer1(x)))).flatten(1)


def build_critic(in_channels: int, image_size: int) -> Critic:
    return Critic(in_channels, image_size)
