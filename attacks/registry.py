"""The one list of attacks (DESIGN.md §8): each attack declares its spec in its own module, and the
flag parser, the runner, the result identity, the report's order and the strongest-attacker choice
read this list.

A spec names the attack's CLI word, its flags and their ranges, its results version, the attack whose
saved network it starts from, and its factory as "module:function". The factory is imported only
when the attack runs, so this module and every spec stay standard library only: the sweep's planner
parses flags once per configuration and must not import torch.

Adding an attack: write its module (a `SPEC = AttackSpec(...)` and a factory, docs/extending.md),
then add the module's name to REGISTERED. Order matters: an attack runs after the one it starts from.
"""
from __future__ import annotations

import argparse
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from utils import UserError

# The registration list: one line per attack, in running order.
REGISTERED = (
    "attacks.specs.decoder",
    "attacks.specs.gan",
    "attacks.specs.rmle",
    "attacks.specs.rmle_from_decoder",
)


@dataclass(frozen=True)
class AttackSpec:
    name: str                               # the word of --attacks and of metrics.json's attack.<name>
    add_flags: Callable                     # adds the attack's own flags to an argparse group
    factory: str                            # "module:function"; function(settings, common, place) -> Attack
    version: int = 1                        # bump when its results change meaning (lifecycle/results.py)
    ranges: dict = field(default_factory=dict)  # flag -> (low, low allowed[, high]), as lifecycle/flags.RANGES
    starts_from: Optional[str] = None       # the attack whose saved network it starts from; its settings
                                            # then key this attack's results too
    added_later: frozenset = frozenset()    # its flags that change results folders already hold (another
                                            # attack's, through starts_from, or its own after a new flag):
                                            # left out of identities at their default, so they keep theirs
    unit: str = "epochs"                    # what its length counts, for the log
    summary: str = ""                       # one phrase for --attacks' help
    adaptive: bool = False                  # beyond the paper's attackers (named so in reports)
    check: Optional[Callable] = None        # check(cfg): one UserError line for a bad value no range covers
    key_extras: Optional[Callable] = None   # key_extras(cfg) -> {name: value} its results also depend on
                                            # beyond its flags (the contents of a data set named by a path)

    def flag_dests(self) -> tuple:
        return tuple(a.dest for a in flag_actions(self.add_flags))


class Place(NamedTuple):
    """Where one attack runs: its mode and attacker view, the saved network of the attack it starts
    from (None when it starts from none) and its own resumable checkpoint, in the run folder."""
    mode: str
    view: str
    start: Optional[Path]
    checkpoint: Path


def flag_actions(add) -> list:
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return parser._actions  # no public accessor; stable since Python 2.7


@functools.lru_cache(maxsize=1)
def specs() -> tuple:
    out: list = []
    for module in REGISTERED:
        spec = getattr(importlib.import_module(module), "SPEC", None)
        if not isinstance(spec, AttackSpec):
            raise TypeError(f"{module} registers no AttackSpec named SPEC")
        if spec.name in (s.name for s in out):
            raise TypeError(f"attack name {spec.name!r} is registered twice ({module})")
        if spec.starts_from is not None and spec.starts_from not in (s.name for s in out):
            raise TypeError(f"{spec.name} starts from {spec.starts_from!r}, which must be registered before it")
        out.append(spec)
    return tuple(out)


def chain(name: str) -> tuple:
    """The attack and, in turn, those it starts from: their settings all key its results."""
    out, s = [], spec(name)
    while s is not None:
        out.append(s)
        s = spec(s.starts_from) if s.starts_from else None
    return tuple(out)


def names() -> tuple:
    return tuple(s.name for s in specs())


def spec(name: str) -> AttackSpec:
    for s in specs():
        if s.name == name:
            return s
    raise UserError(f"unknown attack '{name}'; choose one of {', '.join(names())}")


def factory(name: str) -> Callable:
    """The attack's factory, imported now (it may import torch)."""
    module, _, function = spec(name).factory.partition(":")
    return getattr(importlib.import_module(module), function)
