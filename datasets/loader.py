"""BatchLoader: minibatches from an in-memory TensorSplit, entirely on the training device."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from utils import UserError

from .augment import apply_thetas, pinned_to, policy_for, sample_thetas
from .base import TensorSplit, generator


class BatchLoader:
    """Iterates (x, y): x float32 normalised (B,3,H,W) and y int64 (B,), both on `device`.

    The split is copied to the device once (shared between loaders over the same split). All
    randomness of an epoch (order, crop, flip, angle) comes from a CPU generator seeded with
    (seed, epoch), drawn when iteration starts and sent to the device in one transfer, so the loop
    never waits for the device and a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, split: TensorSplit, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 device, shuffle: bool = False, augment: bool = False, dataset: Optional[str] = None,
                 seed: int = 0, drop_last: bool = False, stream: str = "batches",
                 draw_block: Optional[int] = None):
        if int(batch_size) < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.shuffle, self.augment, self.drop_last = bool(shuffle), bool(augment), bool(drop_last)
        self.seed = int(seed)
        self.stream = stream  # names the random stream, so two loaders with one seed draw independently
        # Augmentation parameters are drawn for a whole number of blocks of this many images; a fixed
        # block (rather than the batch) lets a pass change its batch size without changing its draws.
        self.draw_block = int(draw_block or batch_size)
        self.epoch = 0
        self.policy = policy_for(dataset)
        self.x, self.y = split.on_device(self.device)
        self._mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self._std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs, nb = len(self.split), self.batch_size, len(self)
        order = thetas = None
        if self.shuffle or self.augment:
            gen = generator(self.seed, self.epoch, self.stream)
            if self.shuffle:
                order = pinned_to(torch.randperm(n, generator=gen), self.device)
            if self.augment:
                used = nb * bs if self.drop_last else n
                drawn = -(-used // self.draw_block) * self.draw_block  # nb * bs when the block is the batch
                thetas = pinned_to(sample_thetas(drawn, self.split.x.shape[-1], self.policy, gen), self.device)
        for b in range(nb):
            s, e = b * bs, min((b + 1) * bs, n)
            if order is None:
                xb, yb = self.x[s:e], self.y[s:e]
            else:
                idx = order[s:e]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            xb = xb.float().div_(255.0)
            if thetas is not None:
                xb = apply_thetas(xb, thetas[s:e])
            yield (xb - self._mean) / self._std, yb
