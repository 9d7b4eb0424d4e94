"""Inversion decoders used by the attacks (and by the adversarial-training defence).

A decoder maps obfuscated features z (B, C, H, W) back to images (B, out_channels, S, S) in [0, 1].
Every size is derived from the real `feature_shape` and `image_size` so one name works for any
architecture, cut layer and dataset.

Name grammar: ``res_normN{N}C{C}`` or ``conv_normN{N}C{C}``
  N: number of blocks at C channels (N >= 0), C: channel width (C >= 1).
  res_ : pre-activation residual blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3 + identity)
  conv_: plain conv3x3-BN-ReLU blocks
Layout: conv3x3 (feature channels -> C) + BN + ReLU, N blocks, k stride-2 transposed convs
(each + BN + ReLU), an interpolation to exactly S only when S / H_z is not a power of two (or
H_z > S), then conv3x3 (C -> out_channels) and a Sigmoid.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import UserError

DECODER_GRAMMAR = "res_normN{N}C{C} or conv_normN{N}C{C} (e.g. res_normN8C64, conv_normN4C32)"
_NAME_RE = re.compile(r"^(res|conv)_normN(\d+)C(\d+)$")


class PreActResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _conv_block(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
    )


def _upsample_steps(h_z: int, image_size: int) -> int:
    """Number of x2 steps: exact log2 for power-of-two ratios, else enough to reach >= image_size."""
    if h_z >= image_size:
        return 0
    return max(0, math.ceil(math.log2(image_size / h_z) - 1e-9))


class Decoder(nn.Module):
    def __init__(self, kind: str, n_blocks: int, width: int, feature_shape: Sequence[int],
                 image_size: int, out_channels: int = 3):
        super().__init__()
        c_in, h_z, w_z = (int(v) for v in feature_shape)
        self.name = f"{kind}_normN{n_blocks}C{width}"
        self.feature_shape = (c_in, h_z, w_z)
        self.image_size = int(image_size)

        layers: list[nn.Module] = [
            nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        ]
        block = PreActResBlock if kind == "res" else _conv_block
        layers += [block(width) for _ in range(n_blocks)]
        self.n_up = _upsample_steps(max(h_z, w_z), self.image_size)
        for _ in range(self.n_up):
            layers += [
                nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        reached = (h_z * 2 ** self.n_up, w_z * 2 ** self.n_up)
        # Only non-power-of-two ratios (or features larger than the image) need resampling.
        self.resize = reached != (self.image_size, self.image_size)
        self.head = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:  # flattened features from a caller that kept z as vectors
            z = z.view(z.shape[0], *self.feature_shape)
        h = self.body(z)
        if self.resize:
            size = (self.image_size, self.image_size)
            shrinking = h.shape[-1] > self.image_size
            h = F.interpolate(h, size=size, mode="area") if shrinking else \
                F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(h))


def parse_decoder_name(name: str) -> tuple[str, int, int]:
    m = _NAME_RE.match(str(name))
    if not m:
        raise UserError(f"unknown decoder '{name}'; use {DECODER_GRAMMAR}")
    kind, n, c = m.group(1), int(m.group(2)), int(m.group(3))
    if c < 1:
        raise UserError(f"decoder '{name}' has zero channels; use {DECODER_GRAMMAR} with C >= 1")
    return kind, n, c


def build_decoder(name: str, feature_shape: Sequence[int], image_size: int, out_channels: int = 3) -> nn.Module:
    """Decoder `name` for features of shape (C, H, W) producing (out_channels, image_size, image_size)."""
    kind, n, c = parse_decoder_name(name)
    shape = tuple(feature_shape)
    if len(shape) != 3 or min(int(v) for v in shape) < 1:
        raise UserError(f"decoder needs image-like features (C, H, W), got feature_shape {shape}; "
                        "cut the model earlier (a convolutional layer) to attack it with a decoder")
    if int(image_size) < 1:
        raise UserError(f"decoder image_size must be positive, got {image_size}")
    return Decoder(kind, n, c, shape, int(image_size), out_channels)
