"""Gather finished runs (metrics.json files) into flat records for tables and plots.

Only the standard library is used so the report works without torch installed.
"""
from __future__ import annotations

import json
from pathlib import Path

from attacks.flags import ATTACKS
from lifecycle.identity import NOT_RESULT_KEYS, absent
from lifecycle.results import SENT, entries
from tools.stats import sd
from tools.untrusted import find, number, one_line, recorded_path, refused
from utils import NotStrictJSON, read_json

METRICS = ("mse", "ssim", "ssim_lib", "psnr", "psnr_batch")  # psnr_batch: the published batch-wise PSNR
# Shown in every table title. Tables are split by the runs' full identity (lifecycle/identity.py): runs that
# differ in anything but σ and λ (the table's axes) and the seed (averaged in a cell) never share a
# table, and the title names any other setting that differs between tables. `view`: what the attacker's
# queries went through (sent, noise_only), named in every title.
GROUP_KEYS = ("dataset", "arch", "cutlayer", "bottleneck_option", "regularization", "var_threshold",
              "num_epochs", "defense", "at_strength", "view")
AXES = ("regularization_strength", "lambd", "random_seed",
        "AT_regularization", "AT_regularization_strength")  # the last two: the title's defence, strength
# config.json entries derived from the data or the machine: no part of an identity.
DERIVED_KEYS = frozenset({"torch", "num_classes", "image_size", "n_train", "n_val", "n_test", "feature_shape",
                          "identity", "device", "data_files"})


# metrics.json leakage (lifecycle/leakage.py): the attack-independent figures a record carries.
LEAKAGE_FIELDS = ("dfil", "dfil_se", "dfil_rel_se", "probes", "mse_bound_unbiased", "mi_bound_nats",
                  "mi_bound_bits_per_dim", "groups", "images")


def _leakage(data: dict) -> dict:
    """{field: number or None}; 'note': why there are none (no noise, an error), else None."""
    lk = data.get("leakage") if isinstance(data.get("leakage"), dict) else {}
    note = lk.get("dfil_note") or lk.get("error")
    return {**{k: _num(lk.get(k)) for k in LEAKAGE_FIELDS}, "note": one_line(note)[:120] if note else None}


def _num(x):
    """Numbers a run can have recorded stay numbers; anything else (missing, strings, NaN, ±inf, 1e300)
    becomes None (tools/untrusted.number)."""
    return number(x)


def load_runs(folder: Path) -> tuple[list[dict], list[str]]:
    """Return (records of finished runs, each counted once, and one-line warnings about the files that
    were skipped or were copies of another run)."""
    paths, warnings = find(Path(folder), "metrics.json")
    runs = []
    for path in paths:
        shown = one_line(path)
        why = refused(folder, path)
        if why:
            warnings.append(f"skipping {shown}: {why}")
            continue
        try:
            data = read_json(path)
        except NotStrictJSON as e:
            warnings.append(f"skipping {shown}: {e}")
            continue
        except (OSError, ValueError) as e:
            warnings.append(f"skipping {shown}: unreadable ({type(e).__name__}: {one_line(e)[:160]})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            warnings.append(f"skipping {shown}: not a metrics.json object with a 'config' section")
            continue
        status = data.get("status")
        if status != "finished":
            warnings.append(f"skipping {shown}: status is {one_line(repr(status))[:60]}, not 'finished'")
            continue
        recs = _records(_record(path, data), data)
        warnings += _files_inside(Path(folder), recs)
        runs += recs
    runs, notes = drop_duplicates(runs)
    return runs, warnings + notes


def _files_inside(root: Path, recs: list[dict]) -> list[str]:
    """Check the files a run's records point to (grids, train_log.csv) before anything reads them: each
    record gets `train_log` and every attack result `grid_file`, a path inside `root` or None, and
    every file refused is named once in the returned warnings."""
    notes = []
    run_dir = Path(recs[0]["path"]).parent
    log = run_dir / "train_log.csv"
    why = refused(root, log) if log.exists() or log.is_symlink() else "absent"
    if why != "absent" and why:
        notes.append(f"not reading {one_line(log)}: {why}")
    for rec in recs:
        rec["train_log"] = None if why else log
        for res in rec["attacks"].values():
            grid, res["grid_file"] = res.get("grid"), None
            path = recorded_path(run_dir, grid)
            if grid is None or path is not None and not path.exists() and not path.is_symlink():
                continue  # no grid, or one not kept (deleted): nothing to show or warn about
            bad = "not a path inside the run folder" if path is None else refused(root, path)
            if bad:
                notes.append(f"not reading the grid {one_line(repr(grid))[:120]} of {one_line(run_dir)}: {bad}")
            else:
                res["grid_file"] = path
    return list(dict.fromkeys(notes))


def _preference(rec: dict) -> tuple:
    """Which of several copies of one run is kept: first the folder still named as the run recorded
    (main_MIA.py made that one; a copy beside it must have another name), then the first path. Not the
    newest metrics.json: `cp` makes the copy the newest, and times do not survive archives or rsync."""
    folder = Path(rec["path"]).parent
    return (folder.name != rec["recorded_name"], folder.parts)


def drop_duplicates(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """Runs with the same identity (every setting, the seed included) are one run however many copies
    of its folder exist: keep one, so that copies never pass for more seeds in a cell's mean and n.
    Returns (runs, one note per run that had copies)."""
    by_identity: dict[str, list[dict]] = {}
    for r in runs:
        by_identity.setdefault(json.dumps(r["identity"], sort_keys=True, default=str), []).append(r)
    kept, notes = set(), []
    for copies in by_identity.values():
        copies = sorted(copies, key=_preference)
        kept.add(id(copies[0]))
        if len(copies) > 1:
            first = Path(copies[0]["path"]).parent
            why = "named as its config records" if first.name == copies[0]["recorded_name"] \
                else "none is named as its config records: the first path"
            others = ", ".join(str(Path(c["path"]).parent) for c in copies[1:])
            notes.append(f"counted once: {len(copies)} folders hold the same run (same settings, seed "
                         f"{copies[0]['identity'].get('random_seed')}); kept {first} ({why}), not counted: {others}")
    # A run's views and attack variants are records of their own, and repeat the same note.
    return [r for r in runs if id(r) in kept], list(dict.fromkeys(notes))


def _identity(data: dict) -> dict:
    """What identifies the run's training, flattened; older files without one: their config, less derived
    keys. Attack settings join per attack and record (`_records`)."""
    ident = data.get("identity") if isinstance(data.get("identity"), dict) else None
    if ident is None:
        cfg = data["config"]
        return {k: v for k, v in cfg.items() if k not in NOT_RESULT_KEYS and k not in DERIVED_KEYS}
    out = {"format": ident.get("format")}
    out.update(ident.get("train") or {})
    return out


def _records(base: dict, data: dict) -> list[dict]:
    """The run's records: one per attacker view of its own attack settings (view `sent` always, for its
    accuracy), and one per other setting of one attack and view, each holding the results of that
    setting only. Identities gain `view` and, per attack with results, `<attack>.<setting>`."""
    def record(view, **more):
        return {**base, "view": view, "identity": {**base["identity"], "view": view}, "attacks": {}, **more}

    own, others = {SENT: record(SENT)}, []
    for e in entries(data):
        if e.variant is None:
            if e.view not in own:
                own[e.view] = record(e.view)
            rec = own[e.view]
        else:
            rec = record(e.view, filename=f"{base['filename']}@{e.attack}-{e.variant}", variant=e.variant)
            others.append(rec)
        rec["identity"].update({f"{e.attack}.{k}": v for k, v in (e.key or {}).items()})
        rec["attacks"].update({(e.attack, m): r for m, r in e.modes.items() if isinstance(r, dict)})
    return list(own.values()) + others


def _record(path: Path, data: dict) -> dict:
    cfg = data["config"]
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    rec = {
        "path": str(path),
        "filename": cfg.get("filename") or path.parent.name,
        "recorded_name": cfg.get("filename"),
        "dataset": cfg.get("dataset"),
        "arch": cfg.get("arch"),
        "cutlayer": cfg.get("cutlayer"),
        "bottleneck_option": cfg.get("bottleneck_option"),
        "regularization": cfg.get("regularization"),
        "sigma": _num(cfg.get("regularization_strength")),
        "lambd": _num(cfg.get("lambd")),
        "var_threshold": _num(cfg.get("var_threshold")),
        "num_epochs": _num(cfg.get("num_epochs")),
        "test_acc": _num(train.get("test_acc")),
        "wall_time_s": _num(train.get("wall_time_s")),
        **{k: cfg.get(k) if type(cfg.get(k)) is int else None for k in ("n_train", "n_val", "n_test")},
        "identity": _identity(data),
        "attacks": {},
        "view": SENT,
        "variant": None,
        "leakage": _leakage(data),
    }
    # The --AT_regularization defence; strength 0 switches it off, so such a run is a plain one.
    at, st = cfg.get("AT_regularization"), _num(cfg.get("AT_regularization_strength"))
    on = at not in (None, "") and str(at).lower() != "none" and bool(st)
    rec["defense"], rec["at_strength"] = (str(at), st) if on else ("None", None)
    return rec


ATTACK_ORDER = ATTACKS  # the registry's order (attacks/registry.py)


def attack_modes(runs: list[dict]) -> list[tuple[str, str]]:
    """Every (attack, mode) found in any run, mode by mode with the attacks side by side (decoder,
    gan, rmle, then any other), so the same mode's attacks sit next to each other in tables."""
    rank = {a: i for i, a in enumerate(ATTACK_ORDER)}
    return sorted({key for r in runs for key in r["attacks"]},
                  key=lambda am: (am[1], rank.get(am[0], len(rank)), am[0]))


def scores(rec: dict, attack: str, mode: str, which: str) -> dict:
    """{'mse_mean': .., 'mse_std': .., ...} for one run; values None where absent."""
    res = rec["attacks"].get((attack, mode), {})
    chosen = res.get(which) if isinstance(res.get(which), dict) else {}
    return {f"{m}_{s}": _num(chosen.get(f"{m}_{s}")) for m in METRICS for s in ("mean", "std")}


def sort_key(value):
    """Total order over None < numbers (ascending) < strings, so mixed values never raise."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def _rest(rec: dict, attack=None) -> str:
    """The identity less the title's keys and the table's axes (and, for one attack's tables, the other
    attacks' settings), as one comparable string."""
    others = tuple(f"{a}." for a in ATTACK_ORDER if a != attack) if attack else ()
    return json.dumps({k: v for k, v in rec["identity"].items()
                       if k not in GROUP_KEYS and k not in AXES and not k.startswith(others)},
                      sort_keys=True, default=str)


def group_key(rec: dict) -> tuple:
    return tuple(rec[k] for k in GROUP_KEYS)


def group_title(key: tuple) -> str:
    """key: GROUP_KEYS values, optionally followed by ((setting, value), ...) that tell groups apart."""
    d = dict(zip(GROUP_KEYS, key))
    parts = [str(d["dataset"]), str(d["arch"]), f"cut {d['cutlayer']}"]
    if d["bottleneck_option"] not in (None, "None"):
        parts.append(str(d["bottleneck_option"]))
    if d["regularization"] is not None:
        parts.append(str(d["regularization"]))
    if d["var_threshold"] is not None:
        parts.append(f"τ={d['var_threshold']:g}")
    if d["num_epochs"] is not None:
        parts.append(f"{d['num_epochs']:g} epoch{'' if d['num_epochs'] == 1 else 's'}")
    if d.get("defense") not in (None, "None"):
        parts.append(f"defence {d['defense']} (strength {d['at_strength']:g})")
    if d.get("view") is not None:
        parts.append(f"attacker view {d['view']}")
    for k, v in (key[len(GROUP_KEYS)] if len(key) > len(GROUP_KEYS) else ()):
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def groups(runs: list[dict], attack=None) -> list[tuple[tuple, list[dict]]]:
    """Runs split into table groups by full identity (less σ, λ, seed), in a deterministic order.

    A group's key is its GROUP_KEYS values plus the other settings whose values differ between groups.
    With `attack`, the groups of that attack's tables: the records holding its results, told apart by
    its own settings only (another attack's settings never split them); when no record holds any, each
    run's own records (accuracy only).
    """
    if attack is not None:
        runs = [r for r in runs if any(a == attack for a, _ in r["attacks"])] or \
            [r for r in runs if r.get("variant") is None]
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault((group_key(r), _rest(r, attack)), []).append(r)
    rests = [json.loads(rest) for _, rest in out]
    names = sorted({k for r in rests for k in r})
    varying = [k for k in names if len({json.dumps(r.get(k, absent(k)), default=str) for r in rests}) > 1]
    keyed = [(base + (tuple((k, json.loads(rest).get(k, absent(k))) for k in varying),), rs)
             for (base, rest), rs in out.items()]
    return sorted(keyed, key=lambda kv: tuple(sort_key(v) for v in kv[0][:-1]) + (json.dumps(kv[0][-1], default=str),))


def mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def cell_table(runs: list[dict], attack: str, mode: str, which: str):
    """Paper-table view of one group: sorted σ values, sorted λ values and {(σ, λ): cell}.

    A cell averages the runs that share (σ, λ) (for example several seeds) and says how many there were;
    `acc_sd` and `<metric>_sd` are the sample sd over those runs (None for one run).
    """
    by_cell: dict[tuple, list[dict]] = {}
    for r in runs:
        by_cell.setdefault((r["sigma"], r["lambd"]), []).append(r)
    cells = {}
    for key, rs in by_cell.items():
        sc = [scores(r, attack, mode, which) for r in rs]
        cells[key] = {"acc": mean(r["test_acc"] for r in rs), "n": len(rs),
                      **{m: mean(s[f"{m}_mean"] for s in sc) for m in METRICS}}
        cells[key].update(acc_sd=sd(r["test_acc"] for r in rs), **{f"{m}_sd": sd(s[f"{m}_mean"] for s in sc)
                                                                     for m in METRICS})
    sigmas = sorted({k[0] for k in cells}, key=sort_key)
    lambdas = sorted({k[1] for k in cells}, key=sort_key)
    return sigmas, lambdas, cells
