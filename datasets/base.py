"""Containers for in-memory image data, input validation and the seeded splits that define data roles."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from utils import UserError


@dataclass(eq=False)  # tensors have no single truth value; compare by identity
class TensorSplit:
    """Images as uint8 (N,3,H,W) and labels as int64 (N,), both on the CPU.

    uint8 keeps a 64 px dataset of 100k images at 1.2 GB; conversion to float happens per batch.
    """

    x: torch.Tensor
    y: torch.Tensor
    # Device copies made by BatchLoader, kept here so several loaders over one split share one copy.
    _device_copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4 or self.x.shape[1] != 3:
            raise ValueError(f"TensorSplit.x must be uint8 (N,3,H,W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dim() != 1 or len(self.y) != len(self.x):
            raise ValueError(f"TensorSplit.y must be (N,) matching x, got {tuple(self.y.shape)} for N={len(self.x)}")
        self.y = self.y.to(torch.int64)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.x[idx].contiguous(), self.y[idx].contiguous())

    def on_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        key = str(device)
        hit = self._device_copies.get(key)
        # The source check guards against a caller replacing .x/.y after a copy was made.
        if hit is None or hit[0] is not self.x or hit[1] is not self.y:
            hit = (self.x, self.y, self.x.to(device), self.y.to(device))
            self._device_copies[key] = hit
        return hit[2], hit[3]


@dataclass(eq=False)
class DataBundle:
    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    train: TensorSplit
    val: Optional[TensorSplit]
    test: TensorSplit
    class_names: Optional[list] = None


@dataclass
class RawData:
    """What a dataset family's loader returns, before roles (limits, validation split) are applied."""

    train: TensorSplit
    test: TensorSplit
    num_classes: int
    class_names: Optional[list] = None
    mean: Optional[tuple] = None  # None: computed from the training images
    std: Optional[tuple] = None

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])


def derive_seed(*parts) -> int:
    """A 63-bit seed from ints and strings; distinct tuples give unrelated streams (no seed+1 overlaps)."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) % (2**63) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def images_from_array(x: np.ndarray, y: np.ndarray, source: str) -> TensorSplit:
    """Check an (N,H,W,3) uint8 image array (grayscale (N,H,W) or (N,H,W,1) allowed) and labels.

    `source` names the file in error messages.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise UserError(f"{source}: images 'x' must be uint8 (0..255), got {getattr(x, 'dtype', type(x))}; "
                        "convert with x.astype(np.uint8) after scaling to 0..255")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UserError(f"{source}: images 'x' must have shape (N,H,W,3) or (N,H,W), got {x.shape}")
    if x.shape[1] != x.shape[2]:
        raise UserError(f"{source}: images must be square, got {x.shape[1]}x{x.shape[2]}; crop or resize them first")
    if x.shape[0] == 0:
        raise UserError(f"{source}: contains no images")
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{source}: labels 'y' must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != len(x):
        raise UserError(f"{source}: {len(x)} images but {len(y)} labels; 'x' and 'y' must have the same length")
    if y.min() < 0:
        raise UserError(f"{source}: labels must be 0..C-1, found {int(y.min())}")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return TensorSplit(t.contiguous(), torch.from_numpy(y.astype(np.int64)))


def random_partition(n: int, n_first: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random disjoint index sets of sizes n_first and n - n_first, each sorted to keep the source order."""
    perm = torch.randperm(n, generator=gen)
    return perm[:n_first].sort().values, perm[n_first:].sort().values


def split_fraction(split: TensorSplit, fraction: float, gen: torch.Generator,
                   what: str) -> tuple[TensorSplit, TensorSplit]:
    """(rest, held_out) with held_out a random `fraction` of the split; both non-empty."""
    n = len(split)
    n_out = int(round(n * fraction))
    n_out = min(max(n_out, 1), n - 1)
    if n < 2:
        raise UserError(f"cannot hold out {what}: only {n} image(s); use more data")
    held, rest = random_partition(n, n_out, gen)
    return split.subset(rest), split.subset(held)


def random_limit(split: TensorSplit, limit: Optional[int], gen: torch.Generator) -> TensorSplit:
    if limit is None or limit >= len(split):
        return split
    keep, _ = random_partition(len(split), int(limit), gen)
    return split.subset(keep)


def class_names_or_none(names: Optional[Sequence], num_classes: int) -> Optional[list]:
    if names is None or len(names) != num_classes:
        return None
    return [str(n) for n in names]
