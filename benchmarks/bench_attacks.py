#!/usr/bin/env python
"""Cost of the three attacks on CIFAR-sized data: seconds per decoder epoch, per GAN epoch and per
rMLE image batch, for the paper's target (vgg11_bn_sgm, cut 4, noRELU_C8S1, noise σ 0.05).

Random images stand in for data (cost does not depend on pixel values); the model is untrained
(cost does not depend on weights). Epoch times scale linearly with the number of attacker images.

  python benchmarks/bench_attacks.py --n 2000                       # CPU
  python benchmarks/bench_attacks.py --n 45000 --device cuda        # GPU (paper: 45,000 CIFAR images)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architectures import build_split_model  # noqa: E402
from attacks.base import Context  # noqa: E402
from attacks.decoder import DecoderAttack  # noqa: E402
from attacks.gan import GANAttack  # noqa: E402
from attacks.optimization import RMLEAttack  # noqa: E402
from utils import resolve_device  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="attacker images per epoch (default: %(default)s)")
    p.add_argument("--rmle_images", type=int, default=500, help="images optimised at once (default: %(default)s)")
    p.add_argument("--rmle_steps", type=int, default=20, help="timed rMLE steps (default: %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--generator", default="res_normN8C64")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_split_model("vgg11_bn_sgm", 4, 10, 32, "noRELU_C8S1").to(device).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, device=device)
    ctx = Context(encoder=model.encoder, obfuscate=lambda z: z + 0.05 * torch.randn_like(z),
                  feature_shape=tuple(model.feature_shape), mean=MEAN, std=STD, x_fit=x, x_held=None, x_eval=x[:10],
                  device=device)
    print(f"device {device}, {args.n} attacker images, target vgg11_bn_sgm cut 4, features {ctx.feature_shape}")
    for label, attack in [("decoder epoch (batch 256)", DecoderAttack(args.generator, epochs=2, device=device,
                                                                      progress=False, capture="off")),
                          ("GAN epoch (batch 128, n_critic 10)", GANAttack(args.generator, epochs=2, device=device,
                                                                           progress=False, log=lambda m: None))]:
        attack.build(ctx)
        gen = torch.Generator().manual_seed(0)
        attack.train_epoch(ctx, 1, gen)  # warm-up: allocator, kernels, feature cache
        sec = timed(lambda: attack.train_epoch(ctx, 2, gen), device)  # noqa: B023 (called now)
        print(f"{label}: {sec:.2f} s  ({args.n / sec:.0f} img/s; x{45000 / args.n:.1f} for 45,000 images)")
    rmle = RMLEAttack(steps=args.rmle_steps, device=device, progress=False)
    z = ctx.obfuscate(rmle.encode(ctx, x[:args.rmle_images]))
    w0 = torch.zeros(1, 3, 32, 32, device=device)
    rmle.steps = 2
    rmle.invert(ctx, z, w0)  # warm-up
    rmle.steps = args.rmle_steps
    sec = timed(lambda: rmle.invert(ctx, z, w0), device)
    per_step = sec / args.rmle_steps
    per_image = per_step * 500 / args.rmle_images  # seconds for 500 steps, per image
    print(f"rMLE: {per_step * 1000:.1f} ms per step for {args.rmle_images} images -> 500 steps on 1,000 images "
          f"{per_image * 1000:.0f} s, on 10,000 {per_image * 10000:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
