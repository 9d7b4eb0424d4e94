"""Issue 34: an attack stopped between two modes and resumed by the same command, and an attack of one
mode alone (--attack_only), give exactly the uninterrupted run's results on the CPU."""
from __future__ import annotations

import json
import shutil

from conftest import TINY_RUN

import lifecycle.attack_runner as attack_runner
import main_MIA

ARGS = [a for a in TINY_RUN if a not in ("--attack_modes", "train_time")] + ["--attack_modes",
                                                                              "train_time,infer_time"]


def _argv(root, name):
    return ARGS + ["--data_root", str(root / "data"), "--folder", str(root / "runs"), "--filename", name]


def _finals(root, name) -> dict:
    m = json.loads((root / "runs" / name / "metrics.json").read_text())
    return {mode: m["attack"]["decoder"][mode]["final"] for mode in ("train_time", "infer_time")}


def test_resumed_and_single_mode_attacks_equal_the_uninterrupted_one(tmp_path, monkeypatch, capsys):
    assert main_MIA.main(_argv(tmp_path, "whole")) == 0
    whole = _finals(tmp_path, "whole")

    real = attack_runner.make_attack

    def stop_before_second_mode(name, cfg, mode, *a, **k):
        if mode == "infer_time":  # as a kill after the first mode's results were written
            raise KeyboardInterrupt
        return real(name, cfg, mode, *a, **k)

    monkeypatch.setattr(attack_runner, "make_attack", stop_before_second_mode)
    assert main_MIA.main(_argv(tmp_path, "killed")) == 130
    monkeypatch.setattr(attack_runner, "make_attack", real)
    m = json.loads((tmp_path / "runs" / "killed" / "metrics.json").read_text())
    assert list(m["attack"]["decoder"]) == ["train_time"]
    shutil.copytree(tmp_path / "runs" / "killed", tmp_path / "runs" / "single")
    assert main_MIA.main(_argv(tmp_path, "killed")) == 0  # the same command adds the missing mode
    assert _finals(tmp_path, "killed") == whole

    single = _argv(tmp_path, "single") + ["--attack_only", "--force"]
    single[single.index("train_time,infer_time")] = "infer_time"
    assert main_MIA.main(single) == 0
    assert _finals(tmp_path, "single")["infer_time"] == whole["infer_time"]
    capsys.readouterr()
