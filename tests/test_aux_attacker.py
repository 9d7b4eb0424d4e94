"""The auxiliary-data attacker (--attacker_data aux:SPEC[CLASSES], issue 35) and scoring restricted to
classes (--attack_eval_classes): what it parses, how its images are made to fit the victim's input,
and a run attacked with another data set's images, keyed by the spec and the file's contents."""
import json

import numpy as np
import pytest
import torch

import main_MIA
from attacks.aux_data import fit_victim_input
from attacks.specs.decoder import parse_attacker_data, parse_classes
from lifecycle.results import attack_key
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_attacker_data_and_class_lists_parse_or_fail_in_one_line():
    assert parse_attacker_data("split") == ("split", None, None)
    assert parse_attacker_data("aux:cifar10[0-4]") == ("aux", "cifar10", (0, 1, 2, 3, 4))
    assert parse_attacker_data("aux:npz:/d/x.npz,0.2") == ("aux", "npz:/d/x.npz,0.2", None)
    assert parse_classes("0,2-3, 7", "--x") == (0, 2, 3, 7)
    for bad in ("aux:", "auxcifar", "other"):
        with pytest.raises(UserError, match="--attacker_data"):
            parse_attacker_data(bad)
    for bad in ("4-1", "a", ""):
        with pytest.raises(UserError, match="class list"):
            parse_classes(bad, "--attack_eval_classes")


def test_aux_images_take_the_victims_size_and_channels():
    grey = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    out = fit_victim_input(grey, 32, 3)
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.uint8 and torch.equal(out[:, 0], out[:, 2])
    flat = torch.full((2, 3, 64, 64), 200, dtype=torch.uint8)
    assert torch.equal(fit_victim_input(flat, 16, 3), torch.full((2, 3, 16, 16), 200, dtype=torch.uint8))


def npz(path, seed):
    g = np.random.default_rng(seed)
    np.savez(path, x=g.integers(0, 256, (60, 12, 12, 3), dtype=np.uint8), y=np.arange(60) % 3)


def test_a_run_attacked_with_auxiliary_images_scored_on_other_classes(copy_run, tmp_path, capsys):
    argv, run = copy_run
    aux = ["--attack_only", "--attacker_data", "aux:digits[0-4]", "--attack_eval_classes", "5-9"]
    assert main_MIA.main(argv + aux) == 0
    m = json.loads((run / "metrics.json").read_text())
    own = m["attack"]["decoder"]["train_time"]
    (variant,) = m["attack_variants"]["decoder"].values()
    res = variant["results"]["sent"]["train_time"]
    assert variant["settings"]["attacker_data"] == "aux:digits[0-4]"
    assert variant["settings"]["attack_eval_classes"] == "5-9"
    assert 0 < res["n_eval"] < own["n_eval"] and 600 < res["n_fit"] + res["n_heldout"] < 800  # digits train, 0-4
    capsys.readouterr()
    assert main_MIA.main(argv + aux) == 0 and "already finished" in capsys.readouterr().out
    assert main_MIA.main(argv + ["--attack_only", "--attacker_data", "aux:digits[50-60]"]) == 2
    assert "no image of classes" in capsys.readouterr().err
    assert main_MIA.main(argv + ["--attack_only", "--attacker_data", "aux:digits[9-0]"]) == 2


def test_the_file_contents_key_the_results(tmp_path):
    data = tmp_path / "aux.npz"
    npz(data, 0)
    cfg = vars(main_MIA.build_parser().parse_args(["--attacker_data", f"aux:npz:{data}"]))
    first = attack_key(cfg, "decoder")
    assert first["attacker_data"] == f"aux:npz:{data}" and len(first["attacker_data_digest"]) == 12
    assert attack_key(cfg, "gan")["attacker_data_digest"] == first["attacker_data_digest"]  # it starts from it
    npz(data, 1)
    assert attack_key(cfg, "decoder")["attacker_data_digest"] != first["attacker_data_digest"]
    assert "attacker_data_digest" not in attack_key(vars(main_MIA.build_parser().parse_args([])), "decoder")
