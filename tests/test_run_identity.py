"""Issue 11: a run's results are never silently reused or mixed: run identity, --force, --attack_only
variants, and the report's grouping by identity."""
import json
from pathlib import Path

import main_MIA
from lifecycle.identity import NOT_RESULT_KEYS, PUBLISHED_SWITCHES, attack_keys, default_filename, identity
from tools import collect


def cfg(**over):
    c = vars(main_MIA.build_parser().parse_args([]))
    c.update(over)
    return c


def test_identity_covers_every_result_setting():
    base = identity(cfg())
    parser_keys = set(cfg())
    counted = set(base["train"]) | set(base["attack"])
    # a new flag counts unless listed as not affecting results (the published switches: only when set)
    assert counted == parser_keys - NOT_RESULT_KEYS - PUBLISHED_SWITCHES
    for key in ("batch_size", "limit_test", "milestones", "select_on", "cem_lr_coupling", "local_lr",
                "learning_rate", "random_seed", "bf16", "AT_regularization", "num_classes"):
        assert key in base["train"], key
    assert {"attack_epochs", "gan_AE_type"} <= set(base["attack"]) <= attack_keys()
    # Names: any training setting makes another folder; where results go and attack settings do not.
    name = default_filename(cfg())
    for over in (dict(batch_size=64), dict(limit_test=100), dict(milestones="none"), dict(local_lr=0.01),
                 dict(select_on="test"), dict(cem_lr_coupling="none")):
        assert default_filename(cfg(**over)) != name, over
    for over in (dict(device="cpu"), dict(folder="elsewhere"), dict(attack_epochs=3), dict(no_progress=True)):
        assert default_filename(cfg(**over)) == name, over


def test_same_name_other_settings_refused_then_forced(capsys, copy_run):
    argv, run = copy_run
    assert main_MIA.main(argv) == 0 and "already finished" in capsys.readouterr().out
    for flags, needle in ((["--batch_size", "16"], "batch_size 32 -> 16"),
                          (["--regularization_strength", "0.1"], "regularization_strength 0.05 -> 0.1"),
                          (["--milestones", "none"], "milestones paper -> none"),
                          (["--limit_test", "40"], "limit_test 32 -> 40")):
        code = main_MIA.main(argv + flags)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0] and "--force" in lines[0], lines
    assert json.loads((run / "metrics.json").read_text())["config"]["batch_size"] == 32
    assert main_MIA.main(argv + ["--batch_size", "16", "--no_attack", "--force"]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert after["status"] == "finished" and after["config"]["batch_size"] == 16 and "attack" not in after
    assert after["identity"]["train"]["batch_size"] == 16 and not (run / "images").exists()


def test_attack_only_with_new_settings_adds_results_beside(capsys, copy_run):
    argv, run = copy_run
    first = json.loads((run / "metrics.json").read_text())["attack"]["decoder"]["train_time"]
    # A plain rerun with other attack settings is refused (it would mix them) ...
    assert main_MIA.main(argv + ["--attack_epochs", "2"]) == 2
    assert "attack_epochs 1 -> 2" in capsys.readouterr().err
    # ... --attack_only adds them beside the old ones, and does not redo them a second time.
    assert main_MIA.main(argv + ["--attack_epochs", "2", "--attack_only"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["attack"]["decoder"]["train_time"] == first
    (variant,) = m["attack_variants"]["decoder"].values()
    new = variant["results"]["sent"]["train_time"]
    assert variant["settings"]["attack_epochs"] == 2 and new["epochs"] == 2
    assert (run / new["grid"]).exists() and (run / first["grid"]).exists() and first["grid"] != new["grid"]
    capsys.readouterr()
    assert main_MIA.main(argv + ["--attack_epochs", "2", "--attack_only"]) == 0
    assert "already finished" in capsys.readouterr().out
    # The report keeps the two attack settings apart.
    runs, _ = collect.load_runs(run.parent)
    assert len(runs) == 2 and len(collect.groups(runs)) == 2


def _metrics(lr=0.05, seed=125, batch=128, sigma=0.05, mse=0.1):
    c = cfg(learning_rate=lr, random_seed=seed, batch_size=batch, regularization_strength=sigma, lambd=16.0)
    res = {"final": {"mse_mean": mse, "ssim_mean": 0.5, "psnr_mean": 10.0}}
    return {"status": "finished", "identity": identity(c), "config": c, "train": {"test_acc": 50.0},
            "attack": {"decoder": {"train_time": res}}}


def _write(root: Path, name: str, m: dict):
    (root / name).mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps(m))


def test_report_never_averages_different_configurations(tmp_path):
    from tools import report

    root = tmp_path / "runs"
    _write(root, "a", _metrics(lr=0.05, mse=0.1))
    _write(root, "b", _metrics(lr=0.01, mse=0.3))     # another lr: its own table
    _write(root, "c", _metrics(batch=64, mse=0.5))    # another batch size: its own table
    _write(root, "d", _metrics(seed=7, mse=0.2))      # only the seed differs from a: averaged with it
    runs, _ = collect.load_runs(root)
    grouped = collect.groups(runs)
    assert sorted(len(rs) for _, rs in grouped) == [1, 1, 2]
    titles = [collect.group_title(k) for k, _ in grouped]
    assert any("learning_rate=0.01" in t for t in titles) and any("batch_size=64" in t for t in titles)
    md = report.markdown(grouped, "decoder", "train_time", "final")
    assert md.count("(n=2)") == 1 and "0.1500" in md  # mean of the two seeds' MSE


def test_attacks_of_a_run_folder_with_other_settings_go_beside(tmp_path, capsys):
    from fake_runs import make_run

    from lifecycle.attack_runner import attack_run

    run = make_run(tmp_path, limit_train=40, limit_test=12)
    settings = {"attacks": "rmle", "attack_modes": "train_time", "rmle_steps": 2, "data_root": str(tmp_path),
                "device": "cpu", "progress": False}
    first = attack_run(run, settings)["attack"]["rmle"]["train_time"]
    assert attack_run(run, settings)["attack"]["rmle"]["train_time"] == first   # not redone ...
    assert "already finished" in capsys.readouterr().out
    m = attack_run(run, {**settings, "rmle_steps": 3})                          # ... nor overwritten
    (variant,) = m["attack_variants"]["rmle"].values()
    assert m["attack"]["rmle"]["train_time"] == first and variant["settings"]["rmle_steps"] == 3
    assert variant["results"]["sent"]["train_time"]["grid"] != first["grid"]
    assert attack_run(run, {**settings, "force": True})["attack"]["rmle"]["train_time"]["grid"] == first["grid"]
