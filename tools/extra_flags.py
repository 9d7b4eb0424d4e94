"""Refuse a run_exp.sh --extra string that sets a flag the sweep itself varies.

    python -m tools.extra_flags "DEST:--option ..." <--extra words>

--extra words are appended to every configuration's command, and argparse keeps the last value of a
flag, so `--lambdas "0 16" --extra "--lambd 3"` would run λ = 3 twice under one name: the axis
collapses without a word. main_MIA.py's own parser decides which flags the words set (abbreviations
such as --lamb and --flag=value included), so this never drifts from what the run will see.
Exit 2 with one line naming the flag and the run_exp.sh option to use; 0 otherwise (also for words the
parser rejects: main_MIA.py reports those itself). Standard library only, like the planner.
"""
from __future__ import annotations

import argparse
import sys

_UNSET = object()


class _Stop(Exception):
    pass


class _Help(Exception):
    pass


# Settings run_exp.sh itself owns besides the swept ones: where the runs go (the report reads its own
# --folder), what each is called (one name per configuration), and -h, which would train nothing.
OWNED = {"folder": "run_exp.sh's --folder (the report reads that folder)",
         "filename": "run_exp.sh, which names each configuration (one --filename would give all one folder)"}


def flags_set(words: list) -> dict:
    """{dest: the flag's name} for every main_MIA.py setting that `words` set."""
    from lifecycle.flags import build_parser

    parser = build_parser()

    def stop(*_args, **_kwargs):
        raise _Stop

    parser.error = parser.exit = stop  # a bad word is main_MIA.py's to report, with its own message
    def asked_help(*_args, **_kwargs):
        raise _Help

    parser.print_help = asked_help  # --extra -h: main_MIA.py would print its help and train nothing
    # A dest already in the namespace keeps its value unless a word sets it: what remains _UNSET was not set.
    ns = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions})
    try:
        parser.parse_known_args(words, ns)
    except _Stop:
        return {}
    except _Help:
        return {"help": "-h/--help"}
    return {a.dest: a.option_strings[0] for a in parser._actions
            if a.option_strings and getattr(ns, a.dest) is not _UNSET}


def conflicts(axes: dict, words: list) -> list:
    """One message per swept setting (axes: dest -> the run_exp.sh option that sets it) in `words`."""
    given = flags_set(words)
    if "help" in given:
        return ["--extra holds -h/--help: every configuration would print main_MIA.py's help and train nothing; "
                "remove it (see python main_MIA.py --help)"]
    owned = [f"--extra sets {given[dest]}, which is set by {who}; remove it" for dest, who in OWNED.items()
             if dest in given]
    return owned + [f"--extra sets {given[dest]}, which run_exp.sh sets from {option}, so every configuration "
                    f"would get the --extra value; put the value(s) in {option}"
                    for dest, option in axes.items() if dest in given]


def main(argv: list) -> int:
    if not argv:
        print("usage: python -m tools.extra_flags 'DEST:--option ...' WORDS...", file=sys.stderr)
        return 2
    axes = dict(pair.split(":", 1) for pair in argv[0].split())
    found = conflicts(axes, argv[1:])
    if found:
        print("; ".join(found))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
