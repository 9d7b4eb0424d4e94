"""scikit-learn's handwritten digits (1797 real 8x8 scans, bundled with the library, so always offline),
upsampled to 32x32 RGB so CIFAR-sized models run unchanged. The offline fallback for quick runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import RawData, TensorSplit, generator, split_fraction

IMAGE_SIZE = 32
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0  # fixed, so every run of a sweep reports accuracy on the same images


def load_digits_data(data_root=None, download: bool = True) -> RawData:
    from sklearn.datasets import load_digits  # sklearn is slow to import; only pay for it here

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)  # values are 0..16
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    full = TensorSplit(x, torch.as_tensor(d.target, dtype=torch.int64))
    train, test = split_fraction(full, TEST_FRACTION, generator(TEST_SPLIT_SEED, "test-split"), "digits test split")
    return RawData(train, test, 10, [str(i) for i in range(10)])
