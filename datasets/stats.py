"""Per-dataset normalisation statistics (mean, std per RGB channel of images in [0,1])."""
from __future__ import annotations

import torch

# Published values, fixed so results stay comparable with other work on these datasets.
# facescrub uses 0.5/0.5 as the published ResSFL/CEM code does.
FIXED_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "facescrub": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
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
