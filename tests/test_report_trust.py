"""The report on a folder someone else sent: it reads only regular files inside the folder, writes only
files of its own (never through a symlink), escapes every string for where it goes, refuses
non-finite numbers and hostile JSON, and names each thing it skipped (tools/untrusted.py)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from seed_sweep import write_run
from test_report_html import page_of

from tools import report

SECRET = b"root:x:0:0:secret-outside-the-folder\n"


def _outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    (out / "secret.png").write_bytes(SECRET)
    (out / "victim.txt").write_bytes(b"precious\n")
    return out


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _rewrite(run: Path, edit) -> None:
    m = _metrics(run)
    edit(m)
    (run / "metrics.json").write_text(json.dumps(m))


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _table_rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|") and not line.startswith("|---")]


def test_nothing_outside_the_folder_is_read_or_copied(tmp_path, capsys):
    out = _outside(tmp_path)
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    a = write_run(root, 0.05, 16.0, 125, 29.0, {"decoder": 0.2})
    b = write_run(root, 0.1, 0.0, 125, 31.0, {"decoder": 0.1})
    c = write_run(root, 0.1, 16.0, 125, 28.0, {"decoder": 0.3})
    _rewrite(a, lambda m: m["attack"]["decoder"]["train_time"].update(grid="../../outside/secret.png"))
    _rewrite(b, lambda m: m["attack"]["decoder"]["train_time"].update(grid=str(out / "secret.png")))
    (c / "images" / "decoder_train_time.png").unlink()
    (c / "images" / "decoder_train_time.png").symlink_to(out / "secret.png")
    (a / "train_log.csv").unlink()
    (a / "train_log.csv").symlink_to(out / "secret.png")
    linked = root / "linked_run"  # a whole run folder that is a symlink to one outside
    outside_run = write_run(tmp_path / "elsewhere", 0.2, 0.0, 125, 99.5, {"decoder": 0.9})
    linked.symlink_to(outside_run, target_is_directory=True)

    assert report.main([str(root)]) == 0
    err = capsys.readouterr().err
    assert SECRET not in _all_bytes(root)
    for name in ("results.md", "results.csv", "report.html"):
        assert b"99.5" not in (root / name).read_bytes(), name  # the outside run is not in any table
    page = " ".join(page_of(root).text)
    for line, where in ((f"{a.name}", "grid"), (f"{b.name}", "grid"), ("decoder_train_time.png", "leads outside"),
                        ("train_log.csv", "leads outside"), ("linked_run", "symlinked folder")):
        assert line in err and where in err, (line, err)
    assert "Skipped" in page and page.count("leads outside") >= 2 and "linked_run" in page
    assert "not a path inside the run folder" in page


@pytest.mark.parametrize("name", ["results.md", "results.csv", "report.html", "tradeoff.png"])
def test_outputs_never_write_through_a_symlink(tmp_path, capsys, name):
    out = _outside(tmp_path)
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    write_run(root, 0.05, 16.0, 125, 29.0, {"decoder": 0.2})
    (root / name).symlink_to(out / "victim.txt")
    (root / "report_files").symlink_to(out, target_is_directory=True)
    before = sorted(p.name for p in out.iterdir())

    assert report.main([str(root)]) == 0
    assert (out / "victim.txt").read_bytes() == b"precious\n"
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written into the linked folder
    assert not (root / name).is_symlink() and (root / name).stat().st_size > 0
    assert not (root / "report_files").is_symlink() and (root / "report_files" / "curves").is_dir()


def test_strings_cannot_forge_rows_or_markup(tmp_path, capsys):
    root = tmp_path / "runs"
    forged = "None\n\n### cifar10, forged\n\n| σ \\ λ | λ=0 |\n|---|---|\n| σ=0.05 | 99.50 / 0.9500 |\n"
    evil = {"arch": "vgg|<script>alert(1)</script>", "bottleneck_option": forged,
            "dataset": "cifar10<img src=x onerror=alert(1)>"}
    for lam, acc, mse in ((0.0, 30.0, 0.1), (16.0, 29.0, 0.2)):
        run = write_run(root, 0.05, lam, 125, acc, {"decoder": mse}, defense="drop|out")

        def edit(m):
            m["config"].update(evil)
            m["identity"]["train"].update(evil)
            m["attack"]["decoder"]["train_time"]["decoder"] = "res|N8\n| forged |"
        _rewrite(run, edit)

    assert report.main([str(root)]) == 0
    md = (root / "results.md").read_text()
    assert "<script" not in md and "<img" not in md
    assert not any("99.50" in row or "forged" in row for row in _table_rows(md))  # only in a one-line title
    assert not any(line.startswith("### cifar10, forged") for line in md.splitlines())
    rows = _table_rows(md)
    # One table (header + σ=0.05), the CEM-gain table (header + one row) and the gain against every attacker
    # (header, the decoder, the strongest), all with their own widths.
    assert len(rows) == 7, rows
    gain_head, gain_row = [r for r in rows if r.startswith("| defence") or r.startswith("| drop")]
    assert gain_row.count("|") == gain_head.count("|")  # no cell shifted
    assert "drop&#124;out" in gain_row
    per_attacker = rows[4:]
    assert all(r.count("|") == per_attacker[0].count("|") for r in per_attacker) and "drop&#124;out" in per_attacker[1]
    page = page_of(root)
    assert "script" not in page.tags and all("onerror" not in i for i in page.imgs)
    assert all(len(row) == len(t[0]) for t in page.tables for row in t)
    assert not any("99.50" in cell or "forged" in cell for t in page.tables for row in t for _, cell in row)
    text = " ".join(page.text)
    assert "vgg|<script>alert(1)</script>" in text  # shown as the text it is, not run
    html = (root / "report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html


def test_csv_quotes_and_defuses_strings(tmp_path, capsys):
    root = tmp_path / "runs"
    run = write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    _rewrite(run, lambda m: m["config"].update(arch="=HYPERLINK(\"http://x\")\nsecond, line"))
    assert report.main([str(root)]) == 0
    with open(root / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["arch"] == "'=HYPERLINK(\"http://x\")\nsecond, line"


def test_non_finite_numbers_are_refused_like_nan(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    write_run(root, 0.05, 16.0, 125, 29.0, {"decoder": 0.2})
    inf = write_run(root, 0.1, 16.0, 125, 29.0, {"decoder": 0.2})
    text = (inf / "metrics.json").read_text().replace('"mse_mean": 0.2', '"mse_mean": 1e999')
    (inf / "metrics.json").write_text(text)
    assert report.main([str(root)]) == 0
    err = capsys.readouterr().err
    assert inf.name in err and "overflows to inf" in err
    assert not any("inf" in row for row in _table_rows((root / "results.md").read_text()))
    with open(root / "results.csv", newline="") as f:
        assert not any("inf" in cell.lower() for row in csv.reader(f) for cell in row)
    assert not any("inf" in cell.lower() for t in page_of(root).tables for row in t for _, cell in row)


def test_deep_or_huge_json_names_the_folder_and_the_rest_is_reported(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    write_run(root, 0.05, 16.0, 125, 29.0, {"decoder": 0.2})
    deep = root / "deep"
    deep.mkdir()
    (deep / "metrics.json").write_text('{"status": "finished", "config": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert report.main([str(root)]) == 0
    err = capsys.readouterr().err
    assert "deep" in err and "nested more than" in err and "Traceback" not in err
    assert (root / "results.md").read_text().count("| σ=0.05 |") == 1


def test_a_fifo_in_the_folder_is_skipped_not_waited_on(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    (root / "fifo").mkdir()
    os.mkfifo(root / "fifo" / "metrics.json")
    assert report.main([str(root)]) == 0
    assert "not a regular file" in capsys.readouterr().err


def test_a_bomb_or_foreign_grid_is_not_decoded_or_copied(tmp_path, capsys):
    from test_datasets import _bomb_png

    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    run = write_run(root, 0.05, 16.0, 125, 29.0, {"decoder": 0.2})
    _bomb_png(run / "images" / "decoder_train_time.png", 5000)  # 25M pixels in ~25 kB
    assert report.main([str(root)]) == 0
    err = capsys.readouterr().err
    assert "5000×5000 pixels, far more than a grid" in err
    assert not any(p.stat().st_size > 1_000_000 for p in (root / "report_files").rglob("*.png"))
