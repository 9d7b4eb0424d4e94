"""Small smooth uint8 images and a TensorSplit stand-in, for attack tests that need no dataset."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Split:  # stand-in with the contract's TensorSplit attributes only
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self):
        return self.x.shape[0]


def smooth_u8(n, size=16, seed=0):
    """n images upsampled from 4x4 random ones: smooth enough for a small decoder to learn quickly."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)
