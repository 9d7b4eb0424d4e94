"""Privacy–utility trade-off figure: test accuracy against attack MSE, one line per λ."""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: must work on headless machines and inside tests
import matplotlib.pyplot as plt  # noqa: E402

from tools.collect import cell_table, group_title  # noqa: E402
from tools.untrusted import mpl, number  # noqa: E402
from utils import write_file_atomic  # noqa: E402


def _label(v, name):
    return f"{name}=–" if v is None else f"{name}={v:g}"


def tradeoff_figure(grouped, out: Path, attack: str, mode: str, which: str, name: str = "tradeoff.png") -> Path:
    """All groups in one PNG, one subplot each, so a sweep over several settings stays one file. Error
    bars: ± sd over a point's runs (seeds), on both axes; none where a point is one run."""
    n = len(grouped)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.4 * nrows), squeeze=False)
    for ax, (key, runs) in zip(axes.flat, grouped):
        sigmas, lambdas, cells = cell_table(runs, attack, mode, which)
        plotted = False
        for lam in lambdas:
            pts = [(c["mse"], c["acc"], s, c.get("mse_sd") or 0.0, c.get("acc_sd") or 0.0)
                   for s in sigmas for c in [cells.get((s, lam))]
                   if c is not None and c["mse"] is not None and c["acc"] is not None]
            if not pts:
                continue
            plotted = True
            xs, ys, ss, xerr, yerr = zip(*pts)
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=_label(lam, "λ"))
            for x, y, s, _, _ in pts:
                ax.annotate(_label(s, "σ"), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if not plotted:
            ax.text(0.5, 0.5, f"no {attack}/{mode} attack scores", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set_title("\n".join(textwrap.wrap(mpl(group_title(key)), 48)), fontsize=9)
        ax.set_xlabel(f"{mpl(attack)} attack MSE ({mode}, {which}); higher = more private"
                      + ("\nerror bars: ± sd over seeds" if any(c["n"] > 1 for c in cells.values()) else ""))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return save(fig, Path(out) / name, dpi=120)


def save(fig, path: Path, dpi: int) -> Path:
    """Render to memory, then move a new file into place: never written through a planted symlink."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    write_file_atomic(path, buf.getvalue())
    return Path(path)


# train_log.csv columns drawn per run, each in its own small panel: (title, [(column, legend)]).
CURVES = (("accuracy (%)", [("train_acc", "train"), ("val_acc", "validation")]),
          ("CEM term", [("cem_loss", None)]),
          ("mean cluster variance", [("cem_mean_var", None)]),
          ("λ_eff", [("lambda_eff", None)]))


def _column(rows, key):
    """(epochs, values) where the column holds a number; CEM's columns are empty without CEM."""
    pts = []
    for r in rows:
        try:
            x, y = float(r["epoch"]), float(r[key])
        except (KeyError, TypeError, ValueError):
            continue
        if number(x) is not None and number(y) is not None:  # 'inf' or 1e308 would break the axis limits
            pts.append((x, y))
    return tuple(zip(*pts)) if pts else ((), ())


def curves_figure(rows: list[dict], title: str, path: Path, empty: str = "not logged") -> Path:
    """One run's training curves from its train_log.csv rows, as a row of small multiples; `empty` is
    written in a panel whose columns hold no number (CEM's, in a run without CEM)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(CURVES), figsize=(2.4 * len(CURVES), 2.0), squeeze=False)
    for ax, (name, series) in zip(axes.flat, CURVES):
        drawn = False
        for key, legend in series:
            xs, ys = _column(rows, key)
            if xs:
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=legend)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, fontsize=8)
        elif any(legend for _, legend in series):
            ax.legend(fontsize=6)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(mpl(title), fontsize=8)
    fig.tight_layout()
    return save(fig, Path(path), dpi=100)
