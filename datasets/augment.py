"""Batched training augmentation on the training device (DESIGN §4).

Random crop back to the image size after zero padding of size//8 px (4 px for 32 px CIFAR), horizontal
flip with p=0.5, rotation uniform in ±15° (bilinear, zero fill). All three are affine maps, so they are
composed into one 2x3 matrix per image and applied with a single affine_grid/grid_sample: one
resampling instead of three. Integer crop shifts land exactly on pixel centres, so without rotation the
result equals pad-then-crop pixel for pixel. One difference from the sequential torchvision pipeline:
pixels that a crop would discard and a rotation would then bring back into view are kept here instead
of zeroed (only in the corners, only when both crop and rotation move the image).

Random parameters are drawn on the CPU from the caller's generator (so a run replays exactly) for a
whole epoch at once; the matrices then go to the device in one transfer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPolicy:
    pad_fraction: float = 1 / 8  # padding = image_size * pad_fraction, i.e. size // 8
    flip: bool = True
    max_degrees: float = 15.0

    def padding(self, image_size: int) -> int:
        return int(image_size * self.pad_fraction)


DEFAULT_POLICY = AugmentPolicy()
# One policy for every dataset (DESIGN §4); a per-dataset entry here would override it.
POLICIES: dict[str, AugmentPolicy] = {}


def policy_for(dataset: str | None) -> AugmentPolicy:
    return POLICIES.get((dataset or "").lower(), DEFAULT_POLICY)


def sample_thetas(n: int, image_size: int, policy: AugmentPolicy, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine matrices mapping output to input coordinates in grid_sample's [-1, 1] units.

    For output position q the input is sampled at S·R·q + t, i.e. crop (t), then flip (S), then rotate (R).
    """
    pad = policy.padding(image_size)
    # Draw in a fixed order so the stream (and thus every batch) depends only on (seed, epoch).
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen, dtype=torch.int64)
    flips = torch.rand(n, generator=gen) < 0.5
    angles = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * policy.max_degrees
    if not policy.flip:
        flips.zero_()
    rad = angles * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sign = 1.0 - 2.0 * flips.to(torch.float64)
    shift = (offsets - pad).to(torch.float64) * (2.0 / image_size)  # pixels -> normalised units
    theta = torch.empty(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sign * cos
    theta[:, 0, 1] = -sign * sin
    theta[:, 0, 2] = shift[:, 0]
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = cos
    theta[:, 1, 2] = shift[:, 1]
    return theta.to(torch.float32)


def apply_thetas(x01: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp float images (B,C,H,W) with per-image matrices (B,2,3) on x01's device; zero fill outside."""
    grid = F.affine_grid(theta.to(x01.dtype), list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pinned_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU -> device without blocking the host: pinned memory makes non_blocking copies truly async."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
