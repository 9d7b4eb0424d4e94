"""The one loader that rebuilds a trained run for attacks: strict, with clear errors."""
import json

import pytest
import torch
from fake_runs import make_run

from lifecycle.trained_run import load_trained_run
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cut,bottleneck,shape", [(3, "noRELU_C8S1", (8, 16, 16)), (4, "noRELU_C8S1", (8, 8, 8))])
def test_each_run_is_rebuilt_with_its_own_shapes(tmp_path, cut, bottleneck, shape):
    run = make_run(tmp_path, cutlayer=cut, bottleneck=bottleneck)
    saved = torch.load(run / "checkpoints" / "best.pt")["model"]
    tr = load_trained_run(run, {"data_root": str(tmp_path)}, device="cpu")
    assert tuple(tr.model.feature_shape) == shape
    assert all(torch.equal(saved[k], v) for k, v in tr.model.state_dict().items())
    assert not tr.model.training and len(tr.bundle.train) + len(tr.bundle.val) == 64 and len(tr.bundle.test) == 40
    z = torch.zeros(5, *shape)
    assert not torch.equal(tr.defenses.deployed()(z), z)  # sigma 0.05 noise is deployed


def test_missing_checkpoint(tmp_path):
    run = make_run(tmp_path)
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(UserError, match="best.pt"):
        load_trained_run(run, device="cpu")


def test_foreign_folder(tmp_path):
    run = tmp_path / "other"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "bert", "lr": 1}))
    (run / "metrics.json").write_text(json.dumps({"status": "finished"}))
    torch.save({"state_dict": {}}, run / "checkpoints" / "best.pt")
    with pytest.raises(UserError, match="not a run folder of this project"):
        load_trained_run(run, device="cpu")
    (run / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json"):
        load_trained_run(run, device="cpu")


def test_unknown_arch_in_config(tmp_path):
    run = make_run(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "arch": "vgg99"}))
    with pytest.raises(UserError, match="unknown arch 'vgg99'"):
        load_trained_run(run, device="cpu")


def test_checkpoint_of_another_cut_is_refused_not_partially_loaded(tmp_path):
    cut2 = make_run(tmp_path, "cut2", cutlayer=2, bottleneck="noRELU_C8S1")
    cut4 = make_run(tmp_path, "cut4", cutlayer=4, bottleneck="noRELU_C8S1")
    (cut4 / "checkpoints" / "best.pt").write_bytes((cut2 / "checkpoints" / "best.pt").read_bytes())
    with pytest.raises(UserError, match="does not fit the model rebuilt from config.json"):
        load_trained_run(cut4, {"data_root": str(tmp_path)}, device="cpu")
