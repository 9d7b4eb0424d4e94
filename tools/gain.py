"""The CEM-gain table: how much CEM adds to each defence (the paper's comparison), over seeds.

For every setting (dataset, arch, cut, ...), defence and σ that has runs without CEM (λ = 0) and with
it (λ > 0), runs are paired by seed: both runs of a pair share the seed, hence the data split, the
initialisation and the attacker's evaluation images, so the pair's difference is CEM's alone. Per pair,
gain = (MSE_λ − MSE_0) / MSE_0 (the paper's form: positive = CEM made the inversion worse, i.e.
helped) and Δ accuracy = acc_λ − acc_0; the table gives their means over the pairs with a 95% Student-t
interval (tools.stats), for the chosen attack and for the strongest attacker of each run (the attack
with the lowest MSE among those the run has). Standard library only, like tools.collect.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import NamedTuple

from tools.collect import GROUP_KEYS, attack_modes, group_title, mean, scores, sort_key
from tools.stats import DASH, LEVEL, Estimate, estimate, fmt_mean_sd, strongest
from tools.untrusted import md


def seed_of(rec: dict):
    return rec["identity"].get("random_seed")


class Seed(NamedTuple):
    """One seed's results in one (σ, λ) cell."""
    acc: float | None
    mse: float | None            # of the table's attack
    best: Counter                # which attack was strongest (one count per run)
    best_mse: float | None       # its MSE


def _per_seed(runs, attack, mode, which, names) -> dict:
    """{(σ, λ): {seed: Seed}}. Two runs with one seed in one cell (a defence at strength 0 beside a
    plain run: the same training) are averaged."""
    by: dict = {}
    for r in runs:
        by.setdefault((r["sigma"], r["lambd"]), {}).setdefault(seed_of(r), []).append(r)
    out = {}
    for cell, seeds in by.items():
        out[cell] = {}
        for seed, rs in seeds.items():
            best = [strongest({a: scores(r, a, mode, which)["mse_mean"] for a in names}) for r in rs]
            best = [b for b in best if b is not None]
            out[cell][seed] = Seed(mean(r["test_acc"] for r in rs), mean(scores(r, attack, mode, which)["mse_mean"]
                                                                         for r in rs),
                                   Counter(a for a, _ in best), mean(m for _, m in best))
    return out


def _ratio(new, old):
    if new is None or not old:
        return None
    gain = (new - old) / old
    return gain if math.isfinite(gain) else None  # MSE 1e-300 without CEM: no gain a table can show


def _diff(new, old):
    return None if new is None or old is None else new - old


def _names(counts: Counter) -> str:
    return ", ".join(a if len(counts) == 1 else f"{a} ×{c}" for a, c in counts.most_common())


def gain_rows(grouped, attack: str, mode: str, which: str) -> list[dict]:
    """One row per (group, σ, λ > 0) whose group also has λ = 0 at that σ with a seed in common."""
    rows = []
    for key, runs in grouped:
        names = [a for a, m in attack_modes(runs) if m == mode]
        cells = _per_seed(runs, attack, mode, which, names)
        d = runs[0]
        # The title without the defence part: rows of every defence of one setting share a table.
        setting = group_title(tuple(None if k in ("defense", "at_strength") else v for k, v in zip(GROUP_KEYS, key)))
        defense = d["defense"] if d["defense"] == "None" else f"{d['defense']} (s={d['at_strength']:g})"
        for (s, lam), with_cem in sorted(cells.items(), key=lambda kv: (sort_key(kv[0][0]), sort_key(kv[0][1]))):
            base = cells.get((s, 0.0))
            if lam in (None, 0) or base is None:
                continue
            pairs = [(base[x], with_cem[x]) for x in with_cem if x in base]
            if not pairs:
                continue
            strong = [(p0, p1) for p0, p1 in pairs if p0.best and p1.best]
            rows.append({
                "setting": setting, "defense": defense, "sigma": s, "lambd": lam, "n": len(pairs),
                "unpaired": len(set(with_cem) ^ set(base)),
                "acc_0": estimate(p0.acc for p0, _ in pairs), "acc_cem": estimate(p1.acc for _, p1 in pairs),
                "mse_0": estimate(p0.mse for p0, _ in pairs), "mse_cem": estimate(p1.mse for _, p1 in pairs),
                "acc_change": estimate(_diff(p1.acc, p0.acc) for p0, p1 in pairs),
                "gain_pct": _pct(estimate(_ratio(p1.mse, p0.mse) for p0, p1 in pairs)),
                "strongest_gain_pct": _pct(estimate(_ratio(p1.best_mse, p0.best_mse) for p0, p1 in strong)),
                "strongest": _strongest_name(strong)})
    return rows


def _pct(e):
    if e is None:
        return None
    scale = lambda v: None if v is None else 100.0 * v
    return Estimate(100.0 * e.mean, e.n, scale(e.sd), scale(e.lo), scale(e.hi))


def _strongest_name(pairs) -> str:
    """Which attack was strongest, without CEM → with it when that changes; ×k counts runs when it varies."""
    if not pairs:
        return ""
    without = _names(sum((p0.best for p0, _ in pairs), Counter()))
    with_cem = _names(sum((p1.best for _, p1 in pairs), Counter()))
    return without if without == with_cem else f"{without} → {with_cem}"


def fmt_sd(e, spec) -> str:
    """'mean ± sd', or the mean alone for one value."""
    return DASH if e is None else fmt_mean_sd(e.mean, e.sd, spec)


def fmt_interval(e, spec, unit="") -> str:
    """'mean [lo, hi]' (the 95% interval), or the mean alone for one value: never a made-up interval."""
    if e is None:
        return DASH
    text = format(e.mean, spec) + unit
    return text if e.lo is None else f"{text} [{format(e.lo, spec)}, {format(e.hi, spec)}]"


def gain_markdown(grouped, attack: str, mode: str, which: str) -> str:
    rows = gain_rows(grouped, attack, mode, which)
    if not rows:
        return ""
    level = f"{LEVEL:.0%}"
    out = ["\n## CEM gain per defence\n"]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        out.append(f"**{md(setting)}**\n")
        out.append(f"| defence | σ | λ | seeds | accuracy no CEM | accuracy CEM | Δ accuracy [{level}] | MSE no CEM | "
                   f"MSE CEM | gain [{level}] | strongest attacker: gain [{level}] |")
        out.append("|---" * 11 + "|")
        for r in (r for r in rows if r["setting"] == setting):
            seeds = str(r["n"]) + (f" (+{r['unpaired']} unpaired)" if r["unpaired"] else "")
            best = fmt_interval(r["strongest_gain_pct"], "+.1f", "%")
            best = best if best == DASH else f"{best} ({md(r['strongest'])})"
            out.append(f"| {md(r['defense'])} | {r['sigma']:g} | {r['lambd']:g} | {seeds} | "
                       f"{fmt_sd(r['acc_0'], '.2f')} | "
                       f"{fmt_sd(r['acc_cem'], '.2f')} | {fmt_interval(r['acc_change'], '+.2f')} | "
                       f"{fmt_sd(r['mse_0'], '.4f')} | {fmt_sd(r['mse_cem'], '.4f')} | "
                       f"{fmt_interval(r['gain_pct'], '+.1f', '%')} | {best} |")
        out.append("")
    names = md(", ".join(dict.fromkeys(a for _, runs in grouped for a, m in attack_modes(runs) if m == mode)))
    out.append(f"Runs without and with CEM are paired by seed. Per pair: gain = (MSE with CEM − MSE without) / MSE "
               f"without, in percent, and Δ accuracy = accuracy with CEM − without, in percentage points ({md(attack)} "
               f"attack, {mode} mode, {which} decoder); positive gain means CEM made inversion harder. Each is the "
               f"mean over the paired seeds with its {level} Student-t interval, mean ± t(0.975, n−1)·sd/√n, in "
               f"brackets (none for one seed); accuracy and MSE: mean ± sd over the same seeds. Strongest attacker: "
               f"per run, the attack with the lowest MSE among those the run has ({names}), named after the gain "
               f"(a → b: without CEM → with CEM; ×k: in k runs).\n")
    return "\n".join(out)
