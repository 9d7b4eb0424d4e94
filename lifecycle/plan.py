"""A configuration's run folder name and state, for run_exp.sh's planner (one call per configuration).

    python -m lifecycle.plan [--suffix TAG] <main_MIA.py flags>   ->   "<state> <run folder name>"

state: new, resume (a checkpoint to continue), attack (trained, an attack it has results of asked for
with other settings: run with --attack_only to add these beside), incomplete (trained, some requested
attack results missing, those of an earlier results version of an attack included: a plain rerun or
--attack_only adds them), finished, conflict (the folder holds another configuration).
Standard library only: it must not pay for importing torch once per configuration.
"""
from __future__ import annotations

import sys

from lifecycle.flags import build_parser
from lifecycle.identity import default_filename
from lifecycle.run_folder import Run
from utils import UserError


def plan_cli(argv: list) -> int:
    suffix = None
    if argv[:1] == ["--suffix"]:
        if len(argv) < 2:
            print("error: --suffix needs a value", file=sys.stderr)
            return 2
        suffix, argv = argv[1], argv[2:]
    cfg = vars(build_parser().parse_args(argv))
    if not cfg.get("filename"):
        cfg["filename"] = default_filename(cfg) + (f"_{suffix}" if suffix else "")
    try:
        state, _ = Run(cfg["folder"], cfg["filename"]).plan(cfg)
    except UserError as e:  # an unreadable folder: the run itself will say so
        print(f"note: {e}", file=sys.stderr)
        state = "conflict"
    print(state, cfg["filename"])
    return 0


if __name__ == "__main__":
    sys.exit(plan_cli(sys.argv[1:]))
