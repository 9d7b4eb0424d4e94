"""Issue 21 item 3: each attack's results are keyed by that attack's own settings (lifecycle/results.py):
a first GAN attack on a run lands in attack.gan and starts from the run's decoder, another attack's
settings never move results, and folders written before keep loading and keep their results."""
import json

import pytest

import main_MIA
import run_gan_attack
from attacks.flags import ADDED_LATER, ATTACKS
from lifecycle.identity import NOT_RESULT_KEYS, PUBLISHED_SWITCHES, attack_keys, identity
from lifecycle.results import attack_key, missing, owners
from lifecycle.run_folder import Run
from tools import collect, report

pytestmark = pytest.mark.usefixtures("one_thread")
GAN = ["--gan_epochs", "1", "--gan_batch_size", "32", "--no_progress", "--device", "cpu"]


def cfg(**over):
    c = vars(main_MIA.build_parser().parse_args([]))
    c.update(over)
    return c


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_each_attack_key_holds_its_own_settings_only():
    keys = {a: attack_key(cfg(), a) for a in ("decoder", "gan", "rmle")}
    assert keys["decoder"]["results_version"] == 2 and keys["rmle"]["results_version"] == 1
    # every attack-group flag that can change a number keys some attack's results
    # (the published switches only when set: see tests/test_published_switches.py)
    # (every registered attack's; flags added later to an existing attack count only when set, like the switches)
    assert attack_keys() - NOT_RESULT_KEYS - PUBLISHED_SWITCHES - ADDED_LATER <= \
        set().union(*(attack_key(cfg(), a) for a in ATTACKS))
    assert {"attack_epochs", "gan_AE_type"} <= set(keys["gan"])  # the decoder the generator starts from
    for flag, value, moved in (("n_critic", 5, {"gan"}), ("attack_epochs", 3, {"decoder", "gan"}),
                               ("rmle_steps", 9, {"rmle"}), ("checkpoint_every", 1, set()),
                               ("attacker_data", "published", {"decoder", "gan"}),
                               ("decoder_heldout_bn", "train", {"decoder", "gan"}), ("gan_loop", "published", {"gan"})):
        changed = {a for a in keys if attack_key(cfg(**{flag: value}), a) != keys[a]}
        assert changed == moved, flag
    assert identity(cfg(attack_view="noise_only")) == identity(cfg())  # views are places, not identities


def test_gan_on_a_trained_run_lands_in_attack_gan_from_the_runs_decoder(copy_run, tmp_path):
    argv, run = copy_run
    decoder = metrics(run)["attack"]["decoder"]["train_time"]
    assert run_gan_attack.main([str(run), *GAN]) == 0
    m = metrics(run)
    gan = m["attack"]["gan"]["train_time"]
    assert "attack_variants" not in m and m["attack"]["decoder"]["train_time"] == decoder
    assert gan["settings"]["init_from"] == "decoder_train_time.pt" and gan["epochs"] == 1
    assert f"initialised from the saved decoder {run / 'attacks' / 'decoder_train_time.pt'}" in \
        (run / "log.txt").read_text()
    assert m["attack_settings"]["gan"]["gan_epochs"] == 1 and set(m["attack_settings"]) == {"decoder", "gan"}
    # one run, one table (and the side-by-side one), no table of dashes
    assert report.main([str(run.parent), "--attack", "gan", "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "results.md").read_text()
    titles = [line for line in md.splitlines() if line.startswith("### ")]
    assert len(titles) == 2 and "side by side" in titles[1], titles
    assert not [line for line in md.splitlines() if line.startswith("| σ=") and "–" in line]

    # Another GAN setting goes beside, starting from the same decoder; nothing else moves.
    assert run_gan_attack.main([str(run), *GAN, "--n_critic", "5"]) == 0
    after = metrics(run)
    assert after["attack"] == m["attack"] and after["attack_settings"] == m["attack_settings"]
    (label, variant), = after["attack_variants"]["gan"].items()
    other = variant["results"]["sent"]["train_time"]
    assert variant["settings"]["n_critic"] == 5 and other["settings"]["init_from"] == "decoder_train_time.pt"
    assert other["grid"] == f"images/gan_train_time_{label}.png" and (run / other["grid"]).exists()
    assert other["saved_model"] == f"attacks/gan_train_time_{label}.pt"
    runs, _ = collect.load_runs(run.parent)
    assert len(collect.groups(runs, "decoder")) == 1 and len(collect.groups(runs, "gan")) == 2


def test_gan_starts_from_the_decoder_of_its_own_decoder_settings(copy_run):
    argv, run = copy_run
    first = metrics(run)["attack"]["decoder"]["train_time"]
    assert main_MIA.main(argv + ["--attack_only", "--attack_epochs", "2"]) == 0
    m = metrics(run)
    (label, variant), = m["attack_variants"]["decoder"].items()
    assert m["attack"]["decoder"]["train_time"] == first and variant["settings"]["attack_epochs"] == 2
    assert (run / "attacks" / f"decoder_train_time_{label}.pt").exists()
    # A first GAN attack with those decoder settings owns attack.gan and starts from that decoder.
    assert main_MIA.main(argv + ["--attack_only", "--attacks", "gan", "--attack_epochs", "2", "--gan_epochs", "1",
                                 "--gan_batch_size", "32"]) == 0
    gan = metrics(run)["attack"]["gan"]["train_time"]
    assert gan["settings"]["init_from"] == f"decoder_train_time_{label}.pt"
    assert metrics(run)["attack"]["decoder"]["train_time"] == first


def _old_layout(run):
    """The run's metrics.json as the code before per-attack keys wrote it: the whole attack group as
    `attack_settings`, and an --attack_only variant under its group digest."""
    m = metrics(run)
    group = dict(m["identity"]["attack"], checkpoint_every=5)
    rmle = {"final": {"mse_mean": 0.2}, "grid": "images/rmle_train_time_0badc0de.png"}
    variant = {"settings": {**group, "rmle_steps": 3}, "attack": {"rmle": {"train_time": rmle}}}
    m.update(attack_settings=group, attack_variants={"0badc0de": variant})
    (run / "metrics.json").write_text(json.dumps(m))
    return m


def test_old_run_folder_loads_keeps_its_results_and_recomputes_stale_decoder_results(copy_run, capsys):
    argv, run = copy_run
    old = _old_layout(run)
    best = (run / "checkpoints" / "best.pt").read_bytes()
    # read per attack: the decoder results are of results version 1 (the earlier decoder design) ...
    assert owners(old)["decoder"]["results_version"] == 1
    c = vars(main_MIA.build_parser().parse_args(argv))
    assert missing(old, c) == [("decoder", "train_time", "sent")]
    assert not missing(old, {**c, "attacks": "rmle", "rmle_steps": 3})  # the old rmle variant still counts
    assert Run(run.parent, run.name).plan(c)[0] == "incomplete"
    runs, warnings = collect.load_runs(run.parent)
    assert not warnings and {r["filename"] for r in runs} == {"r", "r@rmle-0badc0de"}
    (own,) = [r for r in runs if r["filename"] == "r"]
    assert own["identity"]["decoder.results_version"] == 1 and ("decoder", "train_time") in own["attacks"]
    # ... so a plain rerun recomputes them beside the old ones, without retraining
    assert main_MIA.main(argv) == 0
    m = metrics(run)
    assert m["attack"] == old["attack"] and m["train"] == old["train"]
    assert m["attack_settings"] == old["attack_settings"]
    assert (run / "checkpoints" / "best.pt").read_bytes() == best
    (new,) = m["attack_variants"]["decoder"].values()
    assert new["settings"]["results_version"] == 2 and new["results"]["sent"]["train_time"]["epochs"] == 1
    assert m["attack_variants"]["0badc0de"] == old["attack_variants"]["0badc0de"]
    capsys.readouterr()
    assert main_MIA.main(argv) == 0 and "already finished" in capsys.readouterr().out
