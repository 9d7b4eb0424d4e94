"""NoPeek: the encoder adds strength * dCor(x, z), the distance correlation between the input batch
and its clean features, so the features carry less (nonlinear) dependence on the input."""
from __future__ import annotations

import torch

from defenses.base import Defense
from defenses.registry import register_at


def _centered_distances(v: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(v, v)  # cdist's backward is 0 (not NaN) at the zero diagonal
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Sample distance correlation (Szekely et al.) of two batches, each flattened per sample; in [0, 1]."""
    a = _centered_distances(x.reshape(x.shape[0], -1).float())
    b = _centered_distances(z.reshape(z.shape[0], -1).float())
    dcov2_xz = (a * b).mean()
    dvar2 = (a * a).mean() * (b * b).mean()
    return (dcov2_xz.clamp_min(0.0) / (dvar2.sqrt() + eps)).add(eps).sqrt()


class NoPeek(Defense):
    name = "nopeek"

    def __init__(self, strength: float):
        self.strength = float(strength)

    def encoder_loss(self, z, x, y, lr):
        if self.strength == 0 or z.shape[0] < 2:
            return None
        return self.strength * distance_correlation(x, z)


@register_at("nopeek")
def _build(opts, ctx):
    return NoPeek(opts.strength)
