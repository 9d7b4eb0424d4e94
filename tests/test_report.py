"""tools.report: finished metrics.json files -> results.csv, results.md, tradeoff.png."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tools import report

REPO = Path(__file__).resolve().parents[1]
SIGMAS = [0.1, 0.01, 0.05]     # written out of order on purpose: the table must sort them
LAMBDAS = [16.0, 0.0, 8.0]


def acc_of(s, l):
    return round(90 - 100 * s - l / 10, 2)


def mse_of(s, l):
    return round(0.01 + s / 10 + l / 1000, 6)


def metrics(s, l, status="finished", dataset="cifar10"):
    scores = lambda base: {"mse_mean": base, "mse_std": 0.001, "ssim_mean": round(0.8 - s, 4), "ssim_std": 0.01,
                           "ssim_lib_mean": round(0.79 - s, 4), "ssim_lib_std": 0.01,
                           "psnr_mean": 20 - l / 4, "psnr_std": 1.0, "n": 100}
    fn = f"{dataset}_sigma{s:g}_lambd{l:g}"
    return {"status": status,
            "config": {"arch": "vgg11_bn_sgm", "cutlayer": 4, "dataset": dataset, "bottleneck_option": "noRELU_C8S1",
                       "regularization": "Gaussian_kl", "regularization_strength": s, "lambd": l,
                       "var_threshold": 0.125, "log_entropy": 1, "num_epochs": 240, "learning_rate": 0.05,
                       "batch_size": 128, "random_seed": 125, "filename": fn},
            "train": {"test_acc": acc_of(s, l), "best_val_acc": 85.0, "best_epoch": 230, "epochs_done": 240},
            "attack": {"decoder": {
                "train_time": {"final": scores(mse_of(s, l)), "best_heldout": scores(0.5), "best_epoch": 3,
                               "decoder": "res_normN8C64", "epochs": 50, "grid": "images/decoder_train_time.png",
                               "baseline_mean_image": {"mse_mean": 0.06 + s, "ssim_mean": 0.3, "psnr_mean": 12.0}},
                "infer_time": {"final": scores(0.9), "best_heldout": scores(0.8), "decoder": "res_normN8C64",
                               "epochs": 50}}}}


def write(folder: Path, name: str, obj) -> Path:
    d = folder / name
    d.mkdir(parents=True)
    p = d / "metrics.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for s in SIGMAS:
        for l in LAMBDAS:
            write(root / "nested", f"s{s}_l{l}", metrics(s, l))
    write(root, "unfinished", metrics(0.2, 0.0, status="training"))
    write(root, "corrupt", '{"status": "finished", "config": ')
    return root


def md_rows(md: str):
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| σ=")]


def test_report_writes_csv_md_png(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(runs), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "unfinished" in captured.err and "corrupt" in captured.err
    assert str(out / "results.md") in captured.out and "| σ=0.01 |" in captured.out

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9                       # unfinished and corrupt skipped
    assert {r["filename"] for r in rows} == {f"cifar10_sigma{s:g}_lambd{l:g}" for s in SIGMAS for l in LAMBDAS}
    row = next(r for r in rows if r["filename"] == "cifar10_sigma0.05_lambd16")
    assert float(row["sigma"]) == 0.05 and float(row["lambd"]) == 16 and float(row["var_threshold"]) == 0.125
    assert float(row["test_acc"]) == acc_of(0.05, 16)
    assert float(row["decoder_train_time_mse_mean"]) == pytest.approx(mse_of(0.05, 16))
    assert float(row["decoder_infer_time_mse_mean"]) == pytest.approx(0.9)
    for col in ("ssim_mean", "ssim_std", "psnr_mean", "psnr_std", "mse_std"):
        assert f"decoder_train_time_{col}" in row
    assert [float(r["sigma"]) for r in rows] == sorted(float(r["sigma"]) for r in rows)

    md = (out / "results.md").read_text()
    assert "| σ \\ λ | λ=0 | λ=8 | λ=16 |" in md
    table = md_rows(md)
    assert [r[0] for r in table] == ["σ=0.01", "σ=0.05", "σ=0.1"]
    for r, s in zip(table, sorted(SIGMAS)):
        for cell, l in zip(r[1:], sorted(LAMBDAS)):
            assert cell == f"{acc_of(s, l):.2f} / {mse_of(s, l):.4f} / {0.8 - s:.3f} / {20 - l / 4:.1f}"
    assert "decoder attack (res_normN8C64, 50 epochs), train_time mode, final decoder" in md
    assert "always guess the attacker's mean image): MSE" in md and "PSNR 12.0 dB" in md

    with Image.open(out / "tradeoff.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert not (runs / "results.csv").exists()  # --out respected


def test_report_options_groups_and_missing_cells(runs, capsys):
    # A second dataset gets its own table; a missing (σ, λ) cell shows a dash.
    write(runs, "faces", metrics(0.05, 0.0, dataset="facescrub"))
    assert report.main([str(runs), "--mode", "infer_time", "--which", "best_heldout"]) == 0
    md = (runs / "results.md").read_text()
    assert md.count("### ") == 2 and "### facescrub, vgg11_bn_sgm, cut 4" in md
    assert "infer_time mode, decoder with the best held-out loss" in md
    faces = md.split("### facescrub")[1]
    assert md_rows(faces) == [["σ=0.05", f"{acc_of(0.05, 0):.2f} / 0.8000 / 0.750 / 20.0"]]
    cifar_row = md_rows(md.split("### facescrub")[0])[0]
    assert cifar_row[1] == f"{acc_of(0.01, 0):.2f} / 0.8000 / 0.790 / 20.0"
    (runs / "nested" / "s0.01_l8.0" / "metrics.json").unlink()
    assert report.main([str(runs)]) == 0
    assert md_rows((runs / "results.md").read_text())[0][2] == "–"
    assert (runs / "tradeoff.png").exists()


def test_report_empty_or_missing_folder_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", "unfinished", metrics(0.1, 0.0, status="training"))
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no finished metrics.json") and "Traceback" not in "\n".join(err)
    assert report.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: results folder")


def test_report_cli_subprocess(runs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "tools.report", str(runs)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| σ=0.05 |" in r.stdout and (runs / "tradeoff.png").exists()
    r = subprocess.run([sys.executable, "-m", "tools.report", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_gan_columns_beside_the_decoder_ones(tmp_path, capsys):
    root = tmp_path / "runs"
    for s in (0.01, 0.05):
        m = metrics(s, 0.0)
        gan = json.loads(json.dumps(m["attack"]["decoder"]["train_time"]))
        gan["final"]["mse_mean"] = 0.5 + s
        m["attack"]["gan"] = {"train_time": {**gan, "decoder": "res_normN8C64", "epochs": 150}}
        write(root, f"s{s}", m)
    out = tmp_path / "out"
    assert report.main([str(root), "--out", str(out)]) == 0
    with open(out / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    i = header.index("decoder_train_time_mse_mean")
    # The same mode's GAN block follows the decoder's 8 columns (4 metrics x mean/std) directly.
    assert header.index("gan_train_time_mse_mean") == i + 8
    md = (out / "results.md").read_text()
    assert "attacks side by side (train_time)" in md
    row = next(l for l in md.splitlines() if l.startswith("| 0.05 | 0 |"))
    assert f"{mse_of(0.05, 0):.4f}" in row and "0.5500" in row  # decoder then GAN in one row


def test_cem_gain_table_per_defence(tmp_path, capsys):
    root = tmp_path / "defs"
    mse = {("None", 0.0): 0.020, ("None", 16.0): 0.025, ("dropout0.2", 0.0): 0.040, ("dropout0.2", 16.0): 0.050}
    acc = {("None", 0.0): 80.0, ("None", 16.0): 79.5, ("dropout0.2", 0.0): 75.0, ("dropout0.2", 16.0): 75.25}
    for (d, l), m in mse.items():
        obj = metrics(0.05, l)
        obj["config"].update(AT_regularization=d, AT_regularization_strength=0 if d == "None" else 1.0,
                             filename=f"{d}_{l:g}")
        obj["attack"]["decoder"]["train_time"]["final"]["mse_mean"] = m
        obj["train"]["test_acc"] = acc[(d, l)]
        write(root, f"{d}_{l:g}", obj)
    # strength 0 switches a defence off: such a run counts as a plain one (averaged into None)
    assert report.main([str(root)]) == 0
    md = (root / "results.md").read_text()
    assert "## CEM gain per defence" in md
    rows = [l for l in md.splitlines() if l.startswith("| None |") or l.startswith("| dropout0.2 (s=1) |")]
    assert len(rows) == 2, md
    none_row = [c.strip() for c in rows[0].split("|")[1:-1]]
    drop_row = [c.strip() for c in rows[1].split("|")[1:-1]]
    # one seed each: the values alone, no interval (column 3: the number of paired seeds)
    assert none_row[3] == "1" and none_row[5] == "79.50" and none_row[6] == "-0.50" and none_row[9] == "+25.0%"
    assert drop_row[7] == "0.0400" and drop_row[8] == "0.0500" and drop_row[9] == "+25.0%" and drop_row[6] == "+0.25"
    assert none_row[10] == "+25.0% (decoder)"
    # the σ×λ tables keep defences apart
    assert md.count("defence dropout0.2 (strength 1)") == 1
    with open(root / "results.csv") as f:
        got = {(r["defense"], r["lambd"]) for r in csv.DictReader(f)}
    assert ("dropout0.2", "16.0") in got and ("None", "0.0") in got


def test_copies_of_a_run_count_once(tmp_path, capsys):
    # Issue 18: two copies beside a run folder made one cell "(n=3)", as if three seeds had run.
    root = tmp_path / "runs"
    orig = metrics(0.05, 0.0)
    name = orig["config"]["filename"]
    write(root, name, orig)
    copy = json.loads(json.dumps(orig))
    copy["train"]["test_acc"] = 11.0  # a copy is byte-identical; different numbers show which one is kept
    write(root, f"Copy of {name}", copy)  # sorts before the original
    write(root, f"{name} (2)", copy)
    for seed in (125, 7):  # two seeds of another setting: two runs, still averaged
        m = metrics(0.05, 16.0)
        m["config"].update(random_seed=seed, filename=f"l16_seed{seed}")
        write(root, f"l16_seed{seed}", m)
    # Copies of which none keeps the recorded name: the first path (by folder, so "a" before "a (copy)").
    other = metrics(0.1, 0.0)
    write(root, "a", other)
    write(root, "a (copy)", {**other, "train": {"test_acc": 11.0}})

    assert report.main([str(root)]) == 0
    err = capsys.readouterr().err
    notes = [l for l in err.splitlines() if "counted once" in l]
    assert len(notes) == 2, err
    mine = next(n for n in notes if name in n)
    assert "3 folders hold the same run (same settings, seed 125)" in mine
    assert mine.endswith(f"kept {root / name} (named as its config records), not counted: "
                         f"{root / f'Copy of {name}'}, {root / f'{name} (2)'}")
    other_note = next(n for n in notes if name not in n)
    assert other_note.endswith(f"kept {root / 'a'} (none is named as its config records: the first path), "
                               f"not counted: {root / 'a (copy)'}")
    table = md_rows((root / "results.md").read_text())
    assert table[0][1] == f"{acc_of(0.05, 0):.2f} / {mse_of(0.05, 0):.4f} / {0.8 - 0.05:.3f} / 20.0"  # no (n=3)
    assert table[0][2].endswith("(n=2)")
    assert table[1][1].startswith(f"{acc_of(0.1, 0):.2f} / ") and "(n=" not in table[1][1]
    with open(root / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_a_metrics_file_holding_nan_is_named_not_read(word, tmp_path, capsys):
    # Python's json reads a bare NaN; this project never writes one (utils.write_json stores null).
    root = tmp_path / "runs"
    write(root, "good", metrics(0.05, 0.0))
    bad = json.dumps(metrics(0.05, 16.0)).replace(f'"mse_mean": {mse_of(0.05, 16.0)}', f'"mse_mean": {word}')
    assert word in bad
    path = write(root, "bad", bad)
    assert report.main([str(root)]) == 0
    err = [l for l in capsys.readouterr().err.splitlines() if str(path) in l]
    assert len(err) == 1 and f"bare {word}" in err[0] and "not JSON" in err[0], err
    with open(root / "results.csv", newline="") as f:
        assert [r["filename"] for r in csv.DictReader(f)] == ["cifar10_sigma0.05_lambd0"]


def test_copies_are_told_apart_by_identity_not_by_folder(tmp_path):
    # What main_MIA.py records: a copy run on another device is the same run; another seed is not.
    from lifecycle.identity import identity
    from main_MIA import build_parser
    from tools.collect import load_runs

    root = tmp_path / "runs"
    for name, seed, device in (("r", 125, "cpu"), ("r_gpu", 125, "cuda"), ("r_seed7", 7, "cpu")):
        cfg = vars(build_parser().parse_args(["--filename", "r", "--random_seed", str(seed), "--device", device]))
        write(root, name, {"status": "finished", "identity": identity(cfg), "config": cfg, "train": {"test_acc": 50.0},
                           "attack": {"decoder": {"train_time": {"final": {"mse_mean": 0.1}}}}})
    runs, warnings = load_runs(root)
    assert sorted(Path(r["path"]).parent.name for r in runs) == ["r", "r_seed7"]
    (note,) = [w for w in warnings if "counted once" in w]
    assert "seed 125" in note and note.endswith(f"kept {root / 'r'} (named as its config records), "
                                                f"not counted: {root / 'r_gpu'}")
