"""The repeated-query attacker's curve: each run's MSE against K, the number of sends it averages
(`--attack_queries K`, issue 35), one row per run, attacker view and attack (with its other settings
fixed). Runs whose defence draws no fresh randomness per send are named instead of given a curve:
K sends of them show no more than one. Standard library only, like tools.collect.
"""
from __future__ import annotations

import json

from tools.collect import scores, sort_key
from tools.stats import fmt, fmt_g
from tools.untrusted import md

KEY = "attack_queries"


def _k(rec: dict, attack: str) -> int:
    return int(rec["identity"].get(f"{attack}.{KEY}") or 1)


def curves(runs: list[dict], mode: str, which: str) -> list[dict]:
    """[{run, sigma, lambd, view, attack, mse: {K: MSE}}] for every (run, view, attack, other settings)
    with results at more than one K."""
    by: dict = {}
    for r in runs:
        for (attack, m) in r["attacks"]:
            if m != mode:
                continue
            rest = {k: v for k, v in r["identity"].items() if k.startswith(f"{attack}.") and k != f"{attack}.{KEY}"}
            cell = by.setdefault((r["filename"].split("@")[0], r["view"], attack, json.dumps(rest, sort_keys=True)),
                                 {"run": r["filename"].split("@")[0], "sigma": r["sigma"], "lambd": r["lambd"],
                                  "view": r["view"], "attack": attack, "mse": {}})
            cell["mse"][_k(r, attack)] = scores(r, attack, mode, which)["mse_mean"]
    return sorted((c for c in by.values() if len(c["mse"]) > 1),
                  key=lambda c: (sort_key(c["sigma"]), sort_key(c["lambd"]), c["run"], c["view"], c["attack"]))


def no_fresh_randomness(rec: dict) -> bool:
    """Whether the run sends the same features every time: no noise, local DP or dropout."""
    return not rec.get("sigma") and not any(w in str(rec.get("defense")) for w in ("local_dp", "dropout"))


def queries_markdown(runs: list[dict], mode: str, which: str) -> str:
    rows = curves(runs, mode, which)
    if not rows:
        return ""
    ks = sorted({k for c in rows for k in c["mse"]})
    out = ["\n## Repeated queries: MSE against K\n",
           "| run | σ | λ | view | attack | " + " | ".join(f"K = {k}" for k in ks) + " |",
           "|---" * (5 + len(ks)) + "|"]
    for c in rows:
        out.append(f"| {md(c['run'])} | {fmt_g(c['sigma'])} | {fmt_g(c['lambd'])} | {md(c['view'])} | "
                   f"{md(c['attack'])} | " + " | ".join(fmt(c["mse"].get(k), ".4f") for k in ks) + " |")
    fixed = sorted({r["filename"].split("@")[0] for r in runs if no_fresh_randomness(r)})
    out.append("")
    out.append(f"The attacker sees the mean of K independent sends of each image and trains on such means "
               f"(`--attack_queries K`); {mode} mode, {which} reconstructor, MSE on the same eval images."
               + (f" No curve for runs without fresh randomness per send (no noise, local DP or dropout: K sends "
                  f"equal one): {md(', '.join(fixed))}." if fixed else "") + "\n")
    return "\n".join(out)


def queries_figure(runs: list[dict], out, mode: str, which: str, name: str = "queries.png"):
    """One panel per σ (and attack): attack MSE against K, one line per λ, the mean over the runs (seeds)
    that have each K, error bars ± sd. None when no run has results at more than one K."""
    import math
    from pathlib import Path

    from tools.plot import plt, save
    from tools.stats import sd
    from tools.untrusted import mpl

    rows = curves(runs, mode, which)
    panels = sorted({(c["sigma"], c["attack"], c["view"]) for c in rows}, key=lambda p: (sort_key(p[0]), p[1], p[2]))
    if not panels:
        return None
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (sigma, attack, view) in zip(axes.flat, panels):
        mine = [c for c in rows if (c["sigma"], c["attack"], c["view"]) == (sigma, attack, view)]
        for lam in sorted({c["lambd"] for c in mine}, key=sort_key):
            ks = sorted({k for c in mine if c["lambd"] == lam for k in c["mse"]})
            vals = [[c["mse"][k] for c in mine if c["lambd"] == lam and c["mse"].get(k) is not None] for k in ks]
            pts = [(k, sum(v) / len(v), sd(v) or 0.0) for k, v in zip(ks, vals) if v]
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=f"λ={fmt_g(lam)}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K, sends averaged per image")
        ax.set_ylabel(f"{mpl(attack)} MSE ({mode})")
        ax.set_title(f"σ={fmt_g(sigma)}, view {mpl(view)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return save(fig, Path(out) / name, dpi=120)
