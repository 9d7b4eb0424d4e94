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


def flags_set(words: list) -> dict:
    """{dest: the flag's name} for every main_MIA.py setting that `words` set."""
    from lifecycle.flags import build_parser

    parser = build_parser()

    def stop(*_args, **_kwargs):
        raise _Stop

    parser.error = parser.exit = stop  # a bad word is main_MIA.py's to report, with its own message
    parser.print_help = lambda *_args, **_kwargs: None  # --extra -h: nothing to print here either
    # A dest already in the namespace keeps its value unless a word sets it: what remains _UNSET was not set.
    ns = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions})
    try:
        parser.parse_known_args(words, ns)
    except _Stop:
        return {}
    return {a.dest: a.option_strings[0] for a in parser._actions
            if a.option_strings and getattr(ns, a.dest) is not _UNSET}


def conflicts(axes: dict, words: list) -> list:
    """One message per swept setting (axes: dest -> the run_exp.sh option that sets it) in `words`."""
    given = flags_set(words)
    return [f"--extra sets {given[dest]}, which run_exp.sh sets from {option}, so every configuration would get "
            f"the --extra value; put the value(s) in {option}" for dest, option in axes.items() if dest in given]


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
