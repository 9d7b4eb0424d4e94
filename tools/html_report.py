"""One HTML page per sweep folder: report.html beside results.md, its images in report_files/.

The page is plain HTML with its CSS inline and no script, so it opens from disk anywhere (no server, no
network) and the folder can be copied or archived as it is. It holds:
  - the tables of results.md (the CEM-gain table first), converted from that Markdown so the page and
    the file never disagree;
  - the trade-off plot (accuracy vs MSE, ± sd error bars) of every attack found in the chosen mode;
  - per defence and σ, the reconstruction grids of one seed at λ = 0 and at each λ > 0, side by side.
    Runs of one seed share their evaluation images (the test split and its order depend on the data
    set, --limit_test and the seed, never on σ, λ or the defence); the page checks it on the pixels, by
    comparing the grids' rows of originals, and says so under each row of grids;
  - per run, its training curves from train_log.csv (accuracy, CEM term, mean cluster variance, λ_eff).
report_files/ is made anew on every report (a symlink or file of that name is removed, not followed):
the grids are copies, so the page also works when written with --out elsewhere, each named after its
run folder and a digest of that folder's path (`_run_stem`), so runs of one name under two parents
never share a file. Only grids that are regular files inside the folder, readable PNGs of a plausible
size, are copied (tools/untrusted.py); each one refused is named on the page, under "Skipped", and on
stderr.
"""
from __future__ import annotations

import csv
import hashlib
import html
import os
import re
import shutil
from pathlib import Path

from PIL import Image, ImageChops

from tools.collect import attack_modes, group_title, sort_key
from tools.gain import seed_of
from tools.plot import curves_figure, tradeoff_figure
from tools.stats import fmt_g
from tools.untrusted import md_unescape, one_line
from utils import write_file_atomic

FILES = "report_files"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
td { white-space: nowrap; } td:last-child { white-space: normal; min-width: 12em; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
p.note { font-size: 0.85em; color: #555; max-width: 70em; }
.row { display: flex; flex-wrap: wrap; gap: 0.75em; }
figure { margin: 0.3em 0; flex: 1 1 420px; max-width: 100%; }
figure img { width: 100%; height: auto; border: 1px solid #ddd; image-rendering: pixelated; }
figcaption { font-size: 0.8em; color: #444; }
img.plot { max-width: 100%; height: auto; }
figure.wide { flex: 0 1 auto; } figure.wide img { width: auto; max-width: 100%; image-rendering: auto; }
"""


def _e(text) -> str:
    return html.escape(one_line(text), quote=True)


def _m(text) -> str:
    """Text of results.md (strings from run folders there are escaped for Markdown) escaped for HTML."""
    return _e(md_unescape(text))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _run_stem(run_dir: Path) -> str:
    """A file name of report_files/ that is this run folder's alone: its name (legible) and a digest of
    its whole path, since runs under different parents (x/run, y/run) may share a name, and two names
    may look alike once made safe."""
    digest = hashlib.sha256(os.fsencode(Path(run_dir))).hexdigest()[:12]
    return f"{_safe(Path(run_dir).name)}-{digest}"


def markdown_html(md: str) -> str:
    """The subset of Markdown that results.md uses: headings, bold lines, pipe tables, paragraphs."""
    out, table = [], []

    def flush():
        if table:
            head, *body = table
            out.append('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_m(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{_m(c)}</td>" for c in row)
                                                          + "</tr>" for row in body) + "</tbody></table></div>")
            table.clear()

    for line in md.splitlines():
        line = line.strip()
        if line.startswith("|"):
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line):  # the header separator
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        flush()
        if not line:
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            level = min(len(m.group(1)), 4)
            out.append(f"<h{level}>{_m(m.group(2))}</h{level}>")
        elif line.startswith("**") and line.endswith("**"):
            out.append(f"<h4>{_m(line.strip('*'))}</h4>")
        else:
            out.append(f'<p class="note">{_m(line)}</p>')
    flush()
    return "\n".join(out)


def _img(src: str, alt: str, cls: str = "") -> str:
    return f'<a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(alt)}"{f" class={cls!r}" if cls else ""}></a>'


def _originals(path: Path):
    """The top half of a grid: its rows of originals (save_grid puts reconstructions below them)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        return im.crop((0, 0, im.width, im.height // 2))


def same_originals(a: Path, b: Path):
    """True/False, or None when a grid cannot be read (a damaged PNG must not cost the whole page)."""
    try:
        x, y = _originals(a), _originals(b)
    except Exception:  # PIL raises OSError, ValueError, SyntaxError ... for damaged files
        return None
    return x.size == y.size and ImageChops.difference(x, y).getbbox() is None


# A grid is two rows of a few images each (save_grid); far larger is not one, and decoding it could take
# gigabytes (a decompression bomb is a few kB on disk).
MAX_GRID_PIXELS = 4096 * 4096


def grid_refused(path: Path):
    """None when `path` is a PNG the page can show, else why not (read from its header only)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, (w, h) = im.format, im.size
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBomb* ...
        return f"not a readable image ({type(e).__name__})"
    if fmt != "PNG":
        return f"a {one_line(fmt)} file, not the PNG a run writes"
    if w * h > MAX_GRID_PIXELS:
        return f"{w}×{h} pixels, far more than a grid"
    return None


def _grid_path(rec: dict, attack: str, mode: str):
    """The grid as collect.load_runs checked it: a regular file inside the folder, or None."""
    return (rec["attacks"].get((attack, mode)) or {}).get("grid_file")


def reconstructions(grouped, files: Path, attack: str, mode: str, skipped: list) -> str:
    """Per group and σ: one seed's grids at every λ side by side (the lowest seed that has λ = 0 and
    another λ), with the check that they show the same evaluation images. Grids that are no PNG a run
    wrote are left out and named in `skipped`."""
    out = []
    for key, runs in grouped:
        by: dict = {}
        for r in runs:
            path = _grid_path(r, attack, mode)
            why = None if path is None else grid_refused(path)
            if why:
                skipped.append(f"not showing the grid {one_line(path)}: {why}")
            elif path is not None:
                by.setdefault(r["sigma"], {}).setdefault(seed_of(r), {}).setdefault(r["lambd"], path)
        rows = []
        for s in sorted(by, key=sort_key):
            seeds = [x for x in sorted(by[s], key=sort_key) if 0 in by[s][x] and len(by[s][x]) > 1]
            if not seeds:
                continue
            grids = by[s][seeds[0]]
            figs = []
            for lam in sorted(grids, key=sort_key):
                copy = files / "grids" / f"{_run_stem(grids[lam].parent.parent)}_{_safe(grids[lam].name)}"
                write_file_atomic(copy, grids[lam].read_bytes())
                figs.append(f"<figure>{_img(f'{FILES}/grids/{copy.name}', f'σ={fmt_g(s)} λ={fmt_g(lam)} grid')}"
                            f"<figcaption>λ = {fmt_g(lam)}{' (no CEM)' if lam == 0 else ''}</figcaption></figure>")
            same = [same_originals(grids[0], p) for p in grids.values()]
            check = ("same evaluation images in every grid (their rows of originals are identical, pixel for pixel)"
                     if all(same) else "a grid could not be read" if None in same
                     else "the grids' originals differ: these runs were scored on different images")
            rows.append(f"<h4>σ = {fmt_g(s)}, seed {_e(seeds[0])}</h4><div class=\"row\">{''.join(figs)}</div>"
                        f'<p class="note">Top row of each grid: originals; below: the {_e(attack)} attack\'s '
                        f"reconstructions ({_e(mode)}). Checked: {check}.</p>")
        if rows:
            out.append(f"<h3>{_e(group_title(key))}</h3>" + "\n".join(rows))
    return "\n".join(out) or f'<p class="note">No run has a {_e(attack)}/{_e(mode)} grid at λ = 0 and λ &gt; 0.</p>'


def _train_log(rec: dict):
    path = rec.get("train_log")  # checked by collect.load_runs: inside the folder, or None
    if path is None:
        return None
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def training_curves(grouped, files: Path) -> str:
    out, drawn = [], set()
    for key, runs in grouped:
        figs = []
        for r in sorted(runs, key=lambda r: (sort_key(r["sigma"]), sort_key(r["lambd"]), sort_key(seed_of(r)))):
            # A run's attacker views and attack settings are records of their own that share its training
            # (and its folder): one figure per trained run, in the first group that holds one of them.
            if r["path"] in drawn:
                continue
            drawn.add(r["path"])
            rows = _train_log(r)
            if not rows:
                continue
            label = f"σ={fmt_g(r['sigma'])} λ={fmt_g(r['lambd'])} seed {seed_of(r)}"
            run_dir = Path(r["path"]).parent  # the run's, also when `r` is one of its attack variants
            png = curves_figure(rows, f"{label}: {run_dir.name}", files / "curves" / f"{_run_stem(run_dir)}.png",
                                empty="no CEM at λ = 0" if r["lambd"] == 0 else "not logged")
            figs.append(f"<figure class=\"wide\">{_img(f'{FILES}/curves/{png.name}', f'training curves {label}')}"
                        f"<figcaption>{_e(label)}</figcaption></figure>")
        if figs:
            out.append(f"<h3>{_e(group_title(key))}</h3><div class=\"row\">{''.join(figs)}</div>")
    return "\n".join(out) or '<p class="note">No run folder holds a train_log.csv.</p>'


def fresh_folder(path: Path) -> None:
    """`path` as a new, empty folder of the report's own: a symlink or file there is removed, not
    followed, and an old folder removed with what it holds (rmtree never follows the links inside)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        os.unlink(path)
    elif path.exists():
        shutil.rmtree(path)  # no figure of an older report stays
    path.mkdir()


def write_html(out: Path, grouped, sections: list, attack: str, mode: str, which: str, summary: str,
               skipped: list | None = None) -> tuple[Path, list[str]]:
    """report.html in `out`; sections: [(heading or None, Markdown)] shown in this order before the figures;
    `skipped`: one line per item the report left out (collect.load_runs' warnings), shown on the page.
    Returns the page and the lines of what the page itself left out (grids that are no PNG)."""
    files = Path(out) / FILES
    fresh_folder(files)
    (files / "curves").mkdir()
    own: list[str] = []
    plots = []
    for a in dict.fromkeys(a for _, runs in grouped for a, m in attack_modes(runs) if m == mode):
        png = tradeoff_figure(grouped, files, a, mode, which, name=f"tradeoff_{_safe(a)}.png")
        plots.append(f"<h3>{_e(a)} attack</h3>{_img(f'{FILES}/{png.name}', f'trade-off {a}', 'plot')}")
    body = [f"<h1>CEM report: {_e(Path(out).resolve().name)}</h1>", f'<p class="note">{_e(summary)}</p>']
    body += [(f"<h2>{_e(h)}</h2>\n" if h else "") + markdown_html(md) for h, md in sections if md.strip()]
    body.append("<h2>Privacy–utility trade-off</h2><p class=\"note\">Test accuracy against attack MSE, one line "
                "per λ, points labelled by σ; error bars ± sd over seeds.</p>"
                + ("".join(plots) or "<p>No attack scores.</p>"))
    if any(r["leakage"]["mse_bound_unbiased"] is not None for _, runs in grouped for r in runs):
        from tools.leakage_report import bound_figure

        png = bound_figure(grouped, files, attack, mode, which)
        body.append("<h2>Attack MSE against the dFIL bound</h2><p class=\"note\">One line per λ through σ; below the "
                    "dashed diagonal an attacker beats the Cramér–Rao bound, which only a biased attacker can "
                    "(docs/leakage.md); error bars ± sd over seeds.</p>"
                    + _img(f"{FILES}/{png.name}", "attack MSE against the dFIL bound", "plot"))
    from tools.queries import queries_figure

    runs_all = [r for _, runs in grouped for r in runs]
    png = queries_figure(runs_all, files, mode, which)
    if png is not None:
        body.append("<h2>Repeated queries: MSE against K</h2><p class=\"note\">The attacker averages K independent "
                    "sends of each image and trains on such means (--attack_queries K); one panel per σ, one line "
                    "per λ, mean over seeds, error bars ± sd. A line falling with K: the defence's protection "
                    "rests on fresh per-send noise that averaging removes.</p>"
                    + _img(f"{FILES}/{png.name}", "attack MSE against K", "plot"))
    body.append(f"<h2>Reconstructions, λ = 0 against λ &gt; 0</h2>{reconstructions(grouped, files, attack, mode, own)}")
    body.append(f"<h2>Training curves</h2>{training_curves(grouped, files)}")
    lines = list(skipped or []) + own
    if lines:
        body.append("<h2>Skipped</h2><p class=\"note\">What the report did not read or show, and why "
                    "(a report only reads regular files inside its folder):</p><ul>"
                    + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>CEM report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = Path(out) / "report.html"
    write_file_atomic(path, page.encode("utf-8"))
    return path, own
