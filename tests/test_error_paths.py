"""Issue 18: every bad input one line and exit 2, every failure during work one line, exit 1 and a true
status; SIGTERM like Ctrl-C (exit 143, 130 for Ctrl-C) in both entry points, during training or attack."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_runs import make_run
from test_run_safety import REPO, TINY, one_error_line, run_main  # the same tiny run and checks

import main_MIA
import model_training
import run_gan_attack
import utils
from attacks.gan import GANAttack
from lifecycle import attack_runner
from lifecycle.validation import check_numbers

GAN = ["--gan_AE_type", "res_normN0C8", "--gan_batch_size", "16", "--attack_modes", "train_time", "--device", "cpu",
       "--no_progress"]


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


# ------------------------------------------------------------------ failures during work: exit 1, true status
def test_an_lr_that_overflows_the_weights_fails_the_run(capsys, tmp_path):
    # One batch per epoch: its only loss is measured before the step that blows the weights up, so the loss
    # check alone let a model answering NaN reach checkpoints, attacks and a 'finished' status.
    code, _, err = run_main(capsys, tmp_path, "--learning_rate", "1e30", "--limit_train", "40", "--batch_size", "64")
    line = one_error_line(err)
    assert code == 1 and "outputs became non-finite" in line and "epoch 1" in line and "--learning_rate" in line
    run = tmp_path / "runs" / "r"
    assert metrics_of(run)["status"] == "failed" and not (run / "checkpoints" / "best.pt").exists()


def test_an_unexpected_error_in_training_records_failed_not_training(capsys, tmp_path, monkeypatch):
    def broken(self, loader):
        raise ValueError("boom")

    monkeypatch.setattr(model_training.Trainer, "evaluate", broken)
    with pytest.raises(ValueError, match="boom"):  # a bug keeps its traceback ...
        run_main(capsys, tmp_path)
    m = metrics_of(tmp_path / "runs" / "r")  # ... but the run does not claim to be training still
    assert m["status"] == "failed" and m["error"] == "ValueError: boom"


# ------------------------------------------------------------------ bad input: one line, exit 2
@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a GPU cuda:7")
def test_a_gpu_that_is_not_there_is_one_line(capsys, tmp_path):
    code, _, err = run_main(capsys, tmp_path, "--device", "cuda:7")
    assert code == 2 and "cuda:7" in one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_a_gpu_index_beyond_the_visible_ones_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(utils.UserError, match=r"cuda:2 .*only 2 CUDA GPU"):
        utils.resolve_device("cuda:2")
    assert utils.resolve_device("CUDA:1") == torch.device("cuda:1")


def test_a_seed_beyond_64_bits_is_refused_up_front(capsys, tmp_path):
    code, _, err = run_main(capsys, tmp_path, "--random_seed", "99999999999999999999999")
    assert code == 2 and "--random_seed must be <=" in one_error_line(err)
    assert not (tmp_path / "runs").exists()
    check_numbers({"random_seed": 2**63 - 1})  # the largest seed torch's generators take with room for offsets
    torch.Generator().manual_seed(2**63 - 1 + 7919)  # the largest offset a defence adds


def test_a_gan_batch_of_one_is_refused(capsys, tmp_path):
    with pytest.raises(utils.UserError, match="gan_batch_size must be >= 2"):
        check_numbers({"gan_batch_size": 1})
    run = make_run(tmp_path, limit_train=40, limit_test=12)
    argv = [str(run), *GAN, "--gan_batch_size", "1", "--gan_epochs", "1", "--data_root", str(tmp_path)]
    assert run_gan_attack.main(argv) == 2
    assert "--gan_batch_size" in one_error_line(capsys.readouterr().err)
    assert "gan" not in metrics_of(run).get("attack", {})


def test_an_unknown_device_is_refused_before_a_finished_run_is_reported(capsys, copy_run):
    argv, run = copy_run
    assert main_MIA.main(argv + ["--device", "quantum"]) == 2
    out = capsys.readouterr()
    assert "quantum" in one_error_line(out.err) and "already finished" not in out.out
    assert run_gan_attack.main([str(run), "--device", "quantum", "--no_progress"]) == 2
    assert "quantum" in one_error_line(capsys.readouterr().err)


def test_a_mistyped_config_json_names_the_file_and_key(capsys, copy_run):
    argv, run = copy_run
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "cutlayer": "four"}))
    assert main_MIA.main(argv + ["--attack_only", "--attack_epochs", "2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "config.json" in line and "cutlayer" in line and "'four'" in line
    assert run_gan_attack.main([str(run), "--device", "cpu", "--no_progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "config.json" in line and "cutlayer" in line


@pytest.mark.parametrize("key, value", [("random_seed", 2**70), ("random_seed", -1), ("limit_train", 0),
                                        ("regularization_strength", -0.5)])
def test_a_recorded_setting_outside_its_flags_range_is_refused(capsys, copy_run, key, value):
    argv, run = copy_run
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, key: value}))
    assert main_MIA.main(argv + ["--attack_only", "--attack_epochs", "2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "config.json" in line and f"recorded {key} must be" in line and str(value) in line
    assert run_gan_attack.main([str(run), "--device", "cpu", "--no_progress"]) == 2
    assert f"recorded {key} must be" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", ["config.json", "metrics.json"])
def test_a_deeply_nested_run_file_is_one_line(capsys, copy_run, name):
    argv, run = copy_run
    (run / name).write_text("[" * 100_000 + "]" * 100_000)
    assert main_MIA.main(argv + ["--attack_only", "--attack_epochs", "2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert name in line and "nested more than" in line
    assert run_gan_attack.main([str(run), "--device", "cpu", "--no_progress"]) == 2
    assert name in one_error_line(capsys.readouterr().err)
    assert run_gan_attack.main(["--sweep", str(run.parent), "--device", "cpu", "--no_progress"]) in (0, 1, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err and (name == "config.json" or "nested more than" in err)


@pytest.mark.parametrize("main", [main_MIA.main, run_gan_attack.main])
def test_a_mistyped_flag_is_one_line_and_help_is_intact(main, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--gan_epochs", "x"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == "error: argument --gan_epochs: invalid int value: 'x' (see --help)\n"
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith("usage:") and "--gan_batch_size" in out


def test_a_file_given_as_a_run_folder_is_called_a_file(capsys, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a run")
    for argv in ([str(afile)], ["--sweep", str(afile)]):
        assert run_gan_attack.main(argv + ["--no_progress"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "is a file" in line and "does not exist" not in line
    argv = ["--attack_only", "--folder", str(tmp_path), "--filename", "notes.txt", "--device", "cpu", "--no_progress"]
    assert main_MIA.main(argv) == 2
    assert "is a file, not a run folder" in one_error_line(capsys.readouterr().err)


def test_attack_only_reads_the_data_the_run_recorded(capsys, tmp_path, monkeypatch):
    data = tmp_path / "mydata"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data / "d.npz", x=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), y=np.arange(120) % 10)
    run = make_run(tmp_path / "runs", data_root=str(data))
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "dataset": "npz:d.npz,0.4"}))  # found under data_root
    seen = []

    def attacks(cfg, run_dir, model, bundle, *a, **k):  # the data is what this test is about, not the attack
        seen.append(len(bundle.test))
        return {}

    monkeypatch.setattr(attack_runner, "run_attacks", attacks)
    monkeypatch.chdir(tmp_path)  # no ./data here: the parser's default would not find d.npz
    argv = ["--attack_only", "--folder", str(run.parent), "--filename", run.name, "--device", "cpu",
            "--attack_modes", "train_time", "--no_progress"]
    assert main_MIA.main(argv) == 0 and seen == [40], capsys.readouterr().err
    assert main_MIA.main(argv + ["--data_root", str(tmp_path / "elsewhere")]) == 2  # given: it wins
    assert "d.npz" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ SIGTERM and Ctrl-C
def _wait_for(proc, done, what, timeout=180):
    deadline = time.time() + timeout
    while not done():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"never saw {what} (exit {proc.returncode}): {out[-2000:]} {err[-2000:]}")
        time.sleep(0.2)


def test_sigterm_stops_run_gan_attack_resumably(capsys, tmp_path, monkeypatch):
    run = make_run(tmp_path, limit_train=40, limit_test=12)
    argv = [str(run), *GAN, "--gan_epochs", "200", "--checkpoint_every", "1", "--data_root", str(tmp_path)]
    ck = run / "attacks" / "gan_train_time.ckpt.pt"
    p = subprocess.Popen([sys.executable, str(REPO / "run_gan_attack.py"), *argv], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(p, ck.exists, "a GAN checkpoint")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode == 143 and len(lines) == 1 and lines[0].startswith("interrupted:"), err
    assert "attack" in lines[0] and "rerun" in lines[0] and "Traceback" not in err
    assert ck.exists() and metrics_of(run)["status"] == "finished"
    # The checkpoint left behind is the one the same command resumes (stopped again at once: enough to see it).
    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(GANAttack, "train_epoch", stop)
    assert run_gan_attack.main(argv) == 130
    assert "resumed gan attack" in (run / "log.txt").read_text()


def test_an_attack_stopped_as_it_records_results_leaves_no_stale_checkpoint(tmp_path, monkeypatch):
    run = make_run(tmp_path, limit_train=40, limit_test=12)
    settings = {"gan_AE_type": "res_normN0C8", "gan_epochs": 2, "gan_batch_size": 16, "checkpoint_every": 1,
                "attack_modes": "train_time", "attacks": "gan", "progress": False, "device": "cpu",
                "data_root": str(tmp_path)}
    original = attack_runner.write_merged
    calls = []

    def write_then_ctrl_c(run_dir, metrics):
        original(run_dir, metrics)
        if not calls:  # the results are on disk; Ctrl-C arrives before their checkpoint is removed
            calls.append(1)
            # What the OS does on Ctrl-C, done synchronously: the handler in force now (signals_deferred's)
            # runs at once, so the test does not depend on when the interpreter gets to a pending signal.
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    # Whatever an earlier test in this process left installed, Ctrl-C means KeyboardInterrupt here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(attack_runner, "write_merged", write_then_ctrl_c)
    monkeypatch.setattr(signal, "raise_signal", lambda s: pytest.fail("re-delivered through the OS"))
    try:
        with pytest.raises(KeyboardInterrupt):
            attack_runner.attack_run(run, settings)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert calls and "train_time" in metrics_of(run)["attack"]["gan"]
    assert not (run / "attacks" / "gan_train_time.ckpt.pt").exists()


def test_sigterm_during_the_attack_of_a_trained_run_keeps_it_trained(tmp_path):
    from lifecycle.attack_runner import finished_runs
    from lifecycle.flags import build_parser
    from lifecycle.run_folder import Run

    flags = ["--dataset", "digits", "--data_root", str(tmp_path), "--folder", str(tmp_path / "runs"), "--filename",
             "r", *[a for a in TINY if a != "--no_attack"], "--attack_modes", "train_time", "--attack_epochs", "500",
             "--gan_AE_type", "res_normN0C8"]
    p = subprocess.Popen([sys.executable, str(REPO / "main_MIA.py"), *flags], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "r"
    try:
        _wait_for(p, lambda: (run / "log.txt").exists() and "decoder attack (" in (run / "log.txt").read_text(),
                  "the attack starting")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("note:")]
    assert p.returncode == 143 and lines and lines[-1].startswith("interrupted: the attack"), err
    assert "training is saved" not in err and "Traceback" not in err
    m = metrics_of(run)
    assert m["status"] == "finished" and "train" in m
    assert not any((m.get("attack") or {}).values())  # no attack results (at most an empty slot per attack)
    assert finished_runs(tmp_path / "runs") == [run]  # run_gan_attack.py and its --sweep take it
    cfg = vars(build_parser().parse_args(flags))
    assert Run(cfg["folder"], "r").plan(cfg)[0] == "incomplete"  # a rerun adds the decoder results


def test_sigterm_in_the_middle_of_a_checkpoint_save_waits_for_the_file(tmp_path, monkeypatch):
    """scancel or a time limit during torch.save: raised inside torch's zip writer, the stop became
    torch's RuntimeError ('unexpected pos') and the run ended failed; now the file is finished first."""
    import torch

    from utils import Terminated, load_checkpoint, torch_save_atomic

    calls = []
    real_save = torch.save

    def save_then_sigterm(obj, f, *a, **k):
        class Interrupting:  # a file whose first write is where SIGTERM lands
            def __init__(self, inner):
                self.inner = inner

            def write(self, data):
                if not calls:
                    calls.append(1)
                    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
                return self.inner.write(data)

            def __getattr__(self, name):
                return getattr(self.inner, name)
        return real_save(obj, Interrupting(f), *a, **k)

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    monkeypatch.setattr(torch, "save", save_then_sigterm)
    try:
        with pytest.raises(Terminated):
            torch_save_atomic({"w": torch.arange(10_000.0)}, tmp_path / "ck.pt")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls and torch.equal(load_checkpoint(tmp_path / "ck.pt")["w"], torch.arange(10_000.0))
