"""run_exp.sh: the sweep's commands (dry runs) and its run/skip/fail bookkeeping (with a stand-in main_MIA.py)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run_exp.sh"
SWEEP_VARS = ("DATASET", "DATASETS", "ARCH", "CUTLAYERS", "BOTTLENECK", "SIGMAS", "LAMBDAS", "VAR_THRESHOLD",
              "LOG_ENTROPY", "LR", "EPOCHS", "BATCH", "ATTACK_EPOCHS", "GAN_AE_TYPE", "REGULARIZATION", "SEED",
              "DATA_ROOT", "FOLDER", "DEVICE", "EXTRA", "TAG", "DEFENSES", "AT_STRENGTHS")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def sh(*args, env=None, script=SCRIPT, tmp=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if k not in SWEEP_VARS}
    e["PYTHON"] = sys.executable
    if tmp is not None:  # never let a stray ./data or ./runs decide what a test sees
        e.setdefault("DATA_ROOT", str(tmp / "no_data"))
        e.setdefault("FOLDER", str(tmp / "runs"))
    e.update(env or {})
    return subprocess.run(["bash", str(script), *args], env=e, capture_output=True, text=True, timeout=timeout)


def commands(r):
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.strip()]


def flag(cmd, name):
    words = cmd.split()
    return words[words.index(name) + 1]


def test_dry_run_paper_defaults(tmp_path):
    r = sh("--dry-run", env={"DATA_ROOT": str(tmp_path / "d")})  # default FOLDER: ./runs/cifar10
    cmds = [c.removeprefix("[skip] ") for c in commands(r)]  # the real ./runs may hold finished runs
    assert len(cmds) == 15
    pairs = {(flag(c, "--regularization_strength"), flag(c, "--lambd")) for c in cmds}
    assert pairs == {(s, l) for s in ("0.01", "0.025", "0.05", "0.1", "0.15") for l in ("0", "8", "16")}
    c = next(c for c in cmds if "--lambd 16" in c and "--regularization_strength 0.05" in c)
    for expected in ("--var_threshold 0.125", "--num_epochs 240", "--attack_epochs 50", "--arch vgg11_bn_sgm",
                     "--cutlayer 4", "--bottleneck_option noRELU_C8S1", "--regularization Gaussian_kl",
                     "--log_entropy 1", "--learning_rate 0.05", "--batch_size 128", "--gan_AE_type res_normN8C64",
                     "--dataset cifar10", "--folder ./runs/cifar10", "--random_seed 125", "--device auto"):
        assert expected in c, expected
    assert c.startswith(sys.executable + " main_MIA.py ")
    assert len({flag(c, "--filename") for c in cmds}) == 15
    assert not (tmp_path / "d").exists()


def test_overrides_env_and_flags(tmp_path):
    env = {"SIGMAS": "0.2 0.3", "LAMBDAS": "4", "EPOCHS": "7", "CUTLAYERS": "3 5"}
    cmds = commands(sh("--dry-run", env=env, tmp=tmp_path))
    assert len(cmds) == 4 and all("--num_epochs 7" in c and "--lambd 4" in c for c in cmds)
    assert {flag(c, "--cutlayer") for c in cmds} == {"3", "5"}
    # Flags beat the environment.
    cmds = commands(sh("--dry-run", "--sigmas", "0.01", "--lambdas=0 16", "--epochs", "3", "--attack_epochs", "2",
                       "--folder", str(tmp_path / "f"), "--device", "cpu", "--arch", "vgg11_bn", "--lr", "0.01",
                       "--extra", "--limit_train 64 --no_attack", env=env, tmp=tmp_path))
    assert len(cmds) == 4
    for c in cmds:
        for expected in ("--regularization_strength 0.01", "--num_epochs 3", "--attack_epochs 2", "--device cpu",
                         f"--folder {tmp_path / 'f'}", "--arch vgg11_bn", "--learning_rate 0.01"):
            assert expected in c, expected
        assert "--limit_train 64 --no_attack --filename " in c


def without(cmd, *names):
    """The command's words less the named flags and their values."""
    words, out = cmd.split(), []
    for i, w in enumerate(words):
        if w in names or (i and words[i - 1] in names):
            continue
        out.append(w)
    return out


def test_seeds_pair_every_lambda_with_every_seed(tmp_path):
    cmds = commands(sh("--dry-run", "--seeds", "125 126 127", "--sigmas", "0.01 0.05", "--lambdas", "0 8 16",
                       "--defenses", "None dropout0.2", tmp=tmp_path))
    assert len(cmds) == 2 * 2 * 3 * 3 and len({flag(c, "--filename") for c in cmds}) == len(cmds)
    planned = {(flag(c, "--AT_regularization") if "--AT_regularization" in c else "None",
                flag(c, "--regularization_strength"), flag(c, "--random_seed"), flag(c, "--lambd")) for c in cmds}
    assert planned == {(d, s, seed, l) for d in ("None", "dropout0.2") for s in ("0.01", "0.05")
                       for seed in ("125", "126", "127") for l in ("0", "8", "16")}
    # A pair is the same command but for λ (and so its name): every λ = 0 run has its λ > 0 partners.
    for c in (c for c in cmds if flag(c, "--lambd") == "0"):
        partners = [p for p in cmds if without(p, "--lambd", "--filename") == without(c, "--lambd", "--filename")]
        assert sorted(flag(p, "--lambd") for p in partners) == ["0", "16", "8"], c
        # ... and they come one after another, so a sweep stopped early leaves whole pairs
        i = cmds.index(c)
        assert cmds[i:i + 3] == partners
    # --seed N is one seed; the environment's SEED and SEEDS too; --quick and --preset take --seeds
    for args, env, seeds in ((("--seed", "7"), None, {"7"}), ((), {"SEED": "9"}, {"9"}),
                             ((), {"SEEDS": "1 2"}, {"1", "2"}), (("--seeds", "3"), {"SEEDS": "1 2"}, {"3"})):
        cmds = commands(sh("--dry-run", "--sigmas", "0.05", "--lambdas", "0 16", *args, env=env, tmp=tmp_path))
        assert {flag(c, "--random_seed") for c in cmds} == seeds and len(cmds) == 2 * len(seeds), (args, env)
    quick = commands(sh("--quick", "--dry-run", "--seeds", "125 126 127", env={"DATA_ROOT": str(tmp_path / "e")}))
    assert {(flag(c, "--lambd"), flag(c, "--random_seed")) for c in quick} == {
        (l, seed) for l in ("0", "16") for seed in ("125", "126", "127")}
    preset = commands(sh("--dry-run", "--preset", "defenses", "--sigmas", "0.05", "--seeds", "1 2", tmp=tmp_path))
    assert len(preset) == 5 * 2 * 2
    for bad in ("1.5", "", "125 126 125", "-3"):
        r = sh("--dry-run", "--seeds", bad, tmp=tmp_path)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
        assert "seed" in r.stderr, r.stderr


def finish(cmd: str, tmp_path, status="finished"):
    """Make the run of a dry-run command look done, the way main_MIA.py records it (with its identity)."""
    sys.path.insert(0, str(REPO))
    import shlex

    from lifecycle.identity import identity
    from lifecycle.results import attack_key
    from main_MIA import build_parser

    cfg = vars(build_parser().parse_args(shlex.split(cmd.removeprefix("[skip] "))[2:]))
    run_dir = Path(cfg["folder"]) / cfg["filename"]
    run_dir.mkdir(parents=True)
    m = {"status": status, "identity": identity(cfg), "config": cfg}
    if status == "finished":
        m.update(train={"test_acc": 50.0}, attack_settings={"decoder": attack_key(cfg, "decoder")},
                 attack={"decoder": {"train_time": {}, "infer_time": {}}})
    (run_dir / "config.json").write_text(json.dumps({**cfg, "identity": identity(cfg)}))
    (run_dir / "metrics.json").write_text(json.dumps(m))
    return run_dir


def test_finished_config_is_skipped(tmp_path):
    args = ("--dry-run", "--sigmas", "0.05", "--lambdas", "0 16")
    first = commands(sh(*args, tmp=tmp_path))
    done_name = flag(first[1], "--filename")
    finish(first[1], tmp_path)
    half = finish(first[0], tmp_path, status="training")   # a killed run: resumed, not restarted
    (half / "checkpoints").mkdir(parents=True)
    (half / "checkpoints" / "last.pt").write_bytes(b"")
    cmds = commands(sh(*args, tmp=tmp_path))
    assert cmds[1].startswith("[skip] ") and done_name in cmds[1]
    assert not cmds[0].startswith("[skip]") and cmds[0].endswith("--resume")
    # Issue 11: any other setting -- lr, batch size, an --extra flag -- is another configuration.
    for more in (("--lr", "0.01"), ("--batch_size", "64"), ("--extra", "--limit_test 100"),
                 ("--extra", "--milestones none")):
        cmds = commands(sh(*args, *more, tmp=tmp_path))
        assert not any(c.startswith("[skip]") for c in cmds), more
        assert flag(cmds[1], "--filename") != done_name
    # Other attack settings: the trained model is attacked again, beside the old results.
    cmds = commands(sh(*args, "--attack_epochs", "7", tmp=tmp_path))
    assert flag(cmds[1], "--filename") == done_name and cmds[1].endswith("--attack_only")


def test_tinyimagenet_preset_and_precedence(tmp_path):
    cmds = commands(sh("--dry-run", "--dataset", "tinyimagenet", tmp=tmp_path))
    assert len(cmds) == 15
    # the paper's TinyImageNet setting: resnet20 cut 5 + noRELU_C8S1 (8x16x16 features), tau 0.0625
    assert all("--arch resnet20" in c and "--var_threshold 0.0625" in c and "--cutlayer 5" in c
               and "--bottleneck_option noRELU_C8S1" in c and "--dataset tinyimagenet" in c for c in cmds)
    cmds = commands(sh("--dry-run", "--datasets", "tinyimagenet facescrub", "--var_threshold", "0.5",
                       env={"ARCH": "resnet20_std"}, tmp=tmp_path))
    assert len(cmds) == 30 and all("--var_threshold 0.5" in c and "--arch resnet20_std" in c for c in cmds)
    assert {flag(c, "--dataset") for c in cmds} == {"tinyimagenet", "facescrub"}


def test_quick_dry_run_falls_back_to_digits(tmp_path):
    r = sh("--quick", "--dry-run", env={"DATA_ROOT": str(tmp_path / "empty")})
    cmds = commands(r)
    assert len(cmds) == 2
    assert all("--dataset digits" in c and "--limit_train" in c and "--limit_test" in c
               and "--folder ./runs/quick" in c and "--attack_modes train_time" in c for c in cmds)
    assert {(flag(c, "--regularization_strength"), flag(c, "--lambd")) for c in cmds} == {("0.05", "0"), ("0.05", "16")}
    # lr x0.2 at 70% and 90% of the run: epochs 7 and 9 of the default 10
    assert {flag(c, "--milestones") for c in cmds} == {"7\\,9"} and {flag(c, "--batch_size") for c in cmds} == {"32"}
    # the paper's lr 0.05 at batch 128, scaled to batch 32; an explicit --lr still wins
    assert {flag(c, "--learning_rate") for c in cmds} == {"0.0125"}
    r = sh("--quick", "--dry-run", "--lr", "0.05", env={"DATA_ROOT": str(tmp_path / "empty")})
    assert {flag(c, "--learning_rate") for c in commands(r)} == {"0.05"}
    assert "handwritten digits" in r.stderr
    assert not (tmp_path / "empty").exists()   # the dry run's check never downloads


def test_quick_dry_run_uses_cifar10_when_present(tmp_path):
    # The loader's small-subset layout: <root>/cifar10_subset/{train_*,test_*}.npz
    sub = tmp_path / "cifar" / "cifar10_subset"
    sub.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train_100.npz", 100), ("test_20.npz", 20)):
        np.savez(sub / name, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % 10)
    r = sh("--quick", "--dry-run", "--epochs", "2", env={"DATA_ROOT": str(tmp_path / "cifar")})
    cmds = commands(r)
    assert len(cmds) == 2 and all("--dataset cifar10" in c and "--num_epochs 2" in c for c in cmds), r.stderr
    assert all("--milestones 2" in c for c in cmds)  # scaled with --epochs, never before epoch 2


def test_bad_options_exit_2(tmp_path):
    for args in (("--bogus",), ("--sigmas",), ("--dry-run", "--sigmas", "abc"), ("--dry-run", "--epochs", "1.5")):
        r = sh(*args, tmp=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = sh("--help")
    assert r.returncode == 0 and "--sigmas" in r.stdout and "--quick" in r.stdout


def test_extra_cannot_set_what_the_sweep_varies(tmp_path):
    # Issue 18: --lambdas "0 16" --extra "--lambd 3" planned "2 to run", both λ = 3 under one name.
    cases = {"--lambd 3": ("--lambd", "--lambdas"), "--lambd=3": ("--lambd", "--lambdas"),
             "--lamb 3": ("--lambd", "--lambdas"),  # argparse takes an unambiguous prefix
             "--limit_train 64 --regularization_strength 0.2": ("--regularization_strength", "--sigmas"),
             "--cut=3": ("--cutlayer", "--cutlayers"), "--dataset digits": ("--dataset", "--datasets"),
             "--random_seed 3": ("--random_seed", "--seeds"),
             "--AT_regularization dropout0.2": ("--AT_regularization", "--defenses"),
             "--AT_regularization_strength 2": ("--AT_regularization_strength", "--at_strengths")}
    for extra, (given, option) in cases.items():
        r = sh("--dry-run", "--sigmas", "0.05", "--lambdas", "0 16", "--extra", extra, tmp=tmp_path)
        assert r.returncode == 2 and r.stdout == "", (extra, r.stdout)
        (line,) = r.stderr.strip().splitlines()
        assert f"--extra sets {given}, " in line and line.endswith(f"put the value(s) in {option}"), (extra, line)
    for args, env in ((("--extra=--lambd=3",), None), ((), {"EXTRA": "--lambd 3"})):
        r = sh("--dry-run", "--lambdas", "0 16", *args, env=env, tmp=tmp_path)
        assert r.returncode == 2 and "--extra sets --lambd, " in r.stderr, (args, env, r.stderr)


FAKE_EXPERIMENT = r'''
# Stand-in for lifecycle/experiment.py: the real main_MIA.py and run identity, no training.
import json, os, sys, time
from lifecycle.identity import identity
from lifecycle.results import attack_key


def main_guard(fn):
    try:
        return fn() or 0
    except KeyboardInterrupt:
        print("interrupted: saved", file=sys.stderr)
        return 130


def run_experiment(cfg, progress=True):
    if float(cfg["lambd"]) == 8:
        sys.exit("simulated crash")
    d = os.path.join(cfg["folder"], cfg["filename"])
    os.makedirs(os.path.join(d, "images"), exist_ok=True)
    m = {"status": "training", "identity": identity(cfg), "config": cfg}
    json.dump({**cfg, "identity": m["identity"]}, open(os.path.join(d, "config.json"), "w"))
    if os.environ.get("FAKE_SLOW"):
        open(os.path.join(d, "started"), "w").close()
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            m["status"] = "interrupted"
            json.dump(m, open(os.path.join(d, "metrics.json"), "w"))
            raise
    s, l, seed = float(cfg["regularization_strength"]), float(cfg["lambd"]), int(cfg["random_seed"])
    # A grid laid out as attacks/grid.py's: originals (chosen by the seed, as the eval images are) over
    # reconstructions; and a train_log.csv, so the report's page has everything to show.
    from PIL import Image
    tiles = [Image.new("RGB", (16, 16), ((seed * 37 + 11 * i) % 256, i * 53, seed * i % 256)) for i in range(4)]
    grid = Image.new("RGB", (64, 32), "white")
    for i, t in enumerate(tiles):
        grid.paste(t, (16 * i, 0))
        grid.paste(t.point(lambda v: (v + int(l * 7)) % 256), (16 * i, 16))
    grid.save(os.path.join(d, "images", "decoder_train_time.png"))
    with open(os.path.join(d, "train_log.csv"), "w") as f:
        f.write("epoch,lr,lambda_eff,train_loss,train_acc,cem_loss,val_acc,cem_mean_var,cem_logdet,epoch_time_s\n")
        for e in range(1, int(cfg["num_epochs"]) + 1):
            cem = f"{1 / e:g}" if l else ""
            f.write(f"{e},0.05,{l * 0.02:g},{2 / e:g},{20 + e},{cem},{18 + e},{cem},,1.0\n")
    # Other seeds differ a little (seed 125 keeps the numbers the tests below expect).
    res = {"final": {"mse_mean": 0.01 + s + l / 100 + (seed - 125) * l / 4000, "mse_std": 0.0, "ssim_mean": 0.5,
                     "ssim_std": 0.0, "psnr_mean": 15.0, "psnr_std": 0.0}, "grid": "images/decoder_train_time.png"}
    m.update(status="finished", train={"test_acc": 80 - 10 * s - (seed - 125) * l / 16},
             attack_settings={"decoder": attack_key(cfg, "decoder")},
             attack={"decoder": {"train_time": res, "infer_time": res}})
    json.dump(m, open(os.path.join(d, "metrics.json"), "w"))
    print("trained", cfg["filename"])
    return m
'''


def with_parser(body: str) -> str:
    """A stand-in main_MIA.py: the real parser (run_exp.sh asks lifecycle.plan, which reads it, for names
    and states) and `body` as what running it does."""
    import textwrap

    real = (REPO / "main_MIA.py").read_text().split('\nif __name__ == "__main__":')[0]
    return real + '\n\nif __name__ == "__main__":\n' + textwrap.indent(textwrap.dedent(body), "    ")


FAKE_MAIN = with_parser(FAKE_EXPERIMENT + """
import sys
cfg = vars(build_parser().parse_args(sys.argv[1:]))
cfg.pop("no_progress")
run_experiment(cfg)
""")


def stand_in_repo(tmp_path):
    repo = tmp_path / "repo"
    for package in ("tools", "lifecycle", "attacks", "defenses", "utils"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("run_exp.sh", "main_MIA.py"):
        shutil.copy(REPO / name, repo / name)
    (repo / "lifecycle" / "experiment.py").write_text(FAKE_EXPERIMENT)
    return repo


def test_real_run_with_stand_in_main(tmp_path):
    repo = stand_in_repo(tmp_path)
    folder = tmp_path / "out"
    args = ("--sigmas", "0.01 0.1", "--lambdas", "0 8 16", "--epochs", "1", "--folder", str(folder))
    r = sh(*args, script=repo / "run_exp.sh", tmp=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Summary: 4 done, 0 skipped (already finished), 2 failed, 0 interrupted" in r.stdout
    assert r.stdout.count("failed: ") == 2 and "lambd8" in r.stdout
    assert (folder / "results.md").exists() and (folder / "tradeoff.png").exists()
    # after the report, the last word is why the two failed (each job's own last line here)
    assert r.stderr.strip().splitlines()[-1].startswith("error: 2 of 6 configurations failed: ")
    assert r.stderr.strip().endswith(" and 1 more: exit 1, last output: simulated crash")
    assert "| σ=0.01 |" in r.stdout
    logs = sorted(p.name for p in folder.glob("*.log"))
    assert len(logs) == 6 and "simulated crash" in (folder / [n for n in logs if "lambd8" in n][0]).read_text()
    r = sh(*args, "--lambdas", "0 16", script=repo / "run_exp.sh", tmp=tmp_path)
    assert r.returncode == 0 and "Summary: 0 done, 4 skipped" in r.stdout

    r = sh("--quick", "--epochs", "1", "--folder", str(tmp_path / "q"), script=repo / "run_exp.sh", tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "handwritten digits" in r.stderr   # no datasets package in the copy: falls back
    assert f"trade-off plot: {tmp_path / 'q' / 'tradeoff.png'}" in r.stdout
    assert "reconstructions (λ=0): " in r.stdout and "reconstructions (λ=16): " in r.stdout
    assert "| 0.05 | 16 |" in r.stdout and "+266.7% |" in r.stdout  # tools.report's CEM-gain table


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_reaches_the_running_configuration(sig, code, tmp_path):
    import signal
    import time

    repo = stand_in_repo(tmp_path)
    folder = tmp_path / "out"
    e = {k: v for k, v in os.environ.items() if k not in SWEEP_VARS}
    e.update(PYTHON=sys.executable, FAKE_SLOW="1", DATA_ROOT=str(tmp_path / "no_data"))
    # A shell cannot trap a signal it was started with ignored, and pytest run in the background of a
    # non-interactive shell (nohup ... &) hands SIGINT down ignored: start bash as a terminal would.
    p = subprocess.Popen(["bash", str(repo / "run_exp.sh"), "--sigmas", "0.01 0.1", "--lambdas", "0",
                          "--folder", str(folder)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not list(folder.glob("*/started")) and time.time() < deadline:
            time.sleep(0.2)
        assert list(folder.glob("*/started")), "the first configuration never started"
        p.send_signal(getattr(signal, sig))
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == code, out + err
    (started,) = folder.glob("*/started")
    assert json.loads((started.parent / "metrics.json").read_text())["status"] == "interrupted"
    assert len(list(folder.glob("*/config.json"))) == 1          # the second configuration never began
    assert "Summary: 0 done, 0 skipped (already finished), 0 failed, 1 interrupted" in out
    assert "interrupted: " + started.parent.name in out and sig in err


def test_an_interpreter_without_torch_stops_before_any_run(tmp_path):
    fake = tmp_path / "python"  # runs, but every import fails, like a venv the requirements never went into
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    r = sh("--quick", "--python", str(fake), tmp=tmp_path)
    assert r.returncode != 0
    assert "cannot import torch" in r.stderr and "pip install -r requirements.txt" in r.stderr, r.stderr
    assert "falling back" not in r.stderr + r.stdout  # not blamed on the data
    assert not (tmp_path / "runs").exists()
