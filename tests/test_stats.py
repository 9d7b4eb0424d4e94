"""Statistics over seeds (tools/stats.py) and the paired CEM-gain table (tools/gain.py) on constructed
results whose means, sds and intervals are known by hand."""
import math

import pytest
from seed_sweep import paired_sweep, write_run

from tools import report
from tools.collect import groups, load_runs
from tools.gain import gain_rows
from tools.stats import estimate, sd, strongest, t975


def test_t_quantiles():
    assert t975(1) == 12.7062 and t975(2) == 4.3027 and t975(4) == 2.7764 and t975(30) == 2.0423
    assert 1.96 < t975(1000) < t975(100) < t975(31) < t975(30)
    with pytest.raises(ValueError):
        t975(0)


def test_t_quantiles_match_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed; the table is checked by hand above")
    for df in range(1, 121):
        assert t975(df) == pytest.approx(float(stats.t.ppf(0.975, df)), abs=6e-5), df


def test_interval_of_three_gains():
    e = estimate([0.1, 0.2, 0.3])
    assert e.n == 3 and e.mean == pytest.approx(0.2) and e.sd == pytest.approx(0.1)
    assert e.half_width == pytest.approx(4.3027 * 0.1 / math.sqrt(3))
    assert e.half_width == pytest.approx(0.2484, abs=1e-4)
    assert (e.lo, e.hi) == (pytest.approx(0.2 - 0.24842, abs=1e-5), pytest.approx(0.2 + 0.24842, abs=1e-5))


def test_one_value_has_no_interval_and_missing_values_are_not_zeros():
    e = estimate([0.25])
    assert (e.mean, e.n, e.sd, e.lo, e.hi, e.half_width) == (0.25, 1, None, None, None, None)
    assert estimate([None, 0.25, float("nan")]) == e
    assert estimate([]) is None and estimate([None]) is None and sd([1.0]) is None


def test_strongest_attacker_is_the_lowest_mse():
    assert strongest({"decoder": 0.03, "gan": 0.01, "rmle": 0.02}) == ("gan", 0.01)
    assert strongest({"decoder": 0.03, "gan": None}) == ("decoder", 0.03)
    assert strongest({"decoder": None}) is None


def test_gain_rows_are_paired_by_seed(tmp_path):
    root = paired_sweep(tmp_path / "runs")
    runs, _ = load_runs(root)
    (row,) = gain_rows(groups(runs), "decoder", "train_time", "final")
    assert row["n"] == 3 and row["unpaired"] == 0
    # per seed 10%, 20%, 30%: the mean of the pairs, not the gain of the means (+24.3%)
    g = row["gain_pct"]
    assert g.mean == pytest.approx(20.0) and g.sd == pytest.approx(10.0)
    assert g.half_width == pytest.approx(24.842, abs=1e-3)
    d = row["acc_change"]
    assert d.mean == pytest.approx(-2.0) and d.sd == pytest.approx(1.0) and d.hi == pytest.approx(-2 + 2.4842, abs=1e-4)
    # strongest attacker per run: GAN, GAN | GAN, decoder (0.24 < 0.25), GAN -> gains 20%, 140%, 20%
    s = row["strongest_gain_pct"]
    assert s.mean == pytest.approx(60.0) and s.sd == pytest.approx(math.sqrt(4800))
    assert s.half_width == pytest.approx(4.3027 * math.sqrt(4800) / math.sqrt(3))
    assert row["strongest"] == "gan → gan ×2, decoder ×1"


def test_gain_table_text_with_intervals(tmp_path, capsys):
    root = paired_sweep(tmp_path / "runs")
    write_run(root, 0.05, 0.0, 128, 33.0, {"decoder": 0.3, "gan": 0.2})  # no λ = 16 partner: left out
    assert report.main([str(root)]) == 0
    md = (root / "results.md").read_text()
    (line,) = [line for line in md.splitlines() if line.startswith("| None | 0.05 | 16 |")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "3 (+1 unpaired)"
    assert cells[4] == "32.00 ± 2.00" and cells[5] == "30.00 ± 1.00"
    assert cells[6] == "-2.00 [-4.48, +0.48]"
    assert cells[7] == "0.2333 ± 0.1528" and cells[8] == "0.2900 ± 0.2095"
    assert cells[9] == "+20.0% [-4.8, +44.8]"
    assert cells[10] == "+60.0% [-112.1, +232.1] (gan → gan ×2, decoder ×1)"
    assert "95% Student-t interval, mean ± t(0.975, n−1)·sd/√n" in md and "(none for one seed)" in md
    # σ×λ cells: mean ± sd (n) over the seeds, λ = 0 with the unpaired fourth seed
    (row,) = [r for r in md.splitlines() if r.startswith("| σ=0.05 |")][:1]
    cell0, cell16 = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cell0 == "32.25 ± 1.71 / 0.2500 ± 0.1291 / 0.500 ± 0.000 / 20.0 ± 0.0 (n=4)"
    assert cell16 == "30.00 ± 1.00 / 0.2900 ± 0.2095 / 0.500 ± 0.000 / 20.0 ± 0.0 (n=3)"
