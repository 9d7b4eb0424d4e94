"""WGAN-GP critic for the GAN inversion attack: one unbounded scalar per image.

Three 5x5 stride-2 convolutions (channels -> 64 -> 128 -> 256), LeakyReLU 0.2, instance norm with
affine parameters after the second and third (the input layer is left unnormalised, as usual for
WGAN-GP critics; batch norm is avoided because the gradient penalty is defined per sample), then a
linear layer over the final map. The map size is derived from `image_size` (32 -> 4x4, 48 -> 6x6,
64 -> 8x8), so the critic scores every dataset's images, not only 32-pixel ones.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from utils import UserError

WIDTHS = (64, 128, 256)


def _out_size(size: int) -> int:
    for _ in WIDTHS:
        size = (size + 2 * 2 - 5) // 2 + 1  # kernel 5, stride 2, padding 2
    return size


class Critic(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if int(image_size) < 8:
            raise UserError(f"the GAN critic needs images of at least 8 pixels (got {image_size})")
        layers, c = [], int(in_channels)
        for i, w in enumerate(WIDTHS):
            layers.append(nn.Conv2d(c, w, 5, stride=2, padding=2))
            if i > 0:
                layers.append(nn.InstanceNorm2d(w, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = w
        self.features = nn.Sequential(*layers)
        self.image_size = int(image_size)
        s = _out_size(self.image_size)
        self.head = nn.Linear(c * s * s, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B,) scores."""
        return self.head(self.features(x).flatten(1)).squeeze(1)


def build_critic(in_channels: int, image_size: int) -> Critic:
    return Critic(in_channels, image_size)
