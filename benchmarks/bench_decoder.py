#!/usr/bin/env python
"""Parameters and one training step's cost (forward + backward + Adam) of attack decoders, side by side:
by default the published res_normN8C64 against this project's earlier design res_normN8C64_v0, on the
default CIFAR features (8x8x8 -> 32 px), batch 256. Median of --repeat timed steps after --warmup,
the decoders taking turns within each round.

  python benchmarks/bench_decoder.py                                         # CPU, all its threads
  python benchmarks/bench_decoder.py --threads 1 --repeat 5
  python benchmarks/bench_decoder.py --device cuda --repeat 50
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architectures.decoders import build_decoder  # noqa: E402
from benchmarks.bench_attacks import timed  # noqa: E402
from utils import resolve_device  # noqa: E402


def make_step(name, shape, size, batch, device):
    """(parameter count, a function running one training step of decoder `name`)."""
    torch.manual_seed(0)
    dec = build_decoder(name, shape, size).to(device).train()
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    z, x = torch.rand(batch, *shape, device=device), torch.rand(batch, 3, size, size, device=device)

    def step():
        loss = F.mse_loss(dec(z), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return sum(p.numel() for p in dec.parameters()), step


def gflops(step) -> float:
    """Conv and matmul work of one step: a figure that a busy shared machine does not blur."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoders", default="res_normN8C64,res_normN8C64_v0")
    p.add_argument("--feature_shape", default="8,8,8", help="C,H,W of the features (default: %(default)s)")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    shape = tuple(int(v) for v in a.feature_shape.split(","))
    print(f"device {device}, {torch.get_num_threads()} CPU threads, features {shape} -> {a.image_size} px, "
          f"batch {a.batch}, median of {a.repeat} steps (forward + backward + Adam)")
    names = a.decoders.split(",")
    steps = {n: make_step(n, shape, a.image_size, a.batch, device) for n in names}
    times = {n: [] for n in names}
    # Rounds interleave the decoders so a busy shared machine slows all of them alike.
    for r in range(a.warmup + a.repeat):
        for n in names:
            t = timed(steps[n][1], device)
            if r >= a.warmup:
                times[n].append(t)
    rows = [(n, steps[n][0], statistics.median(times[n]), gflops(steps[n][1])) for n in names]
    base = rows[0][2]
    for name, params, sec, work in rows:
        print(f"  {name:<22} {params:>9,} params  {sec * 1000:8.1f} ms/step  {sec / base:5.2f}x  "
              f"{work:6.1f} GFLOP/step (conv + matmul)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
