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
