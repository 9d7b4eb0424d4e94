"""The leakage figures (docs/leakage.md) in the report: the σ × λ table beside the attack's MSE, the
CEM-gain table of each figure paired by seed, and the plot of attack MSE against the dFIL bound.

Standard library only, like tools.collect (the plot imports matplotlib when it is drawn).
"""
from __future__ import annotations

from pathlib import Path

from tools.collect import group_title, mean, scores, sort_key
from tools.gain import fmt_interval, fmt_sd, seed_of
from tools.stats import DASH, LEVEL, estimate, fmt, fmt_g, fmt_mean_sd, sd
from tools.untrusted import md

# (field, label, format): the figures of a cell, in the order the table shows them.
SHOWN = (("dfil", "dFIL", ".4g"), ("mse_bound_unbiased", "MSE bound 1/dFIL", ".3g"),
         ("mi_bound_nats", "I(x; z) ≤ nats/image", ".4g"), ("mi_bound_bits_per_dim", "bits/sent dim", ".3g"))


def _value(rec: dict, field: str, attack: str, mode: str, which: str):
    return scores(rec, attack, mode, which)["mse_mean"] if field == "mse" else rec["leakage"][field]


def cells(runs, attack: str, mode: str, which: str) -> dict:
    """{(σ, λ): {field: mean, field_sd: sd, n, probes, groups, images, note}} over the runs (seeds)."""
    by: dict = {}
    for r in runs:
        by.setdefault((r["sigma"], r["lambd"]), []).append(r)
    out = {}
    for key, rs in by.items():
        c = {"n": len(rs), "note": next((r["leakage"]["note"] for r in rs if r["leakage"]["note"]), None)}
        for f in [f for f, _, _ in SHOWN] + ["mse", "probes", "groups", "images"]:
            vals = [_value(r, f, attack, mode, which) for r in rs]
            c[f], c[f"{f}_sd"] = mean(vals), sd(vals)
        c["worst_rel_se"] = max((r["leakage"]["dfil_rel_se"] for r in rs if r["leakage"]["dfil_rel_se"] is not None),
                                default=None)
        out[key] = c
    return out


def _cell_text(c) -> str:
    if c is None:
        return DASH
    if c["dfil"] is None and c["mi_bound_nats"] is None:
        return md(c["note"] or "not computed") if c["note"] else DASH
    text = " / ".join(fmt_mean_sd(c[f], c[f"{f}_sd"], spec) for f, _, spec in SHOWN[:3])
    text += f" ({fmt_mean_sd(c['mi_bound_bits_per_dim'], c['mi_bound_bits_per_dim_sd'], '.3g')})"
    text += f" / {fmt_mean_sd(c['mse'], c['mse_sd'], '.4f')}"
    return text + (f" (n={c['n']})" if c["n"] > 1 else "")


def leakage_markdown(grouped, attack: str, mode: str, which: str) -> str:
    """One σ × λ table per group with any leakage figure; '' when no run has them."""
    out = []
    for key, runs in grouped:
        if not any(r["leakage"]["dfil"] is not None or r["leakage"]["note"] for r in runs):
            continue
        table = cells(runs, attack, mode, which)
        sigmas = sorted({k[0] for k in table}, key=sort_key)
        lambdas = sorted({k[1] for k in table}, key=sort_key)
        # A bold line and bare σ values, as the CEM-gain table: the attack tables' "### " titles and "| σ=" rows
        # stay theirs alone
        out.append(f"**{md(group_title(key))}: leakage figures**\n")
        out.append("| σ \\ λ | " + " | ".join(f"λ={fmt_g(lam)}" for lam in lambdas) + " |")
        out.append("|---" * (len(lambdas) + 1) + "|")
        for s in sigmas:
            out.append(f"| {fmt_g(s)} | " + " | ".join(_cell_text(table.get((s, lam))) for lam in lambdas) + " |")
        probes = sorted({int(c["probes"]) for c in table.values() if c["probes"] is not None})
        images = sorted({int(c["images"]) for c in table.values() if c["images"] is not None})
        worst = max((c["worst_rel_se"] for c in table.values() if c["worst_rel_se"] is not None), default=None)
        groups_ = sorted({int(round(c["groups"])) for c in table.values() if c["groups"] is not None})
        out.append("")
        out.append(f"Cell: dFIL / unbiased attacker's MSE bound 1/dFIL / I(x; z) ≤ nats per image (bits per sent "
                   f"dimension) / the {md(attack)} attack's MSE ({mode}, {which}); with (n=k): mean ± sd over k "
                   f"seeds. dFIL: Hutchinson estimate with {', '.join(map(str, probes)) or DASH} probes per image "
                   f"(standard error at most {fmt(None if worst is None else 100 * worst, '.2g')}% of it), "
                   f"on {', '.join(map(str, images)) or DASH} eval images; the mixture bound "
                   f"from {', '.join(map(str, groups_)) or DASH} (class, cluster) groups. Bounds for unbiased "
                   "attackers (dFIL) and for the eval images' empirical distribution (mixture), not guarantees "
                   "against every attack: see docs/leakage.md.\n")
    return "\n".join(out)


def gain_rows(grouped, attack: str, mode: str, which: str) -> list[dict]:
    """Per group, σ and λ > 0 with λ = 0 runs of the same seeds: each figure's paired change."""
    rows = []
    for key, runs in grouped:
        by: dict = {}
        for r in runs:
            by.setdefault((r["sigma"], r["lambd"]), {})[seed_of(r)] = r
        for (s, lam), with_cem in sorted(by.items(), key=lambda kv: (sort_key(kv[0][0]), sort_key(kv[0][1]))):
            base = by.get((s, 0.0))
            if lam in (None, 0) or base is None:
                continue
            pairs = [(base[x], with_cem[x]) for x in with_cem if x in base]
            if not pairs or all(p1["leakage"]["dfil"] is None for _, p1 in pairs):
                continue
            row = {"setting": group_title(key), "sigma": s, "lambd": lam, "n": len(pairs)}
            for f in ("dfil", "mse_bound_unbiased", "mse"):  # ratios, in percent, as the MSE gain
                row[f] = estimate([_ratio(_value(p1, f, attack, mode, which), _value(p0, f, attack, mode, which))
                               for p0, p1 in pairs])
            for f in ("mi_bound_nats", "mi_bound_bits_per_dim"):  # differences: nats add up
                row[f] = estimate(_diff(p1["leakage"][f], p0["leakage"][f]) for p0, p1 in pairs)
            row["dfil_0"] = estimate(p0["leakage"]["dfil"] for p0, _ in pairs)
            row["dfil_cem"] = estimate(p1["leakage"]["dfil"] for _, p1 in pairs)
            rows.append(row)
    return rows


def _ratio(new, old):
    return None if new is None or not old else 100.0 * (new - old) / old


def _diff(new, old):
    return None if new is None or old is None else new - old


def _lowers(e) -> str:
    """Whether CEM lowers the figure, judged by the interval (one seed: the sign only, said so)."""
    if e is None:
        return DASH
    if e.lo is None:
        return "lower, 1 seed" if e.mean < 0 else "not lower, 1 seed"
    return "lower" if e.hi < 0 else ("higher" if e.lo > 0 else "no clear change")


def leakage_gain_markdown(grouped, attack: str, mode: str, which: str) -> str:
    rows = gain_rows(grouped, attack, mode, which)
    if not rows:
        return ""
    level = f"{LEVEL:.0%}"
    out = ["\n## CEM gain in the leakage figures\n"]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        out.append(f"**{md(setting)}**\n")
        out.append(f"| σ | λ | seeds | dFIL no CEM | dFIL CEM | dFIL change [{level}] | MSE bound change [{level}] | "
                   f"Δ I(x; z) ≤ nats [{level}] | Δ bits/dim [{level}] | {md(attack)} MSE change [{level}] |")
        out.append("|---" * 10 + "|")
        for r in (r for r in rows if r["setting"] == setting):
            out.append(f"| {r['sigma']:g} | {r['lambd']:g} | {r['n']} | {fmt_sd(r['dfil_0'], '.4g')} | "
                       f"{fmt_sd(r['dfil_cem'], '.4g')} | "
                       f"{fmt_interval(r['dfil'], '+.1f', '%')} ({_lowers(r['dfil'])}) | "
                       f"{fmt_interval(r['mse_bound_unbiased'], '+.1f', '%')} | "
                       f"{fmt_interval(r['mi_bound_nats'], '+.4g')} ({_lowers(r['mi_bound_nats'])}) | "
                       f"{fmt_interval(r['mi_bound_bits_per_dim'], '+.3g')} | {fmt_interval(r['mse'], '+.1f', '%')} |")
        out.append("")
    out.append(f"Runs without and with CEM paired by seed, as in the CEM-gain table. Per pair: dFIL, its MSE bound "
               f"and the attack's MSE as relative changes (with CEM − without) / without, in percent; the mixture "
               f"bound as differences, in nats per image and bits per sent dimension. Each is the mean over the "
               f"paired seeds with its {level} Student-t interval in brackets (none for one seed); 'lower': the "
               "whole interval is below 0.\n")
    return "\n".join(out)


def bound_figure(grouped, out: Path, attack: str, mode: str, which: str, name: str = "leakage_bound.png") -> Path:
    """Attack MSE against the dFIL bound 1/dFIL, one line per λ through σ; the diagonal marks MSE = bound
    (an unbiased attacker cannot go below it). Error bars ± sd over seeds."""
    import math
    import textwrap

    from tools.plot import plt, save
    from tools.untrusted import mpl

    n = max(len(grouped), 1)
    ncols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / ncols), ncols, figsize=(5.5 * ncols, 4.4 * math.ceil(n / ncols)),
                             squeeze=False)
    for ax, (key, runs) in zip(axes.flat, grouped):
        table = cells(runs, attack, mode, which)
        lows = []
        for lam in sorted({k[1] for k in table}, key=sort_key):
            pts = sorted([(c["mse_bound_unbiased"], c["mse"], s, c["mse_bound_unbiased_sd"] or 0.0, c["mse_sd"] or 0.0)
                          for (s, lm), c in table.items() if lm == lam and c["mse_bound_unbiased"] is not None
                          and c["mse"] is not None], key=lambda p: sort_key(p[2]))
            if not pts:
                continue
            xs, ys, ss, xerr, yerr = zip(*pts)
            lows += list(xs) + list(ys)
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=f"λ={fmt_g(lam)}")
            for x, y, s, _, _ in pts:
                ax.annotate(f"σ={fmt_g(s)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if lows:
            lo, hi = min(lows), max(lows)
            ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="MSE = bound")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no dFIL bound and attack MSE", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("\n".join(textwrap.wrap(mpl(group_title(key)), 48)), fontsize=9)
        ax.set_xlabel("dFIL bound 1/dFIL on an unbiased attacker's MSE")
        ax.set_ylabel(f"{mpl(attack)} attack MSE ({mode}, {which})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(grouped):]:
        ax.axis("off")
    fig.tight_layout()
    return save(fig, Path(out) / name, dpi=120)
