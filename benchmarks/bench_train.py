#!/usr/bin/env python
"""Epoch times and images/second: training without CEM (lambda 0) and with it (lambda 16), eager
vs. captured (whole step as a CUDA graph), fp32 vs. bf16, and the decoder attack's epoch.

The CEM epoch includes its per-epoch refresh (features of the training set + batched k-means), as in
training. Settings are timed in interleaved epochs so drift on a shared machine hits all alike.
`--classes 100` relabels the images into 100 classes (only the label count matters for CEM's cost).

  python benchmarks/bench_train.py --data_root ../shared/data                       # CIFAR-10 subset, CPU
  python benchmarks/bench_train.py --data_root DIR --device cuda --modes eager,captured \\
      --precisions fp32,bf16 --attack_epochs 3 --json out.json                     # full CIFAR-10 on a GPU
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architectures import build_split_model  # noqa: E402
from datasets import TensorSplit, load_dataset  # noqa: E402
from defenses import build_defenses  # noqa: E402
from model_training import Trainer, TrainSettings  # noqa: E402
from utils import UserError, resolve_device, seed_everything  # noqa: E402

MODES = {"eager": "off", "captured": "on"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_trainer(bundle, lambd, mode, bf16, args, device, tmp):
    seed_everything(0)
    model = build_split_model(args.arch, args.cutlayer, bundle.num_classes, bundle.image_size, args.bottleneck)
    cfg = {"regularization": "Gaussian_kl", "regularization_strength": args.sigma, "lambd": lambd,
           "var_threshold": 0.125, "arch": args.arch, "cem_lr_coupling": "paper", "compile": args.compile}
    defenses = build_defenses(cfg, bundle.num_classes, len(bundle.train))
    settings = TrainSettings(num_epochs=240, batch_size=args.batch_size, bf16=bf16,
                             channels_last=args.channels_last, capture=MODES[mode])
    trainer = Trainer(model, bundle, defenses, device, tmp, settings, progress=False)
    # Two untimed epochs: allocator and kernels, the first (k-means++) refresh, the CEM loss's
    # compile (eager CUDA) or the graph capture, which starts once CEM has state.
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


def refresh_parts(trainer, device, batch: int = 0) -> dict:
    """Seconds of the three parts of CEM's refresh: drawing the augmented batches alone, the encoder
    pass (the trainer's feature pass minus that), and the k-means fit with the loss constants.
    `batch` replaces the trainer's no-grad batch size for this measurement (same augmentations)."""
    cem = trainer.defenses.find("cem")
    if batch:  # the loader reads its batch size per pass and draws in fixed blocks: same augmentations
        loader, old = trainer.aug_train_loader, trainer.aug_train_loader.batch_size
        loader.batch_size = batch
        try:
            return refresh_parts(trainer, device)
        finally:
            loader.batch_size = old
    trainer.aug_train_loader.set_epoch(trainer.epoch)
    sync(device)
    t0 = time.perf_counter()
    for _ in trainer.aug_train_loader:
        pass
    sync(device)
    t1 = time.perf_counter()
    z, y = trainer.train_features(augment=True)
    sync(device)
    t2 = time.perf_counter()
    cem.refresh(z, y)
    sync(device)
    t3 = time.perf_counter()
    return {"augment_s": t1 - t0, "encoder_s": (t2 - t1) - (t1 - t0), "kmeans_s": t3 - t2,
            "kmeans_iters": cem.kmeans_info.get("iters"), "batch": trainer.aug_train_loader.batch_size}


def profile_refresh(trainer, device, top: int) -> dict:
    """One CEM refresh under torch.profiler. The question it answers is where the refresh's time goes
    when its arithmetic cannot explain it: busy device time far below the wall time means launches or
    host-device syncs bound it (count the syncs), busy time near the wall time means the kernels do."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    cem = trainer.defenses.find("cem")
    sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        z, y = trainer.train_features(augment=True)
        cem.refresh(z, y)
        sync(device)
        wall = time.perf_counter() - t0
    avgs = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(avgs, key=lambda a: getattr(a, key), reverse=True)[:top]
    kernels = [e for e in prof.events() if cuda and e.device_type == torch.autograd.DeviceType.CUDA]
    syncs = sum(a.count for a in avgs if "Synchronize" in a.key or a.key in ("aten::item", "aten::_local_scalar_dense"))
    return {"wall_s": wall, "device_busy_s": sum(e.device_time for e in kernels) / 1e6 if cuda else None,
            "kernels": len(kernels) if cuda else None, "syncs": syncs, "kmeans_iters": cem.kmeans_info.get("iters"),
            "top": [{"op": a.key, "count": a.count, "self_s": getattr(a, key) / 1e6} for a in rows]}


def time_attack(bundle, trainer, mode, bf16, args, device):
    """Median epoch time of the decoder attack (train_time data), skipping its first epoch."""
    from attacks.decoder import DecoderAttack, attacker_splits

    fit, held, evals = attacker_splits(bundle, "train_time", 0)
    evals = TensorSplit(x=evals.x[:512], y=evals.y[:512])  # scoring is not what is timed
    attack = DecoderAttack(args.attack_decoder, epochs=args.attack_epochs + 1, device=device, progress=False,
                           capture=MODES[mode], bf16=bf16)
    res = attack.run(trainer.model, trainer.defenses.deployed(), fit, held, evals, bundle.mean, bundle.std)
    times = sorted(h["time_s"] for h in res.history[1:])
    return times[len(times) // 2], len(fit)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data_root", default="../shared/data")
    p.add_argument("--classes", type=int, default=None, help="relabel into this many classes (e.g. 100)")
    p.add_argument("--repeat", type=int, default=1, help="tile the training set N times (GPU-sized epochs)")
    p.add_argument("--limit_train", type=int, default=None, help="use the first N training images")
    p.add_argument("--arch", default="vgg11_bn_sgm")
    p.add_argument("--cutlayer", type=int, default=4)
    p.add_argument("--bottleneck", default="noRELU_C8S1")
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--lambd", type=float, default=16.0)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (after two warm-up epochs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--modes", default="eager", help="comma list of eager, captured (CUDA only)")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16 (bf16: CUDA autocast)")
    p.add_argument("--bf16", action="store_true", help="same as --precisions bf16")
    p.add_argument("--attack_epochs", type=int, default=0, help="also time the decoder attack (N timed epochs)")
    p.add_argument("--attack_decoder", default="res_normN8C64")
    p.add_argument("--refresh_parts", action="store_true",
                   help="also time CEM's refresh in parts: augmentation, encoder pass, k-means")
    p.add_argument("--refresh_batches", default="0", help="comma list of no-grad batch sizes for --refresh_parts "
                   "(0 = the trainer's own: 512 on CPU, 2048 at 32 px on CUDA)")
    p.add_argument("--profile_refresh", type=int, default=0, metavar="N",
                   help="also profile one CEM refresh and print its N most expensive ops, busy vs. wall time")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no_channels_last", dest="channels_last", action="store_false")
    p.add_argument("--no_compile", dest="compile", action="store_false", help="CEM loss in eager mode on CUDA")
    args = p.parse_args()
    device = resolve_device(args.device)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    precisions = ["bf16"] if args.bf16 else [q.strip() for q in args.precisions.split(",") if q.strip()]
    if not modes or any(m not in MODES for m in modes) or any(q not in ("fp32", "bf16") for q in precisions):
        raise SystemExit("error: --modes takes eager,captured and --precisions takes fp32,bf16")
    if "captured" in modes and device.type != "cuda":
        raise SystemExit(f"error: captured mode needs CUDA (device is {device.type}); use --modes eager")
    bundle = load_dataset(args.dataset, args.data_root, select_on="test")
    x, y = bundle.train.x, bundle.train.y
    if args.limit_train:
        x, y = x[:args.limit_train], y[:args.limit_train]
    if args.repeat > 1:
        x, y = x.repeat(args.repeat, 1, 1, 1), y.repeat(args.repeat)
    if args.classes:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, args.classes, (len(y),), generator=g)
        bundle.num_classes = args.classes
    bundle.train = TensorSplit(x=x, y=y)
    tmp = Path("/tmp") / "bench_train"
    n = len(bundle.train)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), {n} images/epoch, {bundle.num_classes} classes, {args.arch} cut "
          f"{args.cutlayer} {args.bottleneck}, batch {args.batch_size}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, CEM compile {args.compile and device.type == 'cuda'}", flush=True)
    settings = [(m, q, lam) for m in modes for q in precisions for lam in (0.0, args.lambd)]
    trainers, times, refresh = {}, {}, {}
    for s in settings:
        t0 = time.perf_counter()
        trainers[s] = make_trainer(bundle, s[2], s[0], s[1] == "bf16", args, device, tmp / "_".join(map(str, s)))
        times[s], refresh[s] = [], []
        st = trainers[s].stepper
        print(f"  prepared {s[0]} {s[1]} lambda {s[2]:g} in {time.perf_counter() - t0:.1f} s"
              + (f" (graphs captured: {st.captures}{', FAILED: ' + st.failed if st.failed else ''})"
                 if s[0] == "captured" else ""), flush=True)
    for e in range(2, 2 + args.epochs):
        for s in settings:
            t, r = timed_epoch(trainers[s], e, device)
            times[s].append(t)
            refresh[s].append(r)
    results = {"device": str(device), "device_name": name, "images_per_epoch": n, "classes": bundle.num_classes,
               "batch_size": args.batch_size, "torch": torch.__version__, "train": [], "attack": []}
    print(f"{'mode':9} {'prec':5} {'lambda':>6} {'epoch s':>8} {'min s':>7} {'refresh s':>9} {'img/s':>8} "
          f"{'CEM cost':>8}")
    for s in settings:
        med = sorted(times[s])[len(times[s]) // 2]
        base = sorted(times[(s[0], s[1], 0.0)])[len(times[s]) // 2]
        cost = f"{100 * (med / base - 1):+.1f}%" if s[2] else ""
        print(f"{s[0]:9} {s[1]:5} {s[2]:6g} {med:8.2f} {min(times[s]):7.2f} {min(refresh[s]):9.2f} "
              f"{n / med:8.0f} {cost:>8}", flush=True)
        results["train"].append({"mode": s[0], "precision": s[1], "lambda": s[2], "epoch_median_s": med,
                                 "epoch_min_s": min(times[s]), "refresh_min_s": min(refresh[s]),
                                 "images_per_s": n / med, "graphs": trainers[s].stepper.captures,
                                 "capture_failed": trainers[s].stepper.failed})
    for m in modes:
        base_eager = [r for r in results["train"] if r["mode"] == "eager"]
        mine = [r for r in results["train"] if r["mode"] == m]
        if m != "eager" and base_eager:
            speed = [b["epoch_median_s"] / r["epoch_median_s"] for b, r in zip(base_eager, mine)]
            print(f"{m} vs eager: {', '.join(f'{v:.2f}x' for v in speed)} (same order as above)")
    if args.refresh_parts:
        results["refresh_parts"] = []
        batches = [int(b) for b in args.refresh_batches.split(",") if b.strip()]
        for s, rb in [(s, rb) for s in settings if s[2] for rb in batches]:
            parts = refresh_parts(trainers[s], device, rb)
            print(f"refresh {s[0]} {s[1]} batch {parts['batch']}: "
                  + "  ".join(f"{k[:-2]} {v:.3f} s" for k, v in parts.items() if k.endswith("_s"))
                  + f"  (k-means {parts['kmeans_iters']} iterations)", flush=True)
            results["refresh_parts"].append({"mode": s[0], "precision": s[1], **parts})
    if args.profile_refresh:
        results["refresh_profile"] = []
        for s in settings:
            if s[2]:
                prof = profile_refresh(trainers[s], device, args.profile_refresh)
                busy = "" if prof["device_busy_s"] is None else \
                    f", device busy {prof['device_busy_s']:.3f} s in {prof['kernels']} kernels"
                print(f"refresh profile {s[0]} {s[1]}: wall {prof['wall_s']:.3f} s{busy}, {prof['syncs']} syncs/items, "
                      f"k-means {prof['kmeans_iters']} iterations", flush=True)
                for r in prof["top"]:
                    print(f"  {r['self_s']:8.4f} s  {r['count']:6d}x  {r['op'][:90]}")
                results["refresh_profile"].append({"mode": s[0], "precision": s[1], **prof})
    if args.attack_epochs:
        for m in modes:
            for q in precisions:
                t, n_fit = time_attack(bundle, trainers[(m, q, 0.0)], m, q == "bf16", args, device)
                print(f"decoder attack {args.attack_decoder} {m} {q}: {t:.2f} s/epoch ({n_fit / t:.0f} images/s, "
                      f"{n_fit} images)", flush=True)
                results["attack"].append({"mode": m, "precision": q, "epoch_median_s": t, "images": n_fit})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
