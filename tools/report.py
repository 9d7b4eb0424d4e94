"""Turn a folder of finished runs into paper-style results.

    python -m tools.report <folder> [--out DIR] [--attack decoder] [--mode train_time|infer_time]
                                    [--which final|best_heldout]

Reads every metrics.json under <folder> (recursively; unfinished or unreadable ones, and ones holding
NaN or Infinity, which is not JSON, are skipped with a warning; copies of one run -- same settings and
seed -- count once, with a warning naming them) and writes into --out (default <folder>):
  results.csv   one row per run and attacker view (column view: sent or noise_only; other settings of
                one attack: a row <run>@<attack>-<digest>): configuration, test accuracy, mean/std MSE,
                SSIM, SSIM (library convention), PSNR for every attack mode found (columns
                <attack>_<mode>_<metric>_<stat>, taken from the --which decoder)
  results.md    one table per group of runs (dataset, arch, cut layer, and the other settings that must
                match: bottleneck, regularisation, τ, epochs, --AT_regularization defence and strength,
                the attacker view, named in the title, and --attack's own settings);
                rows σ ascending, columns λ ascending, cells "accuracy / MSE / SSIM / PSNR" for
                --attack/--mode/--which, mean ± sd (n) over the runs that differ only in their seed;
                where runs carry several attacks (decoder, gan, rmle), a second table per group puts
                them side by side; then, where runs with λ = 0 and λ > 0 share a setting, the CEM-gain
                table: per defence and σ, runs paired by seed, the mean paired gain (MSE_λ − MSE_0)/MSE_0
                in percent (the paper's form) and accuracy change with 95% t intervals, for --attack and
                for each run's strongest attacker (tools/gain.py, tools/stats.py)
  tradeoff.png  accuracy vs attack MSE, one subplot per group, one line per λ, points labelled by σ,
                error bars ± sd over seeds
  report.html   one page with all of it, per-attack trade-off plots, λ = 0 vs λ > 0 reconstructions
                of the same images and per-run training curves; images in report_files/ (tools/html_report.py)
Exit status 2 with a one-line message when there is nothing to report.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from pathlib import Path

from tools.collect import (
    LEAKAGE_FIELDS,
    METRICS,
    attack_modes,
    cell_table,
    group_title,
    groups,
    load_runs,
    mean,
    scores,
    sort_key,
)
from tools.provenance import provenance
from tools.stats import DASH, fmt, fmt_g, fmt_mean_sd
from tools.untrusted import csv_value, md, one_line
from utils import write_file_atomic

CONFIG_COLUMNS = ["filename", "dataset", "arch", "cutlayer", "bottleneck_option", "regularization", "sigma",
                  "lambd", "var_threshold", "num_epochs", "defense", "at_strength", "view", "test_acc"]


class ReportError(Exception):
    """Nothing sensible to report; main prints the message as one line and exits 2."""


def write_csv(runs, path: Path, which: str) -> None:
    modes = attack_modes(runs)
    flat = [{f"{a}_{m}_{k}": v for a, m in modes for k, v in scores(r, a, m, which).items()} for r in runs]
    # A metric missing from every run (e.g. ssim_lib in older files) would only add empty columns.
    metric_cols = [f"{a}_{m}_{k}_{s}" for a, m in modes for k in METRICS for s in ("mean", "std")]
    metric_cols = [c for c in metric_cols if any(sc.get(c) is not None for sc in flat)]
    leak_cols = [f for f in LEAKAGE_FIELDS if any(r["leakage"][f] is not None for r in runs)]
    order = sorted(range(len(runs)), key=lambda i: tuple(
        sort_key(runs[i][k]) for k in ("dataset", "arch", "cutlayer", "defense", "at_strength", "sigma", "lambd",
                                       "filename")))
    f = io.StringIO(newline="")
    w = csv.writer(f)  # quotes a value holding a comma, quote or newline: one run, one row
    # attack names come from the runs too
    w.writerow([csv_value(c) for c in CONFIG_COLUMNS + [f"leak_{f}" for f in leak_cols] + metric_cols])
    for i in order:
        r, sc = runs[i], flat[i]
        w.writerow([("" if r[c] is None else csv_value(r[c])) for c in CONFIG_COLUMNS]
                   + [("" if r["leakage"][f] is None else r["leakage"][f]) for f in leak_cols]
                   + [("" if sc.get(c) is None else sc[c]) for c in metric_cols])
    write_file_atomic(path, f.getvalue().encode("utf-8"))


def _sd(cell, key, spec) -> str:
    """'mean ± sd' over the cell's runs (seeds); the mean alone for one run, which has no sd."""
    return fmt_mean_sd(cell[key], cell.get(f"{key}_sd"), spec)


def _psnr(cell) -> str:
    """Per-image PSNR, and the published batch-wise one beside it, labelled, where the runs have it."""
    text = _sd(cell, "psnr", ".1f")
    return text if cell.get("psnr_batch") is None else f"{text} (batch {_sd(cell, 'psnr_batch', '.1f')})"


def _cell_text(cell) -> str:
    if cell is None:
        return DASH
    text = " / ".join([_sd(cell, "acc", ".2f"), _sd(cell, "mse", ".4f"), _sd(cell, "ssim", ".3f"), _psnr(cell)])
    return text + (f" (n={cell['n']})" if cell["n"] > 1 else "")


def _attack_desc(runs, attack, mode):
    """What attacker produced the numbers, from the runs themselves (e.g. 'res_normN8C64, 50 epochs')."""
    decoders = sorted({str(r["attacks"][(attack, mode)].get("decoder")) for r in runs
                       if (attack, mode) in r["attacks"] and r["attacks"][(attack, mode)].get("decoder")})
    epochs = sorted({str(r["attacks"][(attack, mode)].get("epochs")) for r in runs
                     if (attack, mode) in r["attacks"] and r["attacks"][(attack, mode)].get("epochs")})
    plural = "" if epochs == ["1"] else "s"
    parts = ([" or ".join(decoders)] if decoders else []) + ([f"{' or '.join(epochs)} epoch{plural}"] if epochs else [])
    return f" ({md(', '.join(parts))})" if parts else ""


def _baseline_text(runs, attack, mode) -> str:
    """The constant mean-image guess on the same evaluation images: the floor an attack must beat."""
    base = [r["attacks"][(attack, mode)].get("baseline_mean_image") for r in runs if (attack, mode) in r["attacks"]]
    base = [b for b in base if isinstance(b, dict) and b.get("psnr_mean") is not None]
    if not base:
        return ""
    avg = {k: mean([b.get(k) for b in base]) for k in ("mse_mean", "ssim_mean", "psnr_mean")}
    return (f"Reference, no attack (always guess the attacker's mean image): MSE {fmt(avg['mse_mean'], '.4f')} / "
            f"SSIM {fmt(avg['ssim_mean'], '.3f')} / PSNR {fmt(avg['psnr_mean'], '.1f')} dB.")


def markdown(grouped, attack: str, mode: str, which: str) -> str:
    which_text = "final decoder" if which == "final" else "decoder with the best held-out loss"
    out = []
    for key, runs in grouped:
        sigmas, lambdas, cells = cell_table(runs, attack, mode, which)
        out.append(f"### {md(group_title(key))}\n")
        out.append("| σ \\ λ | " + " | ".join(f"λ={fmt_g(l)}" for l in lambdas) + " |")
        out.append("|---" * (len(lambdas) + 1) + "|")
        for s in sigmas:
            out.append(f"| σ={fmt_g(s)} | " + " | ".join(_cell_text(cells.get((s, l))) for l in lambdas) + " |")
        out.append("")
        base = _baseline_text(runs, attack, mode)
        if base:
            out.append(base + "\n")
        out.append(f"Cell: test accuracy (%) / MSE / SSIM / PSNR (dB) of the {md(attack)} attack"
                   f"{_attack_desc(runs, attack, mode)}, {mode} mode, {which_text}, means over the "
                   f"attack's evaluation images; higher MSE and lower SSIM/PSNR mean better privacy; "
                   f"{DASH} = not available; with (n=k): mean ± sd over k runs (seeds), without: one run. "
                   "SSIM is the paper code's (zero-padded window); results.csv's ssim_lib (pytorch-msssim, valid "
                   "window) differs from it by an amount, and in a direction, that depends on the images, so "
                   "compare ssim with ssim only." + _BATCH_NOTE * any(c is not None and c.get("psnr_batch") is not None
                                                                    for c in cells.values()) + "\n")
    return "\n".join(out)


# What "(batch X)" after a PSNR means, said wherever it appears (docs/differences.md, item B).
_BATCH_NOTE = (" PSNR is the mean over images of 10·log10(1/MSE of the image); \"(batch X)\" beside it is the "
               "published code's PSNR: 10·log10(1/MSE) of each scoring batch's mean MSE, averaged over batches. "
               "It is never above ours, since the log of a mean is at least the mean of the logs.")


def comparison(grouped, mode: str, which: str) -> str:
    """Per group with more than one attack in `mode`: one row per (σ, λ), the attacks side by side."""
    out = []
    for key, runs in grouped:
        names = [a for a, m in attack_modes(runs) if m == mode]
        if len(names) < 2:
            continue
        tables = {a: cell_table(runs, a, mode, which) for a in names}
        sigmas, lambdas, _ = tables[names[0]]
        rows = sorted({k for a in names for k in tables[a][2]}, key=lambda k: (sort_key(k[0]), sort_key(k[1])))
        out.append(f"### {md(group_title(key))}: attacks side by side ({mode})\n")
        out.append("| σ | λ | accuracy | " + " | ".join(f"{md(a)} MSE / SSIM / PSNR" for a in names) + " |")
        out.append("|---" * (3 + len(names)) + "|")
        for s, l in rows:
            cells = [tables[a][2].get((s, l)) for a in names]
            first = next((c for c in cells if c is not None), None)
            acc = DASH if first is None else _sd(first, "acc", ".2f") + (f" (n={first['n']})" if first["n"] > 1 else "")
            text = [DASH if c is None else " / ".join([_sd(c, "mse", ".4f"), _sd(c, "ssim", ".3f"), _psnr(c)])
                    for c in cells]
            out.append(f"| {fmt_g(s)} | {fmt_g(l)} | {acc} | " + " | ".join(text) + " |")
        out.append("")
        base = _baseline_text(runs, names[0], mode)
        out.append((base + " " if base else "") + f"Same evaluation images for every attack ({which} "
                   "reconstructor); higher MSE and lower SSIM/PSNR mean better privacy; with (n=k): mean ± sd over "
                   "k runs (seeds)." + _BATCH_NOTE * any(c is not None and c.get("psnr_batch") is not None
                                                         for t in tables.values() for c in t[2].values()) + "\n")
    return "\n".join(out)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder holding run folders with metrics.json (searched recursively)")
    p.add_argument("--out", default=None, help="where to write results.csv/.md and tradeoff.png "
                                               "(default: the folder itself)")
    p.add_argument("--attack", default="decoder",
                   help="attack shown in the paper-style Markdown table and plot: decoder, gan or rmle; runs "
                        "with several attacks also get a table with the attacks side by side")
    p.add_argument("--mode", default="train_time", choices=["train_time", "infer_time"],
                   help="attacker data mode shown in the Markdown table and plot")
    p.add_argument("--which", default="final", choices=["final", "best_heldout"],
                   help="report the final attack decoder or the one with the best held-out loss")
    return p.parse_args(argv)


def run(args) -> list[Path]:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise ReportError(f"results folder '{folder}' does not exist; pass the --folder used for the runs")
    runs, warnings = load_runs(folder)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not runs:
        raise ReportError(f"no finished metrics.json under '{folder}'; run main_MIA.py or run_exp.sh "
                          f"with --folder {folder} first")
    found = attack_modes(runs)
    if (args.attack, args.mode) not in found:
        have = one_line(", ".join(f"{a}/{m}" for a, m in found) or "none")  # attack names come from the runs
        print(f"warning: no run has {args.attack}/{args.mode} attack scores (found: {have}); "
              f"table cells show accuracy only", file=sys.stderr)
    out = Path(args.out) if args.out else folder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create output folder '{out}' ({e.strerror}); pass a writable --out") from None
    writable(out)
    grouped = groups(runs, args.attack)  # split by this attack's settings only, not by other attacks'
    csv_path, md_path = out / "results.csv", out / "results.md"
    write_csv(runs, csv_path, args.which)
    head = provenance(runs)  # the data set and what one seed is worth, first in every output
    text = markdown(grouped, args.attack, args.mode, args.which)
    side = comparison(groups(runs), args.mode, args.which)
    text = text + ("\n" + side if side else "")
    from tools.gain import gain_markdown
    from tools.gain_attackers import attackers_gain_markdown
    from tools.queries import queries_markdown

    gain = gain_markdown(grouped, args.attack, args.mode, args.which)
    text += queries_markdown(runs, args.mode, args.which)
    gain += attackers_gain_markdown(runs, args.mode, args.which)
    from tools.leakage_report import leakage_gain_markdown, leakage_markdown

    leak = leakage_gain_markdown(grouped, args.attack, args.mode, args.which) + "\n" + \
        leakage_markdown(grouped, args.attack, args.mode, args.which)
    leak = "\n## Leakage figures (attack-independent; docs/leakage.md)\n" + leak if leak.strip() else ""
    gain += leak
    write_file_atomic(md_path, (head + text + gain).encode("utf-8"))
    # matplotlib is slow to import; only needed here
    from tools.html_report import write_html
    from tools.plot import tradeoff_figure

    png_path = tradeoff_figure(grouped, out, args.attack, args.mode, args.which)
    summary = f"{len(runs)} finished run(s)" + (f", {len(warnings)} warning(s)" if warnings else "")
    sections = [(None, head), (None, gain), ("Results per setting", text)]
    html_path, not_shown = write_html(out, grouped, sections, args.attack, args.mode, args.which,
                                      f"{summary} under {folder}; {args.attack} attack, {args.mode} mode, "
                                      f"{args.which} reconstructor.", skipped=warnings)
    for w in not_shown:
        print(f"warning: {w}", file=sys.stderr)
    print(head + text + gain)
    print(summary)
    for p in (csv_path, md_path, png_path, html_path):  # the page last: what to open next
        print(f"wrote {p}")
    return [csv_path, md_path, png_path, html_path]


OUTPUTS = ("results.csv", "results.md", "tradeoff.png", "report.html")


def writable(out: Path) -> None:
    """Before anything is written: a folder at an output's name, or a folder `out` that cannot take a new
    file, would stop the report half-way, some outputs new and others old."""
    for name in OUTPUTS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise ReportError(f"'{one_line(out / name)}' is a folder; remove or rename it, or pass another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ReportError(f"cannot write into '{one_line(out)}' ({e.strerror}); pass a writable --out") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
