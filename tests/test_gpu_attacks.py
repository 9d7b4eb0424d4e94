"""The three attacks on CUDA: a rebuilt run attacked end to end on the GPU (skipped without one)."""
import pytest
import torch
from fake_runs import make_run

from lifecycle.attack_runner import attack_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_decoder_gan_rmle_on_cuda(tmp_path):
    run = make_run(tmp_path, cutlayer=4, bottleneck="noRELU_C8S1", limit_train=256, limit_test=64)
    settings = {"attacks": "decoder,gan,rmle", "attack_modes": "train_time", "attack_epochs": 2,
                "gan_AE_type": "res_normN1C16", "gan_epochs": 2, "n_critic": 2, "rmle_steps": 20,
                "data_root": str(tmp_path), "device": "cuda", "progress": False}
    m = attack_run(run, settings)["attack"]
    for name in ("decoder", "gan", "rmle"):
        res = m[name]["train_time"]
        assert res["n_eval"] == 64 and 0 < res["final"]["mse_mean"] < 1, (name, res["final"])
    assert m["gan"]["train_time"]["settings"]["init_from"] == "decoder_train_time.pt"
    saved = torch.load(run / "attacks" / "gan_train_time.pt", map_location="cpu", weights_only=True)
    assert saved["arch"] == "res_normN1C16" and tuple(saved["feature_shape"]) == (8, 8, 8)
