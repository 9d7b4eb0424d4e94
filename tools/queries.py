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
