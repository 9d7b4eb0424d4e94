"""`--AT_regularization` text -> which of the paper's extra defences are on (DESIGN.md §5).

The paper scripts combine options in one string (`gan_adv_step1_pruning180`, `dropout0.2`,
`topkprune0.5`, `local_dp`, `local_dp_laplace`, `nopeek`, `SCA_new`), and `--AT_regularization_strength` 0
turns all of them off. The paper code finds each option by substring search; here the string is
read token by token, so text that is not an option, a repeated option or a value out of range is
an error instead of being ignored. Defaults are the published ones: `gan_adv` alone takes 3 steps
per batch, `local_dp` is Gaussian. One deliberate reading differs: `gan_adv_step1_pruning180` means
1 step (the paper code's parser yields 3 there).

`local_dp_gaussian` is still accepted, as a synonym of `local_dp`, so older commands parse. Before
`--AT_version` 2 plain `local_dp` meant Laplace: see AT_VERSION below for how a run recorded then is
still rebuilt with the meaning it had.

Only parsing lives here; the defence objects are built by `defenses.build_defenses` from the
registry `AT_BUILDERS` (keyed by option name), so a new option adds one token and one builder.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional

from utils import UserError

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_TOKENS = (
    ("gan_adv", re.compile(r"gan_adv(?:_step(\d+))?")),
    ("topkprune", re.compile(r"topkprune" + _NUM + "?")),
    ("dropout", re.compile(r"dropout" + _NUM + "?")),
    ("pruning", re.compile(r"pruning([-+]?\d+)?")),
    ("local_dp", re.compile(r"local_dp(?:_(gaussian|laplace))?")),
    ("nopeek", re.compile(r"nopeek")),
    ("sca", re.compile(r"SCA(?:_new)?")),  # the published run_exp.sh's SCA_new; SCA is the same layer
)
AT_GRAMMAR = ("gan_adv[_stepN], dropoutP, topkpruneP, pruningE, local_dp (= local_dp_gaussian), local_dp_laplace, "
              "nopeek, SCA_new (= SCA), joined by '_' (e.g. gan_adv_step1_pruning180), or None")
GAN_ADV_DEFAULT_STEPS = 3  # decoder steps per batch when `_stepN` is absent, as published
# What the option text means. 2: the published defaults (local_dp Gaussian; z -> noise -> local DP ->
# dropout -> top-k; nopeek weight 0.1*s, x10 on CIFAR-10; gan_adv 3 steps). A run config without
# `AT_version` was written before the flag existed, under version 1: local_dp was Laplace, local DP
# came after top-k, nopeek weighed s, gan_adv took 1 step. Such a config is rebuilt with that meaning,
# so re-attacking an old run queries what it sent (its training-only details are not reproduced).
AT_VERSION = 2
LEGACY_AT_VERSION = 1
STRENGTH_HELP = ("--AT_regularization_strength: weight of gan_adv / nopeek, epsilon of local_dp; "
                 "0 disables every --AT_regularization option (as in the paper code)")


@dataclass(frozen=True)
class ATOptions:
    """The parsed options. Fields are None / False when an option is off."""

    text: str = "None"
    strength: float = 0.0
    gan_adv_steps: Optional[int] = None     # gan_adv: defender-decoder steps per batch
    dropout: Optional[float] = None         # probability of zeroing an element
    topk: Optional[float] = None            # fraction of smallest-magnitude entries zeroed per sample
    local_dp: Optional[str] = None          # "gaussian" or "laplace"; epsilon = strength
    nopeek: bool = False
    pruning_epoch: Optional[int] = None     # PATROL: prune at this epoch
    sca: bool = False                       # SCA_new: the sparse-coding layer in the encoder (defenses/sca.py)
    ignored: tuple = field(default=())      # options named but switched off by strength 0
    version: int = AT_VERSION               # what the text meant when the run was made (AT_VERSION)

    def enabled(self) -> list[str]:
        """Names of the options that are on, in the order the pipeline applies them: local DP, dropout,
        top-k, as published; under version 1 local DP came last."""
        on = [("local_dp", self.local_dp is not None), ("dropout", self.dropout is not None),
              ("topkprune", self.topk is not None), ("nopeek", self.nopeek),
              ("gan_adv", self.gan_adv_steps is not None), ("pruning", self.pruning_epoch is not None),
              ("sca", self.sca)]
        if self.version == LEGACY_AT_VERSION:
            on = on[1:3] + on[:1] + on[3:]
        return [name for name, flag in on if flag]

    @property
    def active(self) -> bool:
        return bool(self.enabled())


def _number(token: str, raw: Optional[str], what: str, example: str) -> float:
    if raw is None:
        raise UserError(f"--AT_regularization option '{token}' needs a value: {what}, e.g. {example}")
    value = float(raw)
    if not math.isfinite(value):
        raise UserError(f"--AT_regularization '{token}{raw}': {what} must be a finite number, e.g. {example}")
    return value


def _tokens(text: str):
    """Yields (name, match) for each option in `text`; anything else is a UserError."""
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] == "_":
            pos += 1
            continue
        for name, rx in _TOKENS:
            m = rx.match(text, pos)
            # A token must end at '_' or at the end, so 'dropout0.2x' is not read as dropout0.2.
            if m and (m.end() == n or text[m.end()] == "_"):
                yield name, m
                pos = m.end()
                break
        else:
            bad = text[pos:].split("_")[0] or text[pos:]
            raise UserError(f"unknown --AT_regularization text '{bad}' in '{text}'; use {AT_GRAMMAR}")


def parse_at_options(text, strength=0.0, version: int = AT_VERSION) -> ATOptions:
    """Parses and validates; with strength 0 the options are still checked, then all switched off.
    `version` is what the text meant (AT_VERSION now; LEGACY_AT_VERSION for runs recorded before)."""
    if version not in (LEGACY_AT_VERSION, AT_VERSION):
        raise UserError(f"--AT_version {version} is unknown; this version reads {LEGACY_AT_VERSION} (runs made "
                        f"before the flag existed) and {AT_VERSION}")
    legacy = version == LEGACY_AT_VERSION
    text = "None" if text is None else str(text).strip()
    try:
        strength = float(strength if strength is not None else 0.0)
    except (TypeError, ValueError):
        raise UserError(f"--AT_regularization_strength must be a number (got '{strength}')") from None
    if not math.isfinite(strength) or strength < 0:
        raise UserError(f"--AT_regularization_strength must be a finite number >= 0 (got {strength})")
    if text.lower() in ("none", ""):
        return ATOptions(text="None", strength=strength, version=version)

    found: dict = {}
    for name, m in _tokens(text):
        if name in found:  # local_dp_gaussian and local_dp_laplace are both local_dp
            raise UserError(f"--AT_regularization '{text}' names {name} twice; give each option once")
        if name == "gan_adv":
            steps = int(m.group(1)) if m.group(1) is not None else (1 if legacy else GAN_ADV_DEFAULT_STEPS)
            if steps < 1:
                raise UserError(f"--AT_regularization '{m.group(0)}': steps per batch must be >= 1, e.g. gan_adv_step1")
            found[name] = steps
        elif name in ("dropout", "topkprune"):
            what = "the dropout probability P in [0, 1)" if name == "dropout" else \
                "the fraction P in [0, 1) of smallest entries zeroed per sample"
            p = _number(name, m.group(1), what, f"{name}0.2")
            if not 0.0 <= p < 1.0:
                raise UserError(f"--AT_regularization '{name}{m.group(1)}': {what} (got {p:g}), e.g. {name}0.2")
            found[name] = p
        elif name == "pruning":
            e = _number(name, m.group(1), "the epoch E >= 1 at which PATROL prunes", "pruning180")
            if e < 1:
                raise UserError(f"--AT_regularization 'pruning{m.group(1)}': the pruning epoch must be >= 1, "
                                "e.g. pruning180")
            found[name] = int(e)
        elif name == "local_dp":
            found[name] = m.group(1) or ("laplace" if legacy else "gaussian")
        else:
            found[name] = True

    if strength == 0:
        return ATOptions(text=text, strength=0.0, ignored=tuple(found), version=version)
    return ATOptions(text=text, strength=strength, gan_adv_steps=found.get("gan_adv"),
                     dropout=found.get("dropout"), topk=found.get("topkprune"), local_dp=found.get("local_dp"),
                     nopeek=bool(found.get("nopeek")), pruning_epoch=found.get("pruning"), sca=bool(found.get("sca")),
                     version=version)


def at_options(cfg: dict, warn: bool = True) -> ATOptions:
    """The options of a run config (argparse namespace as a dict); warns when strength 0 turns them off.
    A config without `AT_version` is a run recorded before the flag existed: version 1."""
    opts = parse_at_options(cfg.get("AT_regularization"), cfg.get("AT_regularization_strength"),
                            _version(cfg.get("AT_version", LEGACY_AT_VERSION)))
    if warn and opts.ignored:
        warnings.warn(f"--AT_regularization '{opts.text}' is off because --AT_regularization_strength is 0 "
                      "(as in the paper code); give a strength > 0 to enable it", stacklevel=2)
    return opts


def _version(raw) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise UserError(f"--AT_version must be a whole number (got '{raw}')") from None
