"""Add the attack-independent leakage figures (dFIL, the mixture bound; docs/leakage.md) to trained runs.

    python -m tools.leakage RUN_OR_SWEEP_FOLDER [...] [--force] [--device D] [--data_root DIR] [--no_progress]

Each folder is a run folder (it holds config.json) or a folder whose finished runs below it are all
taken. A run that has the figures under the current settings is left as it is (--force recomputes);
they go in its metrics.json → leakage. Runs are locked while they are worked on; one that cannot be
done is reported and the others still run; exit 2 then, with one line per failure.
"""
from __future__ import annotations

import argparse
import sys

from lifecycle.experiment import main_guard
from lifecycle.leakage import leakage_folders, leakage_run
from utils import UserError, check_device_name


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.leakage", description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="run folders, or folders holding finished runs")
    p.add_argument("--force", action="store_true", help="recompute figures a run already has")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps "
                   "(default: the run's own)")
    p.add_argument("--data_root", default=None, help="where the run's data is (default: the run's own)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def run(args) -> dict:
    device = check_device_name(args.device) if args.device is not None else None
    runs = leakage_folders(args.folders)
    settings = {"force": args.force, "device": device, "data_root": args.data_root,
                "progress": not args.no_progress}
    status, failed = {}, []
    for i, run_dir in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run_dir}", flush=True)
        try:
            status[str(run_dir)] = st = leakage_run(run_dir, settings)
        except UserError as e:  # one bad run folder must not stop the others
            print(f"failed: {run_dir}: {e}", flush=True)
            failed.append(str(run_dir))
            continue
        if st == "present":
            print(f"already there: {run_dir} has the leakage figures (use --force to recompute them)")
    if failed:
        raise UserError(f"{len(failed)} of {len(runs)} run(s) got no leakage figures ({', '.join(failed)}); "
                        "see the 'failed:' lines above")
    return status


def main(argv=None) -> int:
    args = parse_args(argv)
    return main_guard(lambda: run(args) and 0, stage="attack")


if __name__ == "__main__":
    sys.exit(main())
