"""What a report's numbers stand on, said at the top of results.md, report.html and the terminal summary:
which data set the runs used (the quick run's offline fallback by name) and how many seeds each setting
has (one seed gives no interval). Standard library only, like the rest of the report's reading side.
"""
from __future__ import annotations

import math
from collections import Counter

from tools.collect import _num
from tools.untrusted import md

# In words, for a reader who did not choose the data set: where a run's numbers can be compared.
DATA_WORDS = {
    "cifar10": "CIFAR-10 (32×32 colour photographs, 10 classes)",
    "cifar100": "CIFAR-100 (32×32 colour photographs, 100 classes)",
    "facescrub": "FaceScrub (48×48 face crops)",
    "tinyimagenet": "TinyImageNet (64×64 photographs, 200 classes)",
    "digits": ("scikit-learn's handwritten digits (8×8 grey images upscaled to 32×32), NOT CIFAR-10: the quick "
               "run's offline fallback, used when CIFAR-10 is not under --data_root and cannot be downloaded "
               "(pass --data_root with a CIFAR-10 copy for the real thing). Its numbers compare with no "
               "CIFAR-10 number, the paper's included"),
}
SEEDS_EXAMPLE = '--seeds "125 126 127"'


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else "?"


def data_note(runs: list[dict]) -> str:
    """One line per data set among the runs: its name in words and the images each split had."""
    lines = []
    for name in sorted({str(r.get("dataset")) for r in runs}):
        of = [r for r in runs if str(r.get("dataset")) == name]
        sizes = sorted({tuple(_count(r.get(k)) for k in ("n_train", "n_val", "n_test")) for r in of})
        words = DATA_WORDS.get(name, f"`{md(name)}` (data the user supplied)")
        split = "; ".join(f"{t} training, {v} validation, {e} test images" for t, v, e in sizes)
        lines.append(f"**Data: {words}.**\n\nThe runs had {split}.")
    return "\n\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds / 60))} min"


def seed_note(runs: list[dict]) -> str:
    """Where every setting has one seed: no interval, how to get one, and how long that would take here
    (the runs' own recorded training and attack times, so the estimate is this machine's)."""
    settings = Counter(tuple(sorted((k, str(v)) for k, v in r["identity"].items() if k != "random_seed"))
                       for r in runs if r.get("variant") is None and r.get("view") == "sent")
    if not settings or max(settings.values()) > 1:
        return ""
    spent = 0.0
    for r in runs:
        if r.get("variant") is None and r.get("view") == "sent":
            spent += _num(r.get("wall_time_s")) or 0.0
            spent += sum(_num(res.get("wall_time_s")) or 0.0 for res in r["attacks"].values())
    timing = (f" Two more seeds of these {len(settings)} setting(s) cost about {_minutes(2 * spent)} more "
              f"on the machine that ran them (their recorded training and attack times)." if spent else "")
    return ("**One seed per setting: these numbers have no interval.**\n\nOn small data a run's accuracy "
            "moves by several points between seeds, so one seed cannot say what CEM costs or gains. Run the "
            f"same sweep again with {SEEDS_EXAMPLE} (`bash run_exp.sh --quick {SEEDS_EXAMPLE}` for the quick "
            "run; finished seeds are kept) for means ± sd and paired 95% intervals." + timing)


def provenance(runs: list[dict]) -> str:
    """The Markdown paragraphs that open results.md, report.html and the terminal summary."""
    return "\n\n".join(p for p in (data_note(runs), seed_note(runs)) if p) + "\n\n"
