"""NoPeek: the encoder adds w * dCor(x, z), the distance correlation between the input batch and its
clean features, so the features carry less (nonlinear) dependence on the input.

w = 0.1 * strength, times 10 on CIFAR-10, as the published code weighs it (its CIFAR-10 scripts were
tuned with that factor; a strength therefore means the same as in the paper's tables)."""
from __future__ import annotations

import torch

from defenses.at_options import LEGACY_AT_VERSION
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


def nopeek_weight(strength: float, dataset: str) -> float:
    """The published weight of dCor for an `--AT_regularization_strength` on a dataset."""
    return 0.1 * float(strength) * (10.0 if str(dataset) == "cifar10" else 1.0)


class NoPeek(Defense):
    name = "nopeek"

    def __init__(self, weight: float):
        self.weight = float(weight)

    def encoder_loss(self, z, x, y, lr):
        if self.weight == 0 or z.shape[0] < 2:
            return None
        return self.weight * distance_correlation(x, z)


@register_at("nopeek")
def _build(opts, ctx):
    if opts.version == LEGACY_AT_VERSION:  # a run recorded when the weight was the strength itself
        return NoPeek(opts.strength)
    return NoPeek(nopeek_weight(opts.strength, ctx.cfg.get("dataset", "")))
