#!/usr/bin/env python
"""GAN-based model-inversion attack on trained runs (DESIGN.md §8).

  python run_gan_attack.py runs/quick/<run>  [more run folders ...]
  python run_gan_attack.py --sweep runs/quick          # every finished run below; attacked ones skipped
  python run_gan_attack.py --sweep runs/cifar10 --jobs-per-gpu 3      # several runs at once per GPU
  python run_gan_attack.py --sweep runs/cifar10 --executor slurm --slurm_time 2:00:00   # a Slurm job array

The target (architecture, cut layer, bottleneck, defences) is rebuilt from each run's config.json and
best checkpoint, loaded strictly. The generator starts from the run's saved decoder of the same mode and
view trained with the decoder settings of this attack (attacks/decoder_<mode>.pt for the run's own,
written by the decoder attack) when it exists. Results: metrics.json → attack.gan.<mode> for a run's
first GAN settings, grid images/gan_<mode>.png, generator attacks/gan_<mode>.pt; other GAN settings and
--attack_view noise_only go beside (docs/run-folders.md). A killed attack resumes from
attacks/gan_<mode>[tag].ckpt.pt when run again. With --sweep, each run is one job of run_exp.sh's
executors (tools/sweep.py), logged to <run folder>.gan_attack.log.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from attacks.flags import add_gan_flags, add_view_flag
    from lifecycle.flags import OneLineParser

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders written by main_MIA.py")
    p.add_argument("--sweep", metavar="FOLDER", default=None,
                   help="attack every finished run below FOLDER, skipping runs that already have GAN results")
    p.add_argument("--force", action="store_true", help="attack again runs that already have GAN results")
    p.add_argument("--attack_modes", default="train_time",
                   help="comma list: train_time (the paper's GAN attacker: the defender's training images), "
                        "infer_time (default: %(default)s)")
    p.add_argument("--gan_AE_type", default=None,
                   help="generator architecture, res_normN{N}C{C} (published), res_normN{N}C{C}_v0 or "
                        "conv_normN{N}C{C} (default: the run's "
                        "--gan_AE_type, res_normN8C64)")
    add_gan_flags(p)
    add_view_flag(p)
    p.add_argument("--data_root", default=None, help="dataset folder (default: the one the run was trained with)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    from tools.sweep import add_executor_flags

    add_executor_flags(p)
    return p


def main(argv=None) -> int:
    from lifecycle.attack_runner import attack_run
    from lifecycle.experiment import main_guard
    from lifecycle.validation import check_numbers
    from utils import UserError, check_device_name, stop_on_sigterm

    parser = build_parser()
    args = parser.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("runs", "sweep", "no_progress")}
    settings.update(attacks="gan", progress=not args.no_progress, device=args.device or "auto")
    if argv is None:  # the real process, not a test calling main(): SIGTERM stops it like Ctrl-C
        stop_on_sigterm()

    def go():
        if not args.runs and not args.sweep:
            raise UserError("name run folders to attack, or --sweep FOLDER (see --help)")
        check_numbers(settings)  # before any run folder is read, as main_MIA.py does
        check_device_name(settings["device"])
        for i, run_dir in enumerate(args.runs, 1):
            print(f"[{i}/{len(args.runs)}] GAN attack on {run_dir}", flush=True)
            attack_run(run_dir, settings)
        return _sweep(parser, args, settings) if args.sweep else 0

    return main_guard(go, stage="attack")


def _sweep(parser, args, settings) -> int:
    """Every finished run below --sweep not attacked yet becomes one job of run_exp.sh's executors."""
    from pathlib import Path

    from lifecycle.attack_runner import sweep
    from tools import sweep as executors

    todo = []
    status = sweep(args.sweep, settings, force=args.force, run=lambda run_dir, _: todo.append(Path(run_dir)))
    jobs = executors.script_jobs(__file__, todo, args, parser, drop=("runs", "sweep"),
                                 log=lambda run_dir: run_dir.parent / f"{run_dir.name}.gan_attack.log")
    return executors.execute(jobs, args, skipped=len(status) - len(todo))


if __name__ == "__main__":
    sys.exit(main())
