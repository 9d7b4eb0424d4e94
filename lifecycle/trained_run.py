"""Rebuild a trained run from its folder: config, data, model (loaded strictly) and deployed defences.

The ONE place that turns a run folder back into a model. `main_MIA.py --attack_only`,
`run_gan_attack.py` and every later attack go through `load_trained_run`; the shape of the model is
decided by `model_from_checkpoint`: it builds PATROL's extra layer when the config asks for it and
gives the model the (pruned) shapes its checkpoint records before the strict load.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from lifecycle.data_files import changed
from lifecycle.flags import check_recorded
from utils import UserError, load_checkpoint, read_json, resolve_device

# Keys every config.json of this project has; a folder without them belongs to something else.
REQUIRED_CONFIG_KEYS = ("arch", "cutlayer", "dataset", "bottleneck_option", "random_seed")
BEST_CKPT = Path("checkpoints") / "best.pt"


@dataclass
class TrainedRun:
    dir: Path
    cfg: dict                 # config.json, with any overrides applied (data_root, device, attack settings)
    metrics: dict             # metrics.json as found (may be {} for a folder without one)
    bundle: object            # datasets.DataBundle, same splits as in training (seeded)
    model: torch.nn.Module    # SplitModel on `device`, best checkpoint loaded strictly, eval mode
    defenses: object          # defenses.DefenseStack as deployed
    device: torch.device
    notes: list = field(default_factory=list)  # warnings raised while rebuilding (one line each)


def read_run_config(run_dir) -> tuple[dict, dict]:
    """(config.json, metrics.json) of a run folder, checked to be a trained run of this project."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is a file, not a run folder; pass the folder main_MIA.py wrote "
                        "(the one holding config.json)")
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist; pass a folder written by main_MIA.py")
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise UserError(f"'{run_dir}' has no config.json, so it is not a run folder of this project; "
                        "pass a folder written by main_MIA.py")
    try:
        cfg = read_json(cfg_path)
    except ValueError as e:
        raise UserError(f"{cfg_path} is not valid JSON ({str(e)[:120]}); restore it or retrain the run") from None
    missing = [k for k in REQUIRED_CONFIG_KEYS if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise UserError(f"{cfg_path} lacks {', '.join(missing)}: not a run folder of this project; "
                        "pass a folder written by main_MIA.py")
    check_recorded(cfg, cfg_path)
    metrics = {}
    if (run_dir / "metrics.json").exists():
        try:
            metrics = read_json(run_dir / "metrics.json")
        except ValueError as e:
            raise UserError(f"{run_dir / 'metrics.json'} is not valid JSON ({str(e)[:120]}); "
                            "fix or delete it") from None
    if not (run_dir / BEST_CKPT).exists():
        raise UserError(f"'{run_dir}' has no {BEST_CKPT.as_posix()}: the run was never trained or its "
                        "checkpoints were removed; train it first (main_MIA.py, or --resume)")
    return cfg, metrics


def read_checkpoint(path, device) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"no trained model at {path}; train the run first (without --attack_only)")
    ck = load_checkpoint(path, device, fix="retrain the run, or get it again from a source you trust")
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict):
        raise UserError(f"{path} is not a checkpoint of this project (no 'model' state dict); retrain the run")
    if isinstance(ck.get("epoch", 0), bool) or not isinstance(ck.get("epoch", 0), int):
        raise UserError(f"{path} records epoch {ck.get('epoch')!r}, not a number of epochs; retrain the run")
    return ck


def model_from_checkpoint(cfg: dict, num_classes: int, image_size: int, ck: dict, device) -> torch.nn.Module:
    """The split model of `cfg` with the checkpoint's weights, loaded strictly.

    Extend here (not in callers) when a defence changes layer shapes during training: build the
    shapes the checkpoint records, then load strictly. A mismatch is a user-facing error, never a
    partially loaded model.
    """
    from architectures import build_split_model, load_split_state
    from defenses import device_tail, extra_device_layer

    model = build_split_model(cfg["arch"], int(cfg["cutlayer"]), num_classes, image_size, cfg["bottleneck_option"],
                              extra_device_layer=extra_device_layer(cfg), device_tail=device_tail(cfg)).to(device)
    try:
        load_split_state(model, ck)  # PATROL: first gives the model the checkpoint's pruned shapes
    except UserError as e:
        raise UserError(f"the checkpoint does not fit the model rebuilt from config.json "
                        f"({cfg['arch']}, cut {cfg['cutlayer']}, {cfg['bottleneck_option']}): "
                        f"{e}; the config and checkpoint come from different runs") from None
    return model


def load_weights(model: torch.nn.Module, path, device) -> int:
    """Load a checkpoint of the same run into an already built model (strict); returns its epoch."""
    from architectures import load_split_state

    ck = read_checkpoint(path, device)
    try:
        load_split_state(model, ck)  # a pruned run's best.pt may have other shapes than the model now
    except UserError as e:
        raise UserError(f"{path} does not fit the model: {e}") from None
    return int(ck.get("epoch", 0))


def load_trained_run(run_dir, overrides: Optional[dict] = None, device=None) -> TrainedRun:
    """Everything an attack needs from a trained run folder.

    `overrides` replace config values that do not change the model (data_root, device, attack
    settings); the data splits are rebuilt with the run's seed, so `train` is the defender's data.
    """
    from datasets import load_dataset
    from defenses import build_defenses

    run_dir = Path(run_dir)
    cfg, metrics = read_run_config(run_dir)
    cfg = {**cfg, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    device = torch.device(device) if device is not None else resolve_device(cfg.get("device", "auto"))
    ck = read_checkpoint(run_dir / BEST_CKPT, device)
    from architectures import ARCHITECTURES

    if cfg["arch"] not in ARCHITECTURES:  # before loading data: say the config is the problem
        raise UserError(f"{run_dir / 'config.json'} names unknown arch {cfg['arch']!r} (known: "
                        f"{', '.join(ARCHITECTURES)}); the run comes from another version or project")
    data = changed(cfg.get("data_files"), cfg)
    if data:
        raise UserError(f"{run_dir} was trained on other data: {data}; attacking it would score other images "
                        "(restore the file, or retrain the run)")
    bundle = load_dataset(cfg["dataset"], cfg["data_root"], select_on=cfg.get("select_on", "val"),
                          seed=cfg["random_seed"], limit_train=cfg.get("limit_train"),
                          limit_test=cfg.get("limit_test"), num_classes=cfg.get("num_classes"))
    model = model_from_checkpoint(cfg, bundle.num_classes, bundle.image_size, ck, device)
    saved_shape = cfg.get("feature_shape")
    if saved_shape is not None and list(saved_shape) != list(model.feature_shape):
        raise UserError(f"{run_dir}: features of the rebuilt model are {tuple(model.feature_shape)} but "
                        f"config.json records {tuple(saved_shape)}; the run comes from another version")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defenses = build_defenses(cfg, bundle.num_classes, len(bundle.train), feature_shape=tuple(model.feature_shape),
                                  image_size=bundle.image_size, mean=bundle.mean, std=bundle.std)
    defenses.to(device)
    model.eval()
    return TrainedRun(dir=run_dir, cfg=cfg, metrics=metrics, bundle=bundle, model=model, defenses=defenses,
                      device=device, notes=[str(w.message) for w in caught])
