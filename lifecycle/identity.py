"""What identifies a run: every setting that can change its results.

A run folder records `identity(cfg)` (in config.json and metrics.json). "Already finished" means the
same identity; a different identity under the same name is refused with one line naming the settings
that differ (`--force` overwrites). The identity is *every* setting of main_MIA.py's parser except
the ones listed in NOT_RESULT_KEYS, so a flag added later counts automatically. Add a flag to
NOT_RESULT_KEYS only when it cannot change any number the run writes.

Settings in the parser's "attack" group form the identity's `attack` part (as the run was started);
the rest (model, data, training, defence, seed) the `train` part. Attack results are keyed by each
attack's own settings and the attacker's view, not by this part: lifecycle/results.py.

Standard library only: run_exp.sh asks for names and states once per configuration (lifecycle/plan.py).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from attacks.flags import ADDED_LATER

# Bump when the meaning of metrics.json's numbers changes: older runs then no longer count as finished.
RESULTS_FORMAT = 1

NOT_RESULT_KEYS = frozenset({
    # where results go and how progress is shown
    "folder", "filename", "data_root", "no_progress",
    # what to do with an existing folder, not what to compute
    "force", "resume", "attack_only",
    # where and how fast the same maths runs (float rounding aside); bf16 is NOT here: it changes precision
    "device", "compile", "channels_last", "capture",
    # how often a run saves itself: resume is exact, so never a result
    "checkpoint_seconds",
    # which results exist, not their values: a finished run missing some is completed with --attack_only
    # (each view's results are kept apart, lifecycle/results.py)
    "attack_modes", "attacks", "no_attack", "attack_view",
    # how often the GAN attack saves itself: its resume is exact, like checkpoint_seconds
    "checkpoint_every",
})

# Switches to the published code's behaviour (issue 27), added after run folders existed. At their
# default (ours) they are left out of identities and attack keys, so those folders keep their identity
# and are not redone; any other value counts like every other setting.
PUBLISHED_SWITCHES = frozenset({
    "cem_stats", "cem_kmeans", "attacker_data", "decoder_heldout_bn", "gan_adv_init", "gan_loop",
    "init",
})
# The attacks' flags that change an existing attack's results and were added after run folders existed
# (attacks/flags.ADDED_LATER) are left out of attack keys at their default (lifecycle/results.attack_key);
# like the switches, an absent one stands for its default.
AT_DEFAULT_LEFT_OUT = PUBLISHED_SWITCHES | ADDED_LATER


@functools.lru_cache(maxsize=1)
def switch_defaults() -> dict:
    from lifecycle.flags import build_parser

    return {a.dest: a.default for a in build_parser()._actions if a.dest in AT_DEFAULT_LEFT_OUT}


def absent(key: str):
    """What an identity's missing `key` stands for: a switch's default, else "<unset>". `key` may be
    qualified by an attack ("decoder.attacker_data")."""
    return switch_defaults().get(key.rsplit(".", 1)[-1], "<unset>")


def counts(key: str, value) -> bool:
    """Whether `key` = `value` is part of an identity (see PUBLISHED_SWITCHES)."""
    if key in NOT_RESULT_KEYS:
        return False
    return key not in PUBLISHED_SWITCHES or value not in (None, switch_defaults().get(key))


@functools.lru_cache(maxsize=1)
def attack_keys() -> frozenset:
    """Destinations of the parser's "attack" group: a flag added there is an attack setting automatically."""
    from lifecycle.flags import ATTACK_GROUP, build_parser

    # argparse has no public accessor for a group's actions; these attributes are stable since Python 2.7.
    for group in build_parser()._action_groups:
        if group.title == ATTACK_GROUP:
            return frozenset(a.dest for a in group._group_actions)
    return frozenset()


def plain(v):
    """JSON-shaped value (what config.json will hold), so stored and fresh identities compare equal."""
    return json.loads(json.dumps(v, default=str))


def identity(cfg: dict) -> dict:
    attack = attack_keys()
    keys = sorted(k for k in cfg if counts(k, cfg[k]))
    return {"format": RESULTS_FORMAT,
            "train": {k: plain(cfg[k]) for k in keys if k not in attack},
            "attack": {k: plain(cfg[k]) for k in keys if k in attack}}


def digest(part) -> str:
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:8]


def differences(old: dict, new: dict) -> list:
    """'key old -> new' for every setting that differs (missing keys count as differing)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, absent(k)), new.get(k, absent(k))
        if a != b:
            out.append(f"{k} {a} -> {b}")
    return out


def identity_differences(old: dict, new: dict, part: str) -> list:
    if old.get("format") != new.get("format"):
        return [f"results format {old.get('format')} -> {new.get('format')}"]
    return differences(old.get(part) or {}, new.get(part) or {})


def fmt_num(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def default_filename(cfg: dict) -> str:
    """Readable summary of the main settings plus a digest of the whole training identity, so that
    runs differing in any setting (batch size, milestones, --extra flags ...) never share a folder."""
    ds = str(cfg["dataset"])
    if ":" in ds:  # npz:/path/to/x.npz,... or imagefolder:/dir -> a short readable tag
        kind, rest = ds.split(":", 1)
        ds = kind + "-" + Path(rest.split(",")[0].rstrip("/")).stem
    reg = str(cfg["regularization"])
    parts = [ds, cfg["arch"], f"cut{cfg['cutlayer']}", str(cfg["bottleneck_option"]),
             f"{reg}{fmt_num(cfg['regularization_strength'])}" if reg.lower() != "none" else "nonoise",
             f"lambd{fmt_num(cfg['lambd'])}"]
    if cfg["lambd"] and cfg["lambd"] > 0:
        parts.append(f"tau{fmt_num(cfg['var_threshold'])}" + ("log" if int(cfg["log_entropy"]) else "lin"))
    at = str(cfg.get("AT_regularization") or "None")
    if at.lower() != "none" and float(cfg.get("AT_regularization_strength") or 0) > 0:
        parts.append(f"{at}-s{fmt_num(float(cfg['AT_regularization_strength']))}")
    parts += [f"ep{cfg['num_epochs']}", f"lr{fmt_num(cfg['learning_rate'])}", f"seed{cfg['random_seed']}"]
    if cfg.get("limit_train"):
        parts.append(f"n{cfg['limit_train']}")
    ident = identity(cfg)
    parts.append(digest({"format": ident["format"], "train": ident["train"]}))
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(parts))
