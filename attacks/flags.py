"""The attacks' names, modes and command-line flags, read from the registry (attacks/registry.py), where
each attack declares its own (DESIGN.md §8).

Standard library only: the run lifecycle's parser is built once per configuration when a sweep is
planned, which must not import torch.
"""
from __future__ import annotations

from attacks.registry import flag_actions, names, specs
from attacks.specs.decoder import add_decoder_flags, parse_classes  # noqa: F401  (add_*: re-exported)
from attacks.specs.gan import add_gan_flags, gan_epochs  # noqa: F401
from attacks.specs.rmle import add_rmle_flags  # noqa: F401

ATTACKS = names()  # in running order: an attack runs after the one it starts from
MODES = ("train_time", "infer_time")
# What the attacker's queries go through (DESIGN.md §5): `sent` = every defence of the pipeline, as the
# device sends it; `noise_only` = the Gaussian noise alone, the published attacker's view.
VIEWS = ("sent", "noise_only")
# Bump an attack's number (its spec's `version`) when its results change meaning (another network
# design, a fixed bug): results recorded under an older number then count as missing and are recomputed
# beside the old ones, without retraining. Folders written before these numbers existed read as 1.
RESULTS_VERSION = {s.name: s.version for s in specs()}
# Each flag's range, as the attacks declare them (lifecycle/flags.RANGES holds them with the others').
RANGES = {"attack_queries": (1, True), **{k: v for s in specs() for k, v in s.ranges.items()}}
# What every attacker may be given, whichever attack it runs: keys every attack's results.
ATTACKER_FLAGS = ("attack_queries", "attack_eval_classes")
# Flags added after run folders existed: at their default they are left out of identities and keys.
ADDED_LATER = frozenset(ATTACKER_FLAGS).union(*(s.added_later for s in specs()))


def add_attacker_flags(group) -> None:
    group.add_argument("--attack_queries", type=int, default=1, metavar="K",
                       help="repeated-query attacker (adaptive): it sees the mean of K independent sends of each "
                            "image (an input re-sent K times, or K epochs of split training), trains on such means "
                            "and inverts them; needs a defence with fresh randomness per send (noise, local DP, "
                            "dropout) (default: %(default)s)")
    group.add_argument("--attack_eval_classes", default=None, metavar="CLASSES",
                       help="score every attack on the victim's eval images of these classes only, e.g. 5-9 or "
                            "0,2,5 (with --attacker_data aux:cifar10[0-4]: SDAR's class removal, the attacker "
                            "never saw the scored classes) (default: all)")


def fresh_randomness(cfg: dict, view: str) -> list:
    """Which of the run's defences draw fresh randomness per send in this attacker view: only those make
    K sends hold more than one."""
    out = []
    if str(cfg.get("regularization", "None")).lower() != "none" and float(cfg.get("regularization_strength") or 0):
        out.append("Gaussian noise")
    at = str(cfg.get("AT_regularization") or "None")
    if view == "sent" and float(cfg.get("AT_regularization_strength") or 0) > 0:
        out += [name for word, name in (("local_dp", "local DP"), ("dropout", "dropout")) if word in at]
    return out


def add_selection_flags(group) -> None:
    """Which results a run computes: modes, attacker views and attacks."""
    group.add_argument("--attack_modes", default="train_time,infer_time",
                       help="comma list: train_time (attacker has the training images), infer_time (attacker has "
                            "90%% of the test set, scored on the rest) (default: %(default)s)")
    add_view_flag(group)
    group.add_argument("--attacks", default="decoder",
                       help="comma list of attacks: " + ", ".join(s.summary or s.name for s in specs())
                            + " (default: %(default)s)")


def add_view_flag(group) -> None:
    group.add_argument("--attack_view", default="sent",
                       help="comma list of what the attacker's queries go through: sent (what the device sends: "
                            "every defence of the pipeline), noise_only (the Gaussian noise alone, no dropout / "
                            "top-k / local DP: the published attacker); results are kept per view "
                            "(default: %(default)s)")


def add_attack_flags(group) -> None:
    """Every attack's own flags, then the selection flags, into the parser's attack group."""
    for s in specs():
        s.add_flags(group)
    add_attacker_flags(group)
    add_selection_flags(group)


# Every attack flag's default, read from the declarations (configs written before a flag existed
# lack it; their attacks run with its default).
DEFAULTS = {a.dest: a.default for a in flag_actions(add_attack_flags)}


def settings_flags() -> dict:
    """{attack: the flags its results depend on}, from the declarations, so that a flag added to one
    attack's group keys that attack's results. An attack that starts from another's saved network
    (the GAN's generator, rmle_from_decoder's start) includes that attack's flags."""
    out: dict = {}
    for s in specs():
        out[s.name] = tuple(dict.fromkeys((out[s.starts_from] if s.starts_from else ()) + s.flag_dests()
                                          + ATTACKER_FLAGS))
    return out


def check_settings(cfg: dict) -> None:
    """Each attack's own check of values no range covers (a list of weights, ...)."""
    if cfg.get("attack_eval_classes") is not None:
        parse_classes(cfg["attack_eval_classes"], "--attack_eval_classes")
    for s in specs():
        if s.check is not None:
            s.check(cfg)
