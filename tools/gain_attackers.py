"""The CEM-gain table against every attacker (issue 35): one row per attacker (an attack with each of its
settings found: the paper's attackers and the adaptive ones, auxiliary data, repeated queries, ...) and
one for the strongest attacker of each run over all of them, runs without and with CEM paired by seed
as in tools/gain.py, with 95% Student-t intervals. Results scored on some classes only
(--attack_eval_classes) get their row but stay out of the strongest: their MSE is on other images.
Standard library only, like tools.collect.
"""
from __future__ import annotations

from attacks.flags import DEFAULTS
from tools.collect import GROUP_KEYS, attack_modes, group_key, group_title, groups, scores, sort_key
from tools.gain import _pct, _ratio, fmt_interval, fmt_sd, gain_rows, seed_of
from tools.stats import LEVEL, estimate
from tools.untrusted import md

EVAL_CLASSES = "attack_eval_classes"


def attacker_label(attack: str, settings) -> str:
    """'decoder' or 'decoder (attack_queries=4)': the attack and its settings that set it apart."""
    own = [f"{k.split('.', 1)[1]}={v}" for k, v in settings if k.startswith(f"{attack}.") and
           k.split(".", 1)[1] not in ("results_version", "attacker_data_digest") and
           v not in (None, "<unset>", DEFAULTS.get(k.split(".", 1)[1]))]
    return attack + (f" ({', '.join(own)})" if own else "")


def _setting(key: tuple) -> tuple:
    """(the title without the defence, the defence): every defence of one setting shares a table, as in
    tools/gain.py."""
    d = dict(zip(GROUP_KEYS, key))
    title = group_title(tuple(None if k in ("defense", "at_strength") else d[k] for k in GROUP_KEYS))
    return title, d["defense"] if d["defense"] == "None" else f"{d['defense']} (s={d['at_strength']:g})"


def _strongest(runs, mode, which) -> dict:
    """{(setting key, σ, λ): {seed: (MSE, attacker)}}: per run, its attacker with the lowest MSE over every
    record (own settings and variants) scored on all eval images."""
    best: dict = {}
    for r in runs:
        for attack, m in r["attacks"]:
            if m != mode or r["identity"].get(f"{attack}.{EVAL_CLASSES}") is not None:
                continue
            mse = scores(r, attack, m, which)["mse_mean"]
            if mse is None:
                continue
            label = attacker_label(attack, [(k, v) for k, v in r["identity"].items()
                                            if k.split(".", 1)[-1] in ("attack_queries", "attacker_data")])
            cell = best.setdefault((group_key(r), r["sigma"], r["lambd"]), {})
            old = cell.get(seed_of(r))
            if old is None or mse < old[0]:
                cell[seed_of(r)] = (mse, label)
    return best


def attackers_gain_markdown(runs: list[dict], mode: str, which: str) -> str:
    rows = []
    for attack in dict.fromkeys(a for a, m in attack_modes(runs) if m == mode):
        for key, rs in groups(runs, attack):
            for r in gain_rows([(key, rs)], attack, mode, which):
                title, defence = _setting(key)
                rows.append({**r, "setting": title, "defence": defence, "attacker": attacker_label(attack, key[-1])})
    best = _strongest(runs, mode, which)
    for (setting, s, lam), seeds in best.items():
        base = best.get((setting, s, 0.0))
        if lam in (None, 0) or base is None:
            continue
        pairs = [(base[x], seeds[x]) for x in seeds if x in base]
        if not pairs:
            continue
        names = sorted({p[1] for pair in pairs for p in pair})
        title, defence = _setting(setting)
        rows.append({"setting": title, "defence": defence, "sigma": s, "lambd": lam, "n": len(pairs),
                     "attacker": "strongest: " + ", ".join(names),
                     "mse_0": estimate(p0[0] for p0, _ in pairs), "mse_cem": estimate(p1[0] for _, p1 in pairs),
                     "gain_pct": _pct(estimate(_ratio(p1[0], p0[0]) for p0, p1 in pairs)), "strongest": True})
    if not rows:
        return ""
    level = f"{LEVEL:.0%}"
    out = ["\n## CEM gain against every attacker\n"]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        out += [f"**{md(setting)}**\n",
                f"| σ | λ | defence | attacker | seeds | MSE no CEM | MSE CEM | gain [{level}] |", "|---" * 8 + "|"]
        mine = sorted((r for r in rows if r["setting"] == setting), key=lambda r: (
            r["defence"] != "None", r["defence"], sort_key(r["sigma"]), sort_key(r["lambd"]), bool(r.get("strongest"))))
        for r in mine:
            out.append(f"| {r['sigma']:g} | {r['lambd']:g} | {md(r['defence'])} | {md(r['attacker'])} | {r['n']} | "
                       f"{fmt_sd(r['mse_0'], '.4f')} | {fmt_sd(r['mse_cem'], '.4f')} | "
                       f"{fmt_interval(r['gain_pct'], '+.1f', '%')} |")
        out.append("")
    out.append(f"Runs without and with CEM paired by seed; gain = (MSE with CEM − MSE without) / MSE without, in "
               f"percent, mean over the pairs with its {level} Student-t interval ({mode} mode, {which} "
               "reconstructor; positive: CEM made inversion harder). One row per attacker and settings; "
               "strongest: per run, the attacker with the lowest MSE among all of them, except those scored on "
               "some classes only (attack_eval_classes), named in the row.\n")
    return "\n".join(out)
