#!/usr/bin/env python
"""Train one split-learning configuration with its defence, then attack it with the decoder attack.

Example (the paper's CIFAR-10 setting with CEM):
  python main_MIA.py --dataset cifar10 --data_root ./data --regularization Gaussian_kl \
      --regularization_strength 0.05 --lambd 16 --num_epochs 240
Results go to <folder>/<filename>/: config.json, train_log.csv, metrics.json, log.txt,
checkpoints/{last,best}.pt, images/.
"""
from __future__ import annotations

import sys


def build_parser():
    """The parser of every configuration flag (lifecycle/flags.py), with this script's help text."""
    from lifecycle.flags import build_parser as build

    return build(__doc__)


def main(argv=None) -> int:
    from lifecycle.experiment import main_guard, run_experiment
    from utils import stop_on_sigterm

    args = build_parser().parse_args(argv)
    cfg = vars(args)
    progress = not cfg.pop("no_progress")
    if argv is None:  # the real process, not a test calling main()
        # SIGTERM (a scheduler, run_exp.sh) ends the run like Ctrl-C: saved and resumable; exit 143.
        stop_on_sigterm()
    return main_guard(lambda: run_experiment(cfg, progress=progress) and 0)


if __name__ == "__main__":
    sys.exit(main())
