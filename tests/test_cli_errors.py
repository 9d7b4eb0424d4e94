"""Bad input gives one clear line, exit status 2, no traceback, and leaves files on disk alone."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main_MIA

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num_epochs", "1", "--limit_train", "96", "--limit_test", "32", "--no_attack", "--device", "cpu",
        "--batch_size", "32", "--no_progress"]


def run_main(capsys, tmp_path, *args):
    argv = ["--dataset", "digits", "--data_root", str(tmp_path / "data"), "--folder", str(tmp_path / "runs"),
            *TINY, *args]
    code = main_MIA.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def bad_npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return f"npz:{p}"


CASES = {
    "unknown arch": (["--arch", "vgg99"], "vgg99"),
    "unknown dataset": (["--dataset", "mnistx"], "mnistx"),
    "cut layer out of range": (["--cutlayer", "99"], "cutlayer"),
    "unparsable bottleneck": (["--bottleneck_option", "C8S3"], "C8S3"),
    "negative sigma": (["--regularization_strength", "-0.1"], "regularization_strength"),
    "missing npz file": (["--dataset", "npz:/nonexistent/train.npz"], "/nonexistent/train.npz"),
    "missing image folder": (["--dataset", "imagefolder:/nonexistent/faces"], "/nonexistent/faces"),
    "bad attack mode": (["--attack_modes", "whenever"], "attack_modes"),
    "zero epochs": (["--num_epochs", "0"], "num_epochs"),
    "bad lr milestones": (["--milestones", "soon"], "milestones"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_exit_2(case, capsys, tmp_path):
    args, needle = CASES[case]
    code, out, err = run_main(capsys, tmp_path, *args)
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0] and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.parametrize("arrays,needle", [
    (dict(x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4, np.int64)), "uint8"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8)), "y"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(5, np.int64)), "4"),
])
def test_malformed_npz(arrays, needle, capsys, tmp_path):
    code, _, err = run_main(capsys, tmp_path, "--dataset", bad_npz(tmp_path, **arrays))
    assert code == 2 and err.count("\n") == 1 and needle in err and "bad.npz" in err


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_main(capsys, tmp_path, "--folder", str(blocker / "runs"))
    assert code == 2 and "output folder" in err and err.count("\n") == 1
    assert blocker.read_text() == "not a folder"


def test_cem_without_noise_is_warned_but_runs(capsys, tmp_path):
    code, out, err = run_main(capsys, tmp_path, "--regularization_strength", "0", "--lambd", "16",
                              "--filename", "nonoise")
    assert code == 0
    assert "sigma = 0" in out and "gamma" in out  # says what happens
    assert (tmp_path / "runs" / "nonoise" / "metrics.json").exists()


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_input_leaves_an_existing_run_intact(capsys, tmp_path):
    assert run_main(capsys, tmp_path, "--lambd", "0", "--filename", "keep")[0] == 0
    folder = tmp_path / "runs" / "keep"
    before = _digest(folder)
    for args in (["--force", "--arch", "nope"], ["--force", "--dataset", "npz:/missing.npz"],
                 ["--force", "--bottleneck_option", "C"]):
        assert run_main(capsys, tmp_path, "--lambd", "0", "--filename", "keep", *args)[0] == 2
    assert _digest(folder) == before


def test_real_process_prints_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "main_MIA.py"), "--arch", "vgg99", "--folder",
                           str(tmp_path / "runs"), "--dataset", "digits", "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
