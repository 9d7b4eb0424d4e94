"""`python -m datasets check <name> --data_root <root> [--no-download]`

Prints one line (split sizes, classes, image size) and exits 0, or prints the problem and exits 2.
Shell scripts use it to test whether a data set is available before falling back to `digits`.
"""
from __future__ import annotations

import argparse
import sys

from utils import UserError

from . import load_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m datasets", description="Check that a data set loads.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="load a data set and print its sizes")
    c.add_argument("name", help="cifar10, cifar100, facescrub, tinyimagenet, digits, npz:<file>, imagefolder:<dir>")
    c.add_argument("--data_root", default="./data")
    c.add_argument("--no-download", dest="download", action="store_false",
                   help="never touch the network; fail if the data is not already there")
    c.add_argument("--select_on", default="val")
    c.add_argument("--val_fraction", type=float, default=0.1)
    c.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        b = load_dataset(args.name, args.data_root, val_fraction=args.val_fraction, select_on=args.select_on,
                         seed=args.seed, download=args.download)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    val = len(b.val) if b.val is not None else 0
    print(f"{b.name}: train {len(b.train)}, val {val}, test {len(b.test)}, {b.num_classes} classes, "
          f"{b.image_size}x{b.image_size} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
