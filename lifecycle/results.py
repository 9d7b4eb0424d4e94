"""Where a trained run keeps each attack's results in metrics.json (DESIGN.md §8).

Each attack's results are keyed by *that attack's own* settings (`attack_key`: its flags, for the GAN
also the decoder settings its generator starts from, and the attack's results version) and by the
attacker's view (`sent`, `noise_only`), so changing one attack's settings never moves another's:

    attack_settings.<attack>               the key that owns the places below: the first results of
                                           an attack on a run take them
    attack.<attack>.<mode>                 that key, view sent  (images/<attack>_<mode>.png,
                                           attacks/<attack>_<mode>.pt)
    attack_views.<view>.<attack>.<mode>    that key, another view (files tagged _<view>)
    attack_variants.<attack>.<digest>      {"settings": key, "results": {<view>: {<mode>: ...}}}: other
                                           settings of one attack (files tagged [_<view>]_<digest>)

Folders written before this layout stay as they are and are read per attack: their `attack_settings`
(or identity.attack, or the config) is the whole attack group, whose part for each attack is that
attack's key at results version 1; their `attack_variants.<digest>` entries hold
{"settings": group, "attack": {<attack>: {<mode>: ...}}} (view sent, files tagged _<digest>).

Standard library only: the sweep's planner asks which results a configuration lacks.
"""
from __future__ import annotations

import copy
from typing import Iterator, NamedTuple, Optional

from attacks.flags import ADDED_LATER, ATTACKS, DEFAULTS, MODES, RESULTS_VERSION, VIEWS, settings_flags
from attacks.registry import chain
from lifecycle.identity import counts, differences, digest, plain

SENT = "sent"
LEGACY_VERSION = 1  # results recorded before attacks had results versions
VERSION = "results_version"


class Slot(NamedTuple):
    """Where results of one attack, settings key and view go: {mode: entry}, the file-name tag of their
    grids and networks, and the place in metrics.json (for the log)."""
    results: dict
    tag: str
    where: str


class Entry(NamedTuple):
    attack: str
    key: Optional[dict]      # the attack's settings key (None: an attack this version does not know)
    view: str
    modes: dict              # {mode: result}
    variant: Optional[str]   # None for the run's own settings, else the variant's label


def attack_key(cfg: dict, attack: str, version: Optional[int] = None) -> dict:
    """The settings `attack`'s results depend on, from a configuration (missing flags: their defaults)."""
    key = {VERSION: RESULTS_VERSION[attack] if version is None else version}
    for flag in settings_flags()[attack]:
        value = cfg.get(flag)
        if flag in ADDED_LATER and value in (None, DEFAULTS.get(flag)):
            continue  # results recorded before the flag existed keep their key
        if counts(flag, value):
            key[flag] = plain(DEFAULTS.get(flag) if value is None else value)
    for spec in chain(attack):  # what else its results (and those of the attack it starts from) depend on
        if spec.key_extras is not None:
            key.update(plain(spec.key_extras(cfg)))
    return key


def _words(spec, allowed) -> list:
    words = [w.strip() for w in (spec.split(",") if isinstance(spec, str) else spec or []) if w.strip()]
    return sorted({w for w in words if w in allowed}, key=allowed.index)


def requested(cfg: dict) -> list:
    """(attack, mode, view) results that `cfg` asks for, in running order (decoder before GAN)."""
    attacks = _words(cfg.get("attacks") or DEFAULTS["attacks"], ATTACKS)
    modes = _words(cfg.get("attack_modes") or DEFAULTS["attack_modes"], MODES)
    views = _words(cfg.get("attack_view") or DEFAULTS["attack_view"], VIEWS)
    return [(a, m, v) for m in modes for v in views for a in attacks]


def _per_attack(settings) -> bool:
    return isinstance(settings, dict) and bool(settings) and all(k in ATTACKS for k in settings)


def _dict(d, key) -> dict:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _has_own_results(metrics: dict, attack: str) -> bool:
    return bool(_dict(metrics, "attack").get(attack)) or any(
        _dict(per_view, attack) for per_view in _dict(metrics, "attack_views").values())


def _legacy_group(metrics: dict) -> dict:
    stored = metrics.get("attack_settings")
    if isinstance(stored, dict) and stored and not _per_attack(stored):
        return stored
    return _dict(metrics, "identity").get("attack") or _dict(metrics, "config")


def owners(metrics: dict) -> dict:
    """{attack: key} of the settings that own attack.<attack> (and attack_views.*.<attack>)."""
    stored = metrics.get("attack_settings")
    out = dict(stored) if _per_attack(stored) else {}
    for a in ATTACKS:
        if a not in out and _has_own_results(metrics, a):  # written before per-attack keys
            out[a] = attack_key(_legacy_group(metrics), a, LEGACY_VERSION)
    return out


def _view_tag(view: str) -> str:
    return "" if view == SENT else f"_{view}"


def _child(d: Optional[dict], key: str, create: bool) -> Optional[dict]:
    if d is None:
        return None
    if create:
        return d.setdefault(key, {})
    v = d.get(key)
    return v if isinstance(v, dict) else None


def _legacy_variants(metrics: dict) -> Iterator[tuple]:
    for label, v in _dict(metrics, "attack_variants").items():
        if label not in ATTACKS and isinstance(v, dict) and isinstance(v.get("attack"), dict):
            yield label, v


def _locate(metrics: dict, attack: str, key: dict, view: str, create: bool) -> Optional[Slot]:
    own = owners(metrics)
    if attack not in own and create:  # the first results of this attack on the run: they own its places
        metrics["attack_settings"] = own = {**own, attack: key}
    if own.get(attack) == key:
        parent = _child(metrics, "attack", create) if view == SENT else \
            _child(_child(metrics, "attack_views", create), view, create)
        where = f"attack.{attack}" if view == SENT else f"attack_views.{view}.{attack}"
        results = _child(parent, attack, create)
        return Slot(results, _view_tag(view), where) if results is not None else None
    if view == SENT:
        for label, v in _legacy_variants(metrics):
            if isinstance(v["attack"].get(attack), dict) and attack_key(v.get("settings") or {}, attack,
                                                                        LEGACY_VERSION) == key:
                return Slot(v["attack"][attack], f"_{label}", f"attack_variants.{label}.attack.{attack}")
    label = digest(key)
    variants = _child(_child(metrics, "attack_variants", create), attack, create)
    entry = (variants or {}).get(label)
    if entry is None:
        if not create:
            return None
        entry = variants[label] = {"settings": key, "results": {}}
    results = _child(_child(entry, "results", create), view, create)
    where = f"attack_variants.{attack}.{label}.results.{view}"
    return Slot(results, f"{_view_tag(view)}_{label}", where) if results is not None else None


def find(metrics: dict, attack: str, key: dict, view: str) -> Optional[Slot]:
    """Where results of this attack, key and view are, or None when there are none yet."""
    return _locate(metrics, attack, key, view, create=False)


def slot(metrics: dict, attack: str, key: dict, view: str) -> Slot:
    """Where results of this attack, key and view go (created, in `metrics`)."""
    return _locate(metrics, attack, key, view, create=True)


def file_tag(metrics: dict, attack: str, key: dict, view: str) -> str:
    """The file-name tag of these results, where they are or would go (e.g. the GAN finding the
    decoder its settings start from); `metrics` is left as it is."""
    found = find(metrics, attack, key, view)
    return found.tag if found is not None else slot(copy.deepcopy(metrics), attack, key, view).tag


def missing(metrics: dict, cfg: dict) -> list:
    """(attack, mode, view) that `cfg` asks for and metrics.json lacks under the attack's key."""
    out = []
    for a, m, v in requested(cfg):
        found = find(metrics, a, attack_key(cfg, a), v)
        if found is None or not isinstance(found.results.get(m), dict):
            out.append((a, m, v))
    return out


def todo(metrics: dict, cfg: dict, force: bool = False) -> list:
    """The (attack, mode, view) results to compute: the missing ones, or every requested one with force."""
    return requested(cfg) if force else missing(metrics, cfg)


def attack_state(metrics: dict, cfg: dict) -> tuple:
    """For a trained run: ("finished" | "incomplete" | "attack", what to say). "attack": an attack the
    run has results of is asked for with other settings (--attack_only adds them beside); "incomplete":
    results are missing, including those of an earlier results version (a rerun recomputes them)."""
    miss = missing(metrics, cfg)
    if not miss:
        return ("finished", "") if metrics.get("status") == "finished" else ("incomplete", "some modes")
    own = owners(metrics)
    diffs = []
    for a in dict.fromkeys(a for a, _, _ in miss):
        if a in own:
            want = attack_key(cfg, a)
            diffs += [f"{a}: {d}" for d in differences({k: v for k, v in own[a].items() if k != VERSION},
                                                       {k: v for k, v in want.items() if k != VERSION})]
    if diffs:
        return "attack", "; ".join(diffs)
    return "incomplete", ", ".join(f"{a}/{m}" + ("" if v == SENT else f" ({v} view)") for a, m, v in miss)


def entries(metrics: dict) -> Iterator[Entry]:
    """Every result block of a metrics.json, whatever layout wrote it."""
    own = owners(metrics)
    for a, modes in _dict(metrics, "attack").items():
        if isinstance(modes, dict):
            yield Entry(a, own.get(a), SENT, modes, None)
    for view, per_view in _dict(metrics, "attack_views").items():
        for a, modes in (per_view.items() if isinstance(per_view, dict) else ()):
            if isinstance(modes, dict):
                yield Entry(a, own.get(a), view, modes, None)
    for a in ATTACKS:
        for label, v in _dict(_dict(metrics, "attack_variants"), a).items():
            for view, modes in _dict(v, "results").items():
                if isinstance(modes, dict):
                    yield Entry(a, v.get("settings"), view, modes, label)
    for label, v in _legacy_variants(metrics):
        for a, modes in v["attack"].items():
            if isinstance(modes, dict):
                key = attack_key(v.get("settings") or {}, a, LEGACY_VERSION) if a in ATTACKS else None
                yield Entry(a, key, SENT, modes, label)


def _fill(ours: dict, theirs: dict) -> None:
    for k, v in theirs.items():
        if k not in ours:
            ours[k] = v
        elif isinstance(ours[k], dict) and isinstance(v, dict) and "final" not in ours[k]:
            _fill(ours[k], v)


def merge_recorded(metrics: dict, disk: dict) -> None:
    """Add to `metrics` the results (and owners) that `disk` (metrics.json as another process left it)
    holds and `metrics` lacks: results are never lost, and never replaced by another process's."""
    for section in ("attack", "attack_views", "attack_variants"):
        if isinstance(disk.get(section), dict):
            _fill(metrics.setdefault(section, {}), disk[section])
    theirs = disk.get("attack_settings")
    if _per_attack(theirs):
        if _per_attack(metrics.get("attack_settings")):
            for a, k in theirs.items():
                metrics["attack_settings"].setdefault(a, k)
        else:
            metrics["attack_settings"] = dict(theirs)
