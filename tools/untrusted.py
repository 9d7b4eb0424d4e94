"""A sweep folder is someone else's data: what the report takes from one, and how it writes beside it.

Researchers send each other sweep folders and archives and run the report on them, so nothing inside
one is trusted (docs/run-folders.md, "What the report trusts"):
  - paths: only regular files inside the folder are read (a symlink or `..` that leads out of it, an
    absolute path, a FIFO or device, a file larger than any run writes, are skipped and named);
  - strings (settings, attack names, decoder names, seeds): made one line, then escaped for where they
    go: `md` for results.md cells and headings, `mpl` for matplotlib titles and labels, `csv_value` for
    results.csv; report.html escapes with html.escape (tools/html_report.py);
  - writes: every output file is a new regular file moved into place (utils.write_file_atomic), so a
    planted symlink at an output's name is replaced, never written through.
Standard library only, like tools.collect.
"""
from __future__ import annotations

import html
import math
import os
import stat
from pathlib import Path

from utils import one_line  # shared with the run lifecycle's messages; the report's modules take it from here

# No run file comes near this (a grid PNG is tens of kB, a train_log.csv a few hundred).
MAX_READ_BYTES = 64 * 2**20


# Far beyond any figure a run records (MSE ≤ 1, accuracy ≤ 100, PSNR in the hundreds of dB at most), and
# small enough that sums, squares (sd) and ratios of the numbers kept stay finite: 1.7e308 is finite,
# but its mean over two seeds is not, and matplotlib cannot draw an axis to it.
LARGEST = 1e100


def number(x):
    """A number from a run folder as the report may compute with it, or None: not a number (a bool, a
    string), NaN, ±inf, or larger in magnitude than LARGEST."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return x if math.isfinite(x) and abs(x) <= LARGEST else None


# `|` ends a Markdown table cell, `<`/`&` start HTML in it, `[`/`]` and backticks make links and code;
# as character references they show as themselves in any Markdown viewer and in the raw file stay legible.
_MD = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "[": "&#91;", "]": "&#93;", "`": "&#96;"}


def md(value) -> str:
    """A string from a run folder, safe inside a results.md table cell, heading or paragraph."""
    return "".join(_MD.get(c, c) for c in one_line(value))


def md_unescape(text: str) -> str:
    """Back from results.md's text to the string shown (report.html escapes it again for HTML)."""
    return html.unescape(text)


def mpl(value) -> str:
    """A string from a run folder for a matplotlib title or label: `$` would start mathtext, whose
    parse errors are raised when the figure is drawn."""
    return one_line(value).replace("\\", "\\\\").replace("$", r"\$")


def csv_value(value):
    """results.csv quotes commas, quotes and newlines itself (csv.writer); a text cell that starts
    with = + - @ (or a tab) would be run as a formula by a spreadsheet, so it gets a leading '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def refused(root: Path, path: Path, max_bytes: int = MAX_READ_BYTES) -> str | None:
    """None when `path` is a regular file inside `root` once every symlink is resolved (and not
    larger than `max_bytes`); else why it is not read, in a few words."""
    try:
        real = Path(path).resolve(strict=True)
        st = os.stat(real)
    except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
        return "missing, unreadable or a symlink loop"
    if not real.is_relative_to(Path(root).resolve()):
        return "it leads outside the folder (a symlink or '..')"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size > max_bytes:
        return f"larger than {max_bytes // 2**20} MiB, more than any run writes"
    return None


def recorded_path(run_dir: Path, value) -> Path | None:
    """A path a run's metrics.json records (relative to its folder, as main_MIA.py writes them), or
    None when it is not one: not a string, absolute, or climbing with '..'."""
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    rel = Path(value)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    return Path(run_dir) / rel


def find(root: Path, name: str) -> tuple[list[Path], list[str]]:
    """Files called `name` below `root`, sorted, without entering a symlinked folder (it may lead out of
    the tree, or back into it and count runs twice); each such link is named in the returned notes."""
    found, notes = [], []
    for here, dirs, files in os.walk(root, followlinks=False):
        for d in sorted(dirs):
            if os.path.islink(os.path.join(here, d)):
                notes.append(f"not entering {one_line(os.path.join(here, d))}: a symlinked folder (the report "
                             "reads only the folder's own files)")
        found += [Path(here) / f for f in files if f == name]
    return sorted(found), notes
