"""Issue 34, the low items: flags and recorded values checked before any work, strings printed safely."""
from __future__ import annotations

import json

import pytest

import main_MIA
import run_gan_attack
import utils
from lifecycle.experiment import main_guard

TINY = ["--dataset", "digits", "--num_epochs", "1", "--limit_train", "64", "--limit_test", "32", "--device", "cpu",
        "--batch_size", "32", "--no_progress", "--lambd", "0", "--attack_epochs", "1"]


def _one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("flag", ["--batch_size", "--gan_batch_size", "--num_epochs", "--limit_train",
                                  "--attack_epochs", "--rmle_steps"])
def test_huge_counts_are_refused_before_any_work(tmp_path, capsys, flag):
    argv = TINY + ["--data_root", str(tmp_path / "data"), "--folder", str(tmp_path / "runs"), "--filename", "r"]
    argv = argv + [flag, str(2**70)]
    assert main_MIA.main(argv) == 2
    assert flag in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()  # nothing trained, no folder made


def test_gan_attack_refuses_a_huge_batch_before_reading_a_run(tmp_path, capsys):
    assert run_gan_attack.main([str(tmp_path / "nothing"), "--gan_batch_size", str(2**70), "--device", "cpu"]) == 2
    assert "--gan_batch_size" in _one_error(capsys.readouterr().err)


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"status": "training", "status": "finished"}')
    with pytest.raises(utils.NotStrictJSON, match="twice"):
        utils.read_json(path)
    path.write_text('{"a": {"b": 1}, "c": [{"b": 2}, {"b": 3}]}')  # the same key in different objects: fine
    assert utils.read_json(path)["c"][1] == {"b": 3}


def test_integers_no_float_holds_are_refused(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"mse_mean": 10**400}))
    with pytest.raises(utils.NotStrictJSON, match="401 digits"):
        utils.read_json(path)
    path.write_text(json.dumps({"seed": 2**63 - 1, "big": -(10**300)}))
    assert utils.read_json(path)["seed"] == 2**63 - 1


def test_error_lines_cannot_forge_lines_or_reach_the_terminal(capsys):
    def bad():
        raise utils.UserError("folder 'x\nerror: forged\x1b[2J\r' is odd\u2028here")

    assert main_guard(bad) == 2
    line = _one_error(capsys.readouterr().err)
    assert "\x1b" not in line and "\r" not in line and "\u2028" not in line and line.count("error:") == 2


def test_a_read_only_images_folder_is_refused_before_the_decoder_trains(copy_run, capsys, monkeypatch):
    """As root every folder is writable, so the refusal a read-only images/ gives is simulated where
    the folder is proven writable."""
    import errno
    import tempfile

    import lifecycle.run_folder as run_folder
    argv, run = copy_run
    real = tempfile.mkstemp

    def read_only_images(*a, dir=None, **k):
        if dir is not None and dir.name == "images":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(run_folder.tempfile, "mkstemp", read_only_images)
    before = (run / "metrics.json").read_bytes()
    assert main_MIA.main(argv + ["--attack_only", "--force"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "images" in line and "not writable" in line
    assert (run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("name", ["results.md", "report.html", "results.csv"])
def test_a_folder_at_a_report_output_is_one_line_and_nothing_is_written(tmp_path, capsys, name):
    from seed_sweep import write_run

    from tools import report

    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    (root / name).mkdir()
    assert report.main([str(root)]) == 2
    assert name in _one_error(capsys.readouterr().err)
    assert not any((root / n).is_file() for n in ("results.csv", "results.md", "tradeoff.png", "report.html"))


def test_finite_extremes_are_left_out_not_overflowed(tmp_path, capsys):
    """1.7e308 is finite JSON, but its mean over two seeds is not; MSE 1e-300 without CEM makes the gain
    +inf%; 1e308 in train_log.csv breaks the curves' axis. The report leaves each out and finishes."""
    from seed_sweep import write_run

    from tools import report

    root = tmp_path / "runs"
    for seed in (125, 126):
        write_run(root, 0.05, 0.0, seed, 30.0, {"decoder": 1e-300})
        write_run(root, 0.05, 16.0, seed, 29.0, {"decoder": 1.7e308})
    run = write_run(root, 0.1, 16.0, 125, 29.0, {"decoder": 0.5})
    (run / "train_log.csv").write_text("epoch,train_acc,val_acc,cem_loss\n1,1e308,1.7e308,-1.7e308\n2,3,4,5\n")
    assert report.main([str(root)]) == 0
    capsys.readouterr()
    text = (root / "results.md").read_text() + (root / "results.csv").read_text()
    assert "inf" not in text and "e+308" not in text
    assert (root / "report.html").stat().st_size > 0
