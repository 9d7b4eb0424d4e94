"""The CEM-gain table: how much CEM adds to each defence (the paper's comparison).

For every setting (dataset, arch, cut, ...), defence and σ that has runs without CEM (λ = 0) and with
it (λ > 0): attack MSE without and with CEM, the gain in percent (MSE_λ − MSE_0) / MSE_0 · 100 (the
paper's form: positive = CEM made the inversion worse, i.e. helped), and the accuracy change.
Standard library only, like tools.collect.
"""
from __future__ import annotations

from tools.collect import GROUP_KEYS, cell_table, group_title

DASH = "–"


def gain_rows(grouped, attack: str, mode: str, which: str) -> list[dict]:
    """One row per (group, σ, λ > 0) whose group also has λ = 0 at that σ."""
    rows = []
    for key, runs in grouped:
        sigmas, lambdas, cells = cell_table(runs, attack, mode, which)
        d = runs[0]
        # The title without the defence part: rows of every defence of one setting share a table.
        setting = group_title(tuple(None if k in ("defense", "at_strength") else v for k, v in zip(GROUP_KEYS, key)))
        defense = d["defense"] if d["defense"] == "None" else f"{d['defense']} (s={d['at_strength']:g})"
        for s in sigmas:
            base = cells.get((s, 0.0)) or cells.get((s, 0))
            if base is None:
                continue
            for lam in lambdas:
                if lam in (None, 0) or (s, lam) not in cells:
                    continue
                c = cells[(s, lam)]
                gain = None
                if base["mse"] and c["mse"] is not None:
                    gain = 100.0 * (c["mse"] - base["mse"]) / base["mse"]
                dacc = None if base["acc"] is None or c["acc"] is None else c["acc"] - base["acc"]
                rows.append({"setting": setting, "defense": defense, "sigma": s, "lambd": lam,
                             "acc_0": base["acc"], "acc_cem": c["acc"], "acc_change": dacc,
                             "mse_0": base["mse"], "mse_cem": c["mse"], "gain_pct": gain})
    return rows


def _f(v, spec):
    return DASH if v is None else format(v, spec)


def gain_markdown(grouped, attack: str, mode: str, which: str) -> str:
    rows = gain_rows(grouped, attack, mode, which)
    if not rows:
        return ""
    out = ["## CEM gain per defence\n"]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        out.append(f"**{setting}**\n")
        out.append("| defence | σ | λ | accuracy no CEM | accuracy CEM | Δ accuracy | MSE no CEM | MSE CEM | gain |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in (r for r in rows if r["setting"] == setting):
            out.append(f"| {r['defense']} | {r['sigma']:g} | {r['lambd']:g} | {_f(r['acc_0'], '.2f')} | "
                       f"{_f(r['acc_cem'], '.2f')} | {_f(r['acc_change'], '+.2f')} | {_f(r['mse_0'], '.4f')} | "
                       f"{_f(r['mse_cem'], '.4f')} | {_f(r['gain_pct'], '+.1f')}% |")
        out.append("")
    out.append(f"Gain = (MSE with CEM − MSE without) / MSE without, in percent ({attack} attack, {mode} mode, "
               f"{which} decoder); positive means CEM made inversion harder. Δ accuracy in percentage points.\n")
    return "\n".join(out)
