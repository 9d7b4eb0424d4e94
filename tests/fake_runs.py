"""Run folders as main_MIA.py writes them, made without training (an initialised model saved as the
best checkpoint), so attack tests can rebuild real targets in milliseconds."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from architectures import build_split_model
from utils import torch_save_atomic


def make_run(parent: Path, name: str = "run", arch: str = "vgg11_bn_sgm", cutlayer: int = 2,
             bottleneck: str = "noRELU_C4S1", limit_train: int = 64, limit_test: int = 40, sigma: float = 0.05,
             data_root: str = "unused", finished: bool = True, seed: int = 7) -> Path:
    torch.manual_seed(seed)
    model = build_split_model(arch, cutlayer, 10, 32, bottleneck)
    run = Path(parent) / name
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"arch": arch, "cutlayer": cutlayer, "bottleneck_option": bottleneck, "dataset": "digits",
           "data_root": str(data_root), "random_seed": seed, "select_on": "val", "limit_train": limit_train,
           "limit_test": limit_test, "regularization": "Gaussian_kl", "regularization_strength": sigma,
           "lambd": 0.0, "var_threshold": 0.125, "log_entropy": 1, "num_epochs": 1, "batch_size": 32,
           "learning_rate": 0.05, "gan_AE_type": "res_normN1C8", "attack_epochs": 1,
           "attack_modes": "train_time", "folder": str(parent), "filename": name, "device": "cpu",
           "feature_shape": list(model.feature_shape)}
    (run / "config.json").write_text(json.dumps(cfg))
    metrics = {"status": "finished" if finished else "training", "config": cfg}
    if finished:
        metrics["train"] = {"test_acc": 10.0, "test_acc_last": 10.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    torch_save_atomic({"epoch": 1, "model": model.state_dict()}, run / "checkpoints" / "best.pt")
    return run
