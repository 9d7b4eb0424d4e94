"""Inversion decoders used by the attacks (and by the adversarial-training defence).

A decoder maps obfuscated features z (B, C, H, W) back to images (B, out_channels, S, S) in [0, 1].
Every size is derived from the real `feature_shape` and `image_size` so one name works for any
architecture, cut layer and dataset.

Names (N >= 0 blocks at C >= 1 channels):
  res_normN{N}C{C}     the published decoder (the authors' `res_normN_AE`), described in words in
                       ../shared/data/official_ckpt_layouts/README.md and pinned by its
                       golden_decoder_*.json fixtures, with the published state-dict key names.
  res_normN{N}C{C}_v0  this project's earlier decoder that carried the name res_normN{N}C{C}
                       (kept so old results can be compared and old saved decoders reloaded).
  conv_normN{N}C{C}    the earlier layout with plain conv3x3-BN-ReLU blocks.

Upsampling count (all names): u = log2(S / H_z) from the real feature height. The published attack
script passes H_z = 8 whatever the cut layer, which at cut 3 (16x16 features) builds a decoder for a
64-pixel output; we always use the true size. When S / H_z is not a power of two (or H_z > S),
u = ceil(log2(S / H_z)) and one resampling to exactly S follows the last upsampling; that case has no
published counterpart.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import UserError

DECODER_GRAMMAR = ("res_normN{N}C{C} (the published decoder), res_normN{N}C{C}_v0 (this project's earlier "
                   "decoder) or conv_normN{N}C{C} (e.g. res_normN8C64, conv_normN4C32)")
_NAME_RE = re.compile(r"^(res|conv)_normN(\d+)C(\d+)(_v0)?$")


def _upsample_steps(h_z: int, image_size: int) -> int:
    """Number of x2 steps: exact log2 for power-of-two ratios, else enough to reach >= image_size."""
    if h_z >= image_size:
        return 0
    return max(0, math.ceil(math.log2(image_size / h_z) - 1e-9))


class Resize(nn.Module):
    """Resampling to exactly `size`; only for feature/image ratios that are not a power of two."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        size = (self.size, self.size)
        if h.shape[-1] > self.size:  # area averaging does not alias when shrinking
            return F.interpolate(h, size=size, mode="area")
        return F.interpolate(h, size=size, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------ the published decoder
class ResBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 added to the shortcut: the input itself, or a 1x1 conv + BN of
    it when the width changes. No activation after the sum: the decoder puts a ReLU after each block.
    Attribute names follow the published module so its state dicts load strictly."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
                         if c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn0(x), inplace=True))
        out = self.conv2(F.relu(self.bn1(out), inplace=True))
        return out + self.shortcut(x)


def _up(width: int) -> list:
    return [nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(width)]


class ResNormDecoder(nn.Module):
    """The published `res_normN{N}C{C}`: residual block C_in->C, ReLU; N x (residual block C->C, ReLU);
    two stages, each an upsampling (transposed conv + BN) while one is still needed, else a residual
    block C->C, each followed by ReLU; the remaining upsamplings (transposed conv + BN + ReLU); a
    residual block C->out_channels; Sigmoid. One `nn.Sequential` `m`, so keys read `m.<i>.…` as
    published (a `Resize`, only for non-power-of-two ratios, shifts the indices after it)."""

    def __init__(self, n_blocks: int, width: int, feature_shape: Sequence[int], image_size: int,
                 out_channels: int = 3):
        super().__init__()
        c_in, h_z, w_z = (int(v) for v in feature_shape)
        self.name = f"res_normN{n_blocks}C{width}"
        self.feature_shape, self.image_size, self.out_channels = (c_in, h_z, w_z), int(image_size), int(out_channels)
        self.n_up = _upsample_steps(max(h_z, w_z), self.image_size)
        layers: list[nn.Module] = [ResBlock(c_in, width), nn.ReLU(inplace=True)]
        for _ in range(n_blocks):
            layers += [ResBlock(width, width), nn.ReLU(inplace=True)]
        for stage in range(2):
            layers += (_up(width) if stage < self.n_up else [ResBlock(width, width)]) + [nn.ReLU(inplace=True)]
        for _ in range(self.n_up - 2):
            layers += _up(width) + [nn.ReLU(inplace=True)]
        if (h_z * 2 ** self.n_up, w_z * 2 ** self.n_up) != (self.image_size, self.image_size):
            layers.append(Resize(self.image_size))
        layers += [ResBlock(width, self.out_channels), nn.Sigmoid()]
        self.m = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:  # flattened features from a caller that kept z as vectors
            z = z.view(z.shape[0], *self.feature_shape)
        return self.m(z)


# ------------------------------------------------------------------ this project's earlier designs
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


class Decoder(nn.Module):
    """`res_normN{N}C{C}_v0` / `conv_normN{N}C{C}`: conv3x3 (feature channels -> C) + BN + ReLU,
    N blocks (pre-activation residual, or conv-BN-ReLU), u transposed convs (each + BN + ReLU), the
    resampling when needed, then conv3x3 (C -> out_channels) and a Sigmoid."""

    def __init__(self, kind: str, n_blocks: int, width: int, feature_shape: Sequence[int],
                 image_size: int, out_channels: int = 3):
        super().__init__()
        c_in, h_z, w_z = (int(v) for v in feature_shape)
        self.name = f"res_normN{n_blocks}C{width}_v0" if kind == "res_v0" else f"conv_normN{n_blocks}C{width}"
        self.feature_shape = (c_in, h_z, w_z)
        self.image_size, self.out_channels = int(image_size), int(out_channels)

        layers: list[nn.Module] = [
            nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        ]
        block = PreActResBlock if kind == "res_v0" else _conv_block
        layers += [block(width) for _ in range(n_blocks)]
        self.n_up = _upsample_steps(max(h_z, w_z), self.image_size)
        for _ in range(self.n_up):
            layers += [
                nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        reached = (h_z * 2 ** self.n_up, w_z * 2 ** self.n_up)
        self.resize = Resize(self.image_size) if reached != (self.image_size, self.image_size) else None
        self.head = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z.view(z.shape[0], *self.feature_shape)
        h = self.body(z)
        if self.resize is not None:
            h = self.resize(h)
        return torch.sigmoid(self.head(h))


# ------------------------------------------------------------------ names and building
def parse_decoder_name(name: str) -> tuple[str, int, int]:
    """(kind, N, C) with kind 'res' (published), 'res_v0' or 'conv'; a UserError for anything else."""
    m = _NAME_RE.match(str(name))
    if not m or (m.group(1) == "conv" and m.group(4)):
        raise UserError(f"unknown decoder '{name}'; use {DECODER_GRAMMAR}")
    kind, n, c = m.group(1) + (m.group(4) or ""), int(m.group(2)), int(m.group(3))
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
    if kind == "res":
        return ResNormDecoder(n, c, shape, int(image_size), out_channels)
    return Decoder(kind, n, c, shape, int(image_size), out_channels)


def state_mismatch(module: nn.Module, state: dict) -> Optional[str]:
    """None when `state` loads strictly into `module`, else the first difference in a few words.

    Checked before loading because a failed strict load has already copied the matching tensors."""
    ours = module.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    if missing or unexpected:
        return (f"{len(missing)} missing / {len(unexpected)} unexpected tensors (first: "
                f"'{(missing or unexpected)[0]}')")
    for k, v in ours.items():
        if tuple(state[k].shape) != tuple(v.shape):
            return f"'{k}' is {tuple(state[k].shape)}, not {tuple(v.shape)}"
    return None
