"""Gaussian noise on the sent features: z~ = z + sigma * eps, fresh eps every forward."""
from __future__ import annotations

import torch

from defenses.base import Defense


class GaussianNoise(Defense):
    name = "noise"
    in_noise_only_view = True

    def __init__(self, sigma: float):
        if sigma < 0:
            raise ValueError("sigma must be >= 0")
        self.sigma = float(sigma)

    def obfuscate(self, z: torch.Tensor, training: bool) -> torch.Tensor:
        # Applied in training and at inference alike: the noise is part of what the device sends.
        if self.sigma == 0.0:
            return z
        return z + self.sigma * torch.randn_like(z)
