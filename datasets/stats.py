"""Per-dataset normalisation statistics (mean, std per RGB channel of images in [0,1])."""
from __future__ import annotations

import torch

# The values the paper code's loaders use (recorded in official_ckpt_layouts/README.md), so our
# models see the inputs the published ones were trained on and imported checkpoints work unchanged.
FIXED_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.50708, 0.48655, 0.44092), (0.26733, 0.25644, 0.27615)),
    "tinyimagenet": ((0.5141, 0.5775, 0.3985), (0.2927, 0.2570, 0.1434)),
    "facescrub": ((0.5708, 0.5905, 0.4272), (0.2058, 0.2275, 0.2098)),
}


def compute_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Channel mean/std of uint8 (N,3,H,W) images, scaled to [0,1].

    Accumulates integer-exact sums in float64 chunk by chunk so a large set never becomes one float copy.
    """
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        b = x[s:s + chunk].to(torch.float64)
        total += b.sum(dim=(0, 2, 3))
        total_sq += b.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    # A constant channel (e.g. blank grayscale borders only) would divide by zero when normalising.
    std = var.sqrt().clamp_min(1e-3 * 255)
    return tuple(round(v / 255.0, 6) for v in mean.tolist()), tuple(round(v / 255.0, 6) for v in std.tolist())
