"""The CEM-gain table against every attacker (tools/gain_attackers.py): a row per attack and settings
(the repeated-query decoder beside the plain one), and the strongest over all of them per run, leaving
out results scored on some classes only; numbers chosen by hand."""
import json

import pytest
from seed_sweep import SEEDS, paired_sweep

from tools import report
from tools.collect import load_runs
from tools.gain_attackers import attackers_gain_markdown

K4_0 = (0.04, 0.2, 0.1)     # the repeated-query decoder: strongest at seeds 125 and 127 without CEM
K4_16 = (0.05, 0.3, 0.2)
CLASSES = 0.001             # scored on five classes only: never the strongest


def entry(mse):
    return {"final": {"mse_mean": mse, "mse_std": 0.01, "ssim_mean": 0.5, "ssim_std": 0.1, "psnr_mean": 20.0,
                      "psnr_std": 1.0}, "decoder": "res_normN8C64", "epochs": 8}


def add_variants(root):
    for i, seed in enumerate(SEEDS):
        for lam, k4 in ((0, K4_0[i]), (16, K4_16[i])):
            path = root / f"None_s0.05_l{lam}_seed{seed}" / "metrics.json"
            m = json.loads(path.read_text())
            m["attack_variants"] = {"decoder": {
                "aaaa1111": {"settings": {"results_version": 2, "attack_epochs": 8, "attack_queries": 4},
                             "results": {"sent": {"train_time": entry(k4)}}},
                "bbbb2222": {"settings": {"results_version": 2, "attack_epochs": 8,
                                          "attacker_data": "aux:cifar10[0-4]", "attack_eval_classes": "5-9"},
                             "results": {"sent": {"train_time": entry(CLASSES)}}}}}
            path.write_text(json.dumps(m))


def rows(md):
    cells = ([x.strip() for x in line.strip("|").split("|")] for line in md.splitlines()
             if line.startswith("| 0.05 | 16 | None |"))
    return {c[3]: c[:2] + c[3:] for c in cells}  # the defence column dropped


def test_a_row_per_attacker_and_the_strongest_over_all(tmp_path):
    root = paired_sweep(tmp_path / "runs")
    add_variants(root)
    runs, _ = load_runs(root)
    md = attackers_gain_markdown(runs, "train_time", "final")
    r = rows(md)
    assert set(r) == {"decoder", "gan", "decoder (attack_queries=4)",
                      "decoder (attack_eval_classes=5-9, attacker_data=aux:cifar10&#91;0-4&#93;)",
                      "strongest: decoder, decoder (attack_queries=4), gan"}, list(r)
    assert r["decoder"][4:] == ["0.2333 ± 0.1528", "0.2900 ± 0.2095", "+20.0% [-4.8, +44.8]"]
    # K = 4 gains per seed 25%, 50%, 100%
    assert r["decoder (attack_queries=4)"][6].startswith("+58.3% [")
    # strongest: min over decoder, gan, K=4 per run (the class-restricted 0.001 left out):
    # without CEM 0.04 (K4), 0.1 (gan), 0.1 (K4); with CEM 0.05 (K4), 0.24 (decoder), 0.2 (K4)
    gains = [(0.05 - 0.04) / 0.04, (0.24 - 0.1) / 0.1, (0.2 - 0.1) / 0.1]
    assert r["strongest: decoder, decoder (attack_queries=4), gan"][3] == "3"
    assert r["strongest: decoder, decoder (attack_queries=4), gan"][6].startswith(f"{100 * sum(gains) / 3:+.1f}% [")


def test_the_report_has_the_table(tmp_path):
    root = tmp_path / "runs"
    add_variants(paired_sweep(root))
    assert report.main([str(root)]) == 0
    md = (root / "results.md").read_text()
    assert "## CEM gain against every attacker" in md and "## CEM gain per defence" in md
    assert md.index("## CEM gain per defence") < md.index("## CEM gain against every attacker")


@pytest.mark.parametrize("runs", [[]])
def test_nothing_to_pair_is_no_table(runs):
    assert attackers_gain_markdown(runs, "train_time", "final") == ""
