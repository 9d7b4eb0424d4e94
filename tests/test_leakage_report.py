"""The leakage figures in results.csv, results.md (σ × λ and CEM-gain tables) and report.html."""
import csv

import pytest
from test_report import metrics, write

from tools import report
from tools.stats import estimate

SEEDS = (125, 126, 127)
DFIL = {0.0: (100.0, 110.0, 90.0), 16.0: (50.0, 60.0, 40.0)}
NATS = {0.0: (200.0, 210.0, 190.0), 16.0: (150.0, 170.0, 160.0)}


def _leakage(dfil, nats):
    return {"dfil": dfil, "dfil_se": dfil / 100, "dfil_rel_se": 0.01, "probes": 4,
            "mse_bound_unbiased": 1 / dfil, "mi_bound_nats": nats,
            "mi_bound_bits_per_dim": nats / 0.6931471805599453 / 8192, "groups": 50, "images": 1000,
            "settings": {"version": 1}}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for lam in (0.0, 16.0):
        for i, seed in enumerate(SEEDS):
            for s in (0.05, 0.1):
                obj = metrics(s, lam)
                obj["config"].update(random_seed=seed, filename=f"s{s}_l{lam:g}_{seed}")
                scale = 1.0 if s == 0.05 else 0.25  # four times the variance: a quarter of the information
                obj["leakage"] = _leakage(DFIL[lam][i] * scale, NATS[lam][i] * scale)
                write(root, f"s{s}_l{lam:g}_{seed}", obj)
    bare = metrics(0.0, 0.0)
    bare["config"].update(random_seed=125, filename="nonoise")
    bare["leakage"] = {"dfil": None, "mse_bound_unbiased": None, "mi_bound_nats": None, "dfil_note": "n/a (no noise)"}
    write(root, "nonoise", bare)
    return root


def _row(md, start):
    return next([c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines() if line.startswith(start))


def test_csv_has_the_figures(sweep, capsys):
    assert report.main([str(sweep)]) == 0
    with open(sweep / "results.csv") as f:
        rows = {r["filename"]: r for r in csv.DictReader(f)}
    assert float(rows["s0.05_l16_126"]["leak_dfil"]) == 60.0
    assert float(rows["s0.05_l0_125"]["leak_mse_bound_unbiased"]) == pytest.approx(0.01)
    assert rows["s0.05_l0_125"]["leak_probes"] == "4" and rows["nonoise"]["leak_dfil"] == ""


def test_sigma_lambda_table_and_paired_gain(sweep, capsys):
    assert report.main([str(sweep)]) == 0
    md = (sweep / "results.md").read_text()
    assert "## Leakage figures" in md and "## CEM gain in the leakage figures" in md
    assert md.count("### ") == 1 and md.count(": leakage figures**") == 1  # the attack table keeps its "### " alone
    cells = _row(md.split(": leakage figures")[1], "| 0.05 |")
    assert cells[1].startswith("100 ± 10 / 0.0101") and cells[1].endswith("(n=3)")
    assert _row(md.split(": leakage figures")[1], "| 0 |")[1] == "n/a (no noise)"
    assert "4 probes per image (standard error at most 1% of it), on 1000 eval images" in md
    gain = _row(md.split("## CEM gain in the leakage figures")[1], "| 0.05 | 16 |")
    dfil = estimate(100 * (b - a) / a for a, b in zip(DFIL[0.0], DFIL[16.0]))
    nats = estimate(b - a for a, b in zip(NATS[0.0], NATS[16.0]))
    assert gain[2] == "3"
    assert gain[5] == f"{dfil.mean:+.1f}% [{dfil.lo:+.1f}, {dfil.hi:+.1f}] (lower)"
    assert gain[7] == f"{nats.mean:+.4g} [{nats.lo:+.4g}, {nats.hi:+.4g}] (lower)"


def test_html_has_the_bound_plot(sweep, capsys):
    assert report.main([str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    assert "Attack MSE against the dFIL bound" in page and "CEM gain in the leakage figures" in page
    assert (sweep / "report_files" / "leakage_bound.png").stat().st_size > 1000


def test_runs_without_figures_add_nothing(tmp_path, capsys):
    write(tmp_path / "r", "a", metrics(0.05, 0.0))
    assert report.main([str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "results.md").read_text()
    assert "Leakage figures" not in md and "leak_" not in (tmp_path / "r" / "results.csv").read_text()
    assert "dFIL bound" not in (tmp_path / "r" / "report.html").read_text()
