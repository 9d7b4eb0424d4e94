"""New contents at the path of a run's npz file are other data: the finished run is not reused, resumed
or attacked as if nothing changed (lifecycle/data_files.py)."""
from __future__ import annotations

import os

import numpy as np
from conftest import TINY_RUN

import main_MIA
import run_gan_attack


def _npz(path, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), y=np.arange(120) % 4)


def _error(capsys) -> str:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")][-1]


def test_new_contents_at_the_same_path_are_not_the_finished_run(tmp_path, capsys):
    data = tmp_path / "faces.npz"
    _npz(data, 0)
    flags = [f if f != "digits" else f"npz:{data}" for f in TINY_RUN] + ["--folder", str(tmp_path / "runs"),
                                                                         "--filename", "r", "--no_attack"]
    assert main_MIA.main(flags) == 0
    recorded = (tmp_path / "runs" / "r" / "config.json").read_text()
    assert "sha256" in recorded and str(data) in recorded
    assert main_MIA.main(flags) == 0 and "already finished" in capsys.readouterr().out

    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: still the same run
    assert main_MIA.main(flags) == 0 and "already finished" in capsys.readouterr().out

    _npz(data, 1)  # same path, same size, other images
    assert data.stat().st_size == stat.st_size
    assert main_MIA.main(flags) == 2
    line = _error(capsys)
    assert "trained on other data" in line and str(data) in line and "--force" in line
    assert main_MIA.main(flags[:-1] + ["--attack_only"]) == 2
    assert "trained on other data" in _error(capsys)
    assert run_gan_attack.main([str(tmp_path / "runs" / "r"), "--device", "cpu", "--no_progress"]) == 2
    assert "trained on other data" in _error(capsys)
    assert main_MIA.main(flags + ["--force"]) == 0  # trained again on the new contents, which it records
    assert main_MIA.main(flags) == 0 and "already finished" in capsys.readouterr().out


def test_new_contents_with_the_old_mtime_put_back_are_noticed(tmp_path):
    """Issue 34: `touch -r` restores size and mtime after new contents; the inode change time cannot be
    set back, so the shortcut that skips hashing must not trust size and mtime alone."""
    from lifecycle.data_files import changed, record

    data = tmp_path / "faces.npz"
    _npz(data, 0)
    cfg = {"dataset": f"npz:{data}"}
    recorded = record(cfg)
    before = data.stat()
    _npz(data, 1)
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert "changed since the run trained on it" in changed(recorded, cfg)
    _npz(data, 0)  # the old contents again: hashed, and the same
    assert changed(recorded, cfg) is None
