#!/usr/bin/env python
"""Images/second for one training epoch without CEM (lambda 0) and with CEM (lambda 16), same data.

The CEM epoch includes its per-epoch refresh (features of the training set + batched k-means), as
in training. `--classes 100` relabels the images into 100 classes (only the label count matters for
CEM's cost), since CIFAR-100 itself may not be on the machine.

  python benchmarks/bench_train.py --data_root ../shared/data            # CIFAR-10 subset, CPU
  python benchmarks/bench_train.py --data_root ../shared/data --classes 100 --repeat 12 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architectures import build_split_model  # noqa: E402
from datasets import TensorSplit, load_dataset  # noqa: E402
from defenses import build_defenses  # noqa: E402
from model_training import Trainer, TrainSettings  # noqa: E402
from utils import resolve_device, seed_everything  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_trainer(bundle, lambd, args, device, tmp):
    seed_everything(0)
    model = build_split_model(args.arch, args.cutlayer, bundle.num_classes, bundle.image_size, args.bottleneck)
    cfg = {"regularization": "Gaussian_kl", "regularization_strength": args.sigma, "lambd": lambd,
           "var_threshold": 0.125, "arch": args.arch, "cem_lr_coupling": "paper", "compile": args.compile}
    defenses = build_defenses(cfg, bundle.num_classes, len(bundle.train))
    settings = TrainSettings(num_epochs=240, batch_size=args.batch_size, bf16=args.bf16,
                             channels_last=args.channels_last)
    trainer = Trainer(model, bundle, defenses, device, tmp, settings, progress=False)
    # Two untimed epochs: allocator and kernels, the first (k-means++) refresh, and on CUDA the
    # one-off compile of the CEM loss, which only starts once CEM has state.
    for e in range(2):
        trainer.train_epoch(e)
        defenses.on_epoch_end(trainer)
    return trainer


def timed_epoch(trainer, epoch, device):
    """Seconds for one epoch including the end-of-epoch refresh, and the refresh alone."""
    sync(device)
    t0 = time.perf_counter()
    trainer.train_epoch(epoch)
    sync(device)
    t1 = time.perf_counter()
    trainer.defenses.on_epoch_end(trainer)  # CEM's refresh is part of its per-epoch cost
    sync(device)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data_root", default="../shared/data")
    p.add_argument("--classes", type=int, default=None, help="relabel into this many classes (e.g. 100)")
    p.add_argument("--repeat", type=int, default=1, help="tile the training set N times (GPU-sized epochs)")
    p.add_argument("--arch", default="vgg11_bn_sgm")
    p.add_argument("--cutlayer", type=int, default=4)
    p.add_argument("--bottleneck", default="noRELU_C8S1")
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--lambd", type=float, default=16.0)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (after two warm-up epochs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--no_channels_last", dest="channels_last", action="store_false")
    p.add_argument("--no_compile", dest="compile", action="store_false", help="CEM loss in eager mode on CUDA")
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    bundle = load_dataset(args.dataset, args.data_root, select_on="test")
    x, y = bundle.train.x, bundle.train.y
    if args.repeat > 1:
        x, y = x.repeat(args.repeat, 1, 1, 1), y.repeat(args.repeat)
    if args.classes:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, args.classes, (len(y),), generator=g)
        bundle.num_classes = args.classes
    bundle.train = TensorSplit(x=x, y=y)
    tmp = Path("/tmp") / "bench_train"
    n = len(bundle.train)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"{n} images/epoch, {bundle.num_classes} classes, {args.arch} cut {args.cutlayer} {args.bottleneck}, "
          f"batch {args.batch_size}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"bf16 {args.bf16}, CEM compile {args.compile and device.type == 'cuda'}")
    lambdas = (0.0, args.lambd)
    trainers = {lam: make_trainer(bundle, lam, args, device, tmp / f"l{lam:g}") for lam in lambdas}
    times = {lam: [] for lam in lambdas}
    refresh = {lam: [] for lam in lambdas}
    for e in range(2, 2 + args.epochs):  # interleaved, so drift on a shared machine hits both alike
        for lam in lambdas:
            t, r = timed_epoch(trainers[lam], e, device)
            times[lam].append(t)
            refresh[lam].append(r)
    res = {}
    for lam in lambdas:
        best, med = min(times[lam]), sorted(times[lam])[len(times[lam]) // 2]
        res[lam] = med
        print(f"lambda {lam:g}: epoch median {med:.2f} s (min {best:.2f} s; end-of-epoch refresh "
              f"{min(refresh[lam]):.2f} s), {n / med:.0f} images/s")
    ratio = res[args.lambd] / res[0.0]
    print(f"CEM time ratio, medians (lambda {args.lambd:g} / lambda 0): {ratio:.3f}  -> "
          f"{100 * (ratio - 1):+.1f}% per epoch over {args.epochs} interleaved epochs")


if __name__ == "__main__":
    main()
