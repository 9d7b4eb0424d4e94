"""Issue 34: the report's own files. results.csv's header cells are neutralised like its data cells, and
two runs with the same folder name under different parents never share a file in report_files/."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from seed_sweep import write_run
from test_report_html import page_of

from tools import report


def test_csv_header_cells_are_defused_like_data_cells(tmp_path, capsys):
    root = tmp_path / "runs"
    run = write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    m = json.loads((run / "metrics.json").read_text())
    m["attack"]['=HYPERLINK("http://x")'] = m["attack"].pop("decoder")
    (run / "metrics.json").write_text(json.dumps(m))
    assert report.main([str(root), "--attack", '=HYPERLINK("http://x")']) == 0
    with open(root / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    attack_cols = [c for c in header if "HYPERLINK" in c]
    assert attack_cols and all(c.startswith("'=") for c in attack_cols), header
    assert not any(c[:1] in "=+-@" for c in header), header


def _run_named(parent: Path, lambd: float, originals_seed=None) -> Path:
    """A run folder called `run` below `parent` (write_run names it after its settings)."""
    made = write_run(parent, 0.05, lambd, 125, 30.0 - lambd / 16, {"decoder": 0.1 + lambd / 100},
                     originals_seed=originals_seed)
    return made.rename(parent / "run")


def test_same_folder_name_under_two_parents_never_shares_a_report_file(tmp_path, capsys):
    root = tmp_path / "sweep"
    no_cem = _run_named(root / "y", 0.0)
    cem = _run_named(root / "x", 16.0)
    assert report.main([str(root)]) == 0
    page = page_of(root)
    srcs = [i["src"] for i in page.imgs]
    grids = [s for s in srcs if "/grids/" in s]
    curves = [s for s in srcs if "/curves/" in s]
    assert len(set(grids)) == 2 and len(set(curves)) == 2, srcs
    # each copy is its own run's grid, so the picture under "λ = 0" is the λ = 0 run's
    by_bytes = {(root / s).read_bytes(): s for s in grids}
    zero = (no_cem / "images" / "decoder_train_time.png").read_bytes()
    sixteen = (cem / "images" / "decoder_train_time.png").read_bytes()
    assert zero != sixteen and set(by_bytes) == {zero, sixteen}
    html = (root / "report.html").read_text()

    def caption(src):
        return html[html.index(src):].split("</figure>")[0]

    assert "λ = 0 (no CEM)" in caption(by_bytes[zero]) and "λ = 16" in caption(by_bytes[sixteen])
