"""What `run_exp.sh --dry-run` says before anything runs: whether each configuration's data is there, and
how long the sweep's training and decoder-attack steps would take at a throughput measured here and now,
on the device the runs would use. Only those steps are timed: evaluation passes, CEM's refresh, other
attacks and start-up come on top, and the estimate says so.
"""
from __future__ import annotations

import os
import time

import torch

from lifecycle.flags import build_parser
from utils import UserError, resolve_device

ENV_SWITCH = "CEM_DRY_RUN_ESTIMATE"  # "0": print the commands only (the dry-run tests, which need no timing)
TIMED_S = 1.0  # per measurement: long enough to average over a few steps, short enough for a dry run
# The decoder attack trains at batch 256 (attacks/decoder.py); a CPU's images/s hardly depends on the
# batch, so it is timed there on 64 images to keep the dry run short.
DECODER_BATCH = {"cpu": 64}


def _settings(job) -> dict:
    """The job's main_MIA.py flags as the run would parse them."""
    return vars(build_parser().parse_args(job.cmd[job.cmd.index("main_MIA.py") + 1:]))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def _rate(step, batch: int, device) -> float:
    """Images per second of `step` (one batch): two warm-up steps, then as many as fit in TIMED_S."""
    for _ in range(2):
        step()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < TIMED_S:
        step()
        n += 1
        _sync(device)
    return n * batch / (time.perf_counter() - t0)


def measure(cfg: dict, num_classes: int, image_size: int, device) -> tuple[float, float]:
    """(training images/s, decoder-attack images/s) of one SGD step of this configuration's model on
    random images: what the run's steps cost, independent of the data's contents."""
    from architectures import build_split_model
    from architectures.decoders import build_decoder

    torch.manual_seed(0)
    model = build_split_model(cfg["arch"], int(cfg["cutlayer"]), num_classes, image_size,
                              cfg["bottleneck_option"]).to(device)
    b = int(cfg["batch_size"])
    x = torch.rand(b, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (b,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        z = model.encoder(x)
        loss = torch.nn.functional.cross_entropy(model.server_forward(z + 0.05 * torch.randn_like(z)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train = _rate(train_step, b, device)
    decoder = build_decoder(cfg["gan_AE_type"], tuple(model.feature_shape), image_size).to(device)
    dopt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    bd = DECODER_BATCH.get(device.type, 256)
    xd = torch.rand(bd, 3, image_size, image_size, device=device)
    model.eval()

    def decoder_step():
        with torch.no_grad():
            z = model.encoder(xd)
        loss = torch.nn.functional.mse_loss(decoder(z), xd)
        dopt.zero_grad(set_to_none=True)
        loss.backward()
        dopt.step()

    return train, _rate(decoder_step, bd, device)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5940 else f"{seconds / 3600:.1f} h"


def estimate(jobs: list) -> list[str]:
    """Lines for the dry run: one per data set that is missing (with the loader's reason), then the
    estimated time of the jobs whose data is there, and on what device it was measured."""
    jobs = [j for j in jobs if "main_MIA.py" in j.cmd]
    if os.environ.get(ENV_SWITCH) == "0" or not jobs:
        return []
    from datasets import load_dataset

    lines, total, rates, data, devices = [], 0.0, {}, {}, set()
    for job in jobs:
        cfg = _settings(job)
        dkey = (cfg["dataset"], cfg["data_root"], cfg["limit_train"], cfg["limit_test"], cfg["random_seed"])
        if dkey not in data:
            try:
                data[dkey] = load_dataset(cfg["dataset"], cfg["data_root"], select_on=cfg["select_on"],
                                          seed=cfg["random_seed"], download=False, limit_train=cfg["limit_train"],
                                          limit_test=cfg["limit_test"], num_classes=cfg.get("num_classes"))
            except UserError as e:
                data[dkey] = None
                lines.append(f"data: {cfg['dataset']} was not found (a real run first tries to download the public "
                             f"data sets; where that fails, its runs stop at the start): {e}")
        bundle = data[dkey]
        if bundle is None:
            continue
        device = resolve_device(cfg["device"])
        devices.add(str(device))
        mkey = (str(device), cfg["arch"], cfg["cutlayer"], cfg["bottleneck_option"], cfg["batch_size"],
                cfg["gan_AE_type"], bundle.num_classes, bundle.image_size)
        if mkey not in rates:
            rates[mkey] = measure(cfg, bundle.num_classes, bundle.image_size, device)
        train_ips, dec_ips = rates[mkey]
        fit = {"train_time": len(bundle.train), "infer_time": int(0.9 * len(bundle.test))}
        modes = [m for m in str(cfg["attack_modes"]).split(",") if m in fit]
        attacks = str(cfg["attacks"]).split(",")
        total += cfg["num_epochs"] * len(bundle.train) / train_ips
        if "decoder" in attacks:
            total += sum(cfg["attack_epochs"] * fit[m] / dec_ips for m in modes)
    if total:
        speeds = "; ".join(f"{k[1]} cut {k[2]} batch {k[4]}: {t:.0f} img/s training, {d:.0f} img/s decoder"
                           for k, (t, d) in rates.items())
        lines.append(f"estimate: about {_minutes(total)} of training and decoder-attack steps, one job after "
                     f"another, measured just now on {', '.join(sorted(devices))} ({speeds}); evaluation passes, "
                     "CEM's refresh, GAN/rMLE attacks and start-up come on top")
    return lines
