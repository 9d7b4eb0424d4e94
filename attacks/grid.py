"""Reconstruction grids: originals on top, reconstructions below, column by column."""
from __future__ import annotations

import io
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from utils import write_file_atomic


def _pad_rows(t: torch.Tensor, total: int) -> torch.Tensor:
    if t.shape[0] == total:
        return t
    blank = torch.ones((total - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, blank])


def save_grid(originals: torch.Tensor, recons: torch.Tensor, path, nrow: int = 16, min_tile: int = 96) -> Path:
    """Write a PNG: the originals' row(s) above the reconstructions' row(s), same column order.

    Inputs are [0,1] batches (N, C, H, W). When N is not a multiple of the row length, both halves
    are padded with white tiles so each reconstruction sits exactly below its original. Small images
    are enlarged by an integer factor (nearest neighbour, so no detail is invented) until a tile is at
    least `min_tile` pixels wide: 32-pixel tiles are too small to judge on screen.
    """
    if originals.shape != recons.shape or originals.dim() != 4 or originals.shape[0] == 0:
        raise ValueError(f"save_grid needs two equal non-empty (N,C,H,W) batches, "
                         f"got {tuple(originals.shape)} and {tuple(recons.shape)}")
    originals = originals.detach().float().cpu().clamp(0, 1)
    recons = recons.detach().float().cpu().clamp(0, 1)
    n = originals.shape[0]
    per_row = max(1, min(nrow, n))
    total = math.ceil(n / per_row) * per_row
    tiles = torch.cat([_pad_rows(originals, total), _pad_rows(recons, total)])
    factor = max(1, -(-min_tile // tiles.shape[-1]))
    if factor > 1:
        tiles = F.interpolate(tiles, scale_factor=factor, mode="nearest")
    grid = make_grid(tiles, nrow=per_row, padding=2, pad_value=1.0)
    path = Path(path)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    write_file_atomic(path, buf.getvalue())  # the project's one writer: a link at `path` is never followed
    return path
