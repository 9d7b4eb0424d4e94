"""Privacy–utility trade-off figure: test accuracy against attack MSE, one line per λ."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: must work on headless machines and inside tests
import matplotlib.pyplot as plt  # noqa: E402

from tools.collect import cell_table, group_title  # noqa: E402


def _label(v, name):
    return f"{name}=–" if v is None else f"{name}={v:g}"


def tradeoff_figure(grouped, out: Path, attack: str, mode: str, which: str) -> Path:
    """All groups in one PNG, one subplot each, so a sweep over several settings stays one file."""
    n = len(grouped)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.4 * nrows), squeeze=False)
    for ax, (key, runs) in zip(axes.flat, grouped):
        sigmas, lambdas, cells = cell_table(runs, attack, mode, which)
        plotted = False
        for lam in lambdas:
            pts = [(cells[(s, lam)]["mse"], cells[(s, lam)]["acc"], s) for s in sigmas
                   if (s, lam) in cells and cells[(s, lam)]["mse"] is not None
                   and cells[(s, lam)]["acc"] is not None]
            if not pts:
                continue
            plotted = True
            xs, ys, ss = zip(*pts)
            ax.plot(xs, ys, marker="o", label=_label(lam, "λ"))
            for x, y, s in pts:
                ax.annotate(_label(s, "σ"), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if not plotted:
            ax.text(0.5, 0.5, f"no {attack}/{mode} attack scores", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set_title("\n".join(textwrap.wrap(group_title(key), 48)), fontsize=9)
        ax.set_xlabel(f"{attack} attack MSE ({mode}, {which}); higher = more private")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(out) / "tradeoff.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
