#!/usr/bin/env python
"""Train one split-learning configuration with its defence, then attack it with the decoder attack.

Example (the paper's CIFAR-10 setting with CEM):
  python main_MIA.py --dataset cifar10 --data_root ./data --regularization Gaussian_kl \
      --regularization_strength 0.05 --lambd 16 --num_epochs 240
Results go to <folder>/<filename>/: config.json, train_log.csv, metrics.json, log.txt,
checkpoints/{last,best}.pt, images/.
"""
from __future__ import annotations

import argparse
import signal
import sys


def _none_or_float(s):
    return None if s in (None, "", "None", "none") else float(s)


def build_parser() -> argparse.ArgumentParser:
    from attack_runner import add_gan_flags, add_rmle_flags

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="vgg11_bn_sgm",
                   help="split architecture: vgg11, vgg11_bn, vgg11_bn_sgm, vgg13, vgg13_bn, resnet20 "
                        "(paper variant), resnet20_std, resnet32 (default: %(default)s)")
    m.add_argument("--cutlayer", type=int, default=4,
                   help="number of layers on the device (VGG: max-pools count as layers) (default: %(default)s)")
    m.add_argument("--bottleneck_option", default="noRELU_C8S1",
                   help="device-side bottleneck, e.g. noRELU_C8S1 = 8 channels, stride 1, no ReLU; "
                        "None disables (default: %(default)s)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="cifar10",
                   help="cifar10, cifar100, facescrub, tinyimagenet, digits, npz:<file>[,<test file> or test fraction], "
                        "imagefolder:<dir> (default: %(default)s)")
    d.add_argument("--data_root", default="./data", help="folder holding the datasets (default: %(default)s)")
    d.add_argument("--select_on", default="val", choices=["val", "test"],
                   help="split that picks the best epoch: val = 10%% held out of train; test = the paper "
                        "code's choice (optimistic), including its tracker reset at epochs 40/100/200 of 240 "
                        "(scaled to --num_epochs), so the best of the last 40 epochs (default: %(default)s)")
    d.add_argument("--num_classes", type=int, default=None,
                   help="class count of an npz data set (labels must be 0..N-1); default: the largest label + 1, "
                        "with every class present")
    d.add_argument("--limit_train", type=int, default=None, help="use a seeded random subset of N training images")
    d.add_argument("--limit_test", type=int, default=None, help="use a seeded random subset of N test images")
    t = p.add_argument_group("training")
    t.add_argument("--batch_size", type=int, default=128, help="(default: %(default)s)")
    t.add_argument("--num_epochs", type=int, default=240,
                   help="epochs; the lr milestones 60/120/180/210 of 240 scale with it (default: %(default)s)")
    t.add_argument("--learning_rate", type=float, default=0.05, help="server lr, SGD (default: %(default)s)")
    t.add_argument("--milestones", default="paper",
                   help="epochs where the lr drops x0.2: paper (60/120/180/210 of 240, scaled to --num_epochs), "
                        "none (constant lr), or a comma list such as 60,120 (default: %(default)s)")
    t.add_argument("--local_lr", type=_none_or_float, default=None,
                   help="encoder (device) lr; default: same as --learning_rate")
    t.add_argument("--random_seed", type=int, default=125, help="seed for data order, init, noise (default: %(default)s)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (faster; not bit-identical)")
    t.add_argument("--no_compile", dest="compile", action="store_false",
                   help="on CUDA, keep the CEM loss in eager mode instead of fusing it with torch.compile")
    t.add_argument("--capture", default="auto", choices=["auto", "on", "off"],
                   help="record each training/attack step as a CUDA graph and replay it (much faster at "
                        "small batches): auto = on for CUDA, off on CPU/MPS (default: %(default)s)")
    t.add_argument("--checkpoint_seconds", type=_none_or_float, default=None, metavar="SECONDS",
                   help="seconds of training between checkpoints (the last epoch is always saved; a killed run "
                        "redoes at most this much): default every epoch on CPU/MPS, 30 on CUDA, where writing "
                        "one costs about a tenth of an epoch")
    t.add_argument("--no_channels_last", dest="channels_last", action="store_false",
                   help="keep NCHW memory format (channels_last is on by default: faster on CPU and CUDA)")
    f = p.add_argument_group("defence")
    f.add_argument("--regularization", default="Gaussian_kl",
                   help="feature obfuscation: Gaussian_kl (Gaussian noise, std = --regularization_strength) "
                        "or None (default: %(default)s)")
    f.add_argument("--regularization_strength", type=float, default=0.05,
                   help="noise standard deviation sigma (default: %(default)s)")
    f.add_argument("--lambd", type=float, default=16.0,
                   help="CEM weight lambda; 0 turns CEM off (default: %(default)s)")
    f.add_argument("--var_threshold", type=float, default=0.125,
                   help="CEM threshold tau: cluster variances are pushed below tau*sigma^2 (default: %(default)s)")
    f.add_argument("--log_entropy", type=int, default=1, choices=[0, 1],
                   help="1: log-variance surrogate (paper); 0: plain variance (default: %(default)s)")
    f.add_argument("--cem_lr_coupling", default="paper", choices=["paper", "none"],
                   help="paper: lambda_eff = lambda*0.001/lr for lr >= 4.1e-4 (no cap), else lambda, as the "
                        "paper code's two-pass update; none: lambda as given (default: %(default)s)")
    f.add_argument("--cem_refresh_aug", type=int, default=1, choices=[0, 1],
                   help="1: fit CEM's per-class mixture after each epoch on augmented training images, as the "
                        "paper code; 0: on un-augmented ones (default: %(default)s)")
    f.add_argument("--AT_regularization", default="None",
                   help="the paper's extra defences, joined by '_': gan_adv[_stepN] (attacker-aware training, N "
                        "defender-decoder steps per batch), dropoutP (zero each sent element with probability P, "
                        "no rescale), topkpruneP (zero the fraction P of smallest entries per sample), local_dp / "
                        "local_dp_gaussian (noise for epsilon = strength), nopeek (distance correlation), pruningE "
                        "(PATROL at epoch E); e.g. gan_adv_step1_pruning180 (default: %(default)s)")
    f.add_argument("--AT_regularization_strength", type=float, default=0.0,
                   help="weight of gan_adv and nopeek, epsilon of local_dp; 0 disables every "
                        "--AT_regularization option, as in the paper code (default: %(default)s)")
    f.add_argument("--adv_AE_type", default="res_normN4C64",
                   help="gan_adv: the defender's own decoder (distinct from --gan_AE_type, the attack's) "
                        "(default: %(default)s)")
    f.add_argument("--gan_pretrain_epochs", type=int, default=30,
                   help="gan_adv: epochs pre-training the defender decoder on the training split "
                        "(default: %(default)s, the paper's)")
    f.add_argument("--gan_loss_type", default="SSIM", choices=["SSIM", "MSE"],
                   help="gan_adv: defender decoder loss -SSIM (encoder penalty on SSIM above --ssim_threshold) "
                        "or MSE (encoder penalty -strength*MSE) (default: %(default)s)")
    f.add_argument("--ssim_threshold", type=float, default=0.5,
                   help="gan_adv with SSIM: the encoder is penalised only for SSIM above this (default: %(default)s)")
    a = p.add_argument_group("attack")
    a.add_argument("--attack_epochs", type=int, default=50, help="decoder attack epochs (default: %(default)s)")
    a.add_argument("--gan_AE_type", default="res_normN8C64",
                   help="attack decoder: res_normN{blocks}C{channels} (the published decoder), "
                        "res_normN{N}C{C}_v0 (this project's earlier one) or conv_normN{N}C{C} (default: %(default)s)")
    a.add_argument("--attack_modes", default="train_time,infer_time",
                   help="comma list: train_time (attacker has the training images), infer_time (attacker has "
                        "90%% of the test set, scored on the rest) (default: %(default)s)")
    a.add_argument("--attacks", default="decoder",
                   help="comma list of attacks: decoder (training-based), gan (WGAN-GP generator started from the "
                        "decoder), rmle (white-box optimisation) (default: %(default)s)")
    add_gan_flags(a)
    add_rmle_flags(a)
    a.add_argument("--no_attack", action="store_true", help="train only")
    a.add_argument("--attack_only", action="store_true",
                   help="re-attack a trained run from its checkpoint (no training)")
    o = p.add_argument_group("output")
    o.add_argument("--folder", default="runs", help="parent folder of run folders (default: %(default)s)")
    o.add_argument("--filename", default=None, help="run folder name; default: built from the settings")
    o.add_argument("--resume", action="store_true", help="continue an interrupted run from checkpoints/last.pt")
    o.add_argument("--force", action="store_true",
                   help="redo the run from scratch, deleting what its folder holds (also when the folder holds "
                        "another configuration); with --attack_only: redo those attack results")
    o.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return p


def _interrupt(signum, frame):
    # SIGTERM (a scheduler, run_exp.sh) ends the run like Ctrl-C: saved and resumable. Once only: a
    # scheduler and a sweep may both send it, and a second one must not cut the saving short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv=None) -> int:
    from experiment import main_guard, run_experiment

    args = build_parser().parse_args(argv)
    cfg = vars(args)
    progress = not cfg.pop("no_progress")
    if argv is None:  # the real process, not a test calling main()
        signal.signal(signal.SIGTERM, _interrupt)
    return main_guard(lambda: run_experiment(cfg, progress=progress) and 0)


if __name__ == "__main__":
    sys.exit(main())
