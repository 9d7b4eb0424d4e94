"""One configuration, start to finish: run folder, training, attacks, results files.

`main_MIA.py` only parses flags and calls `run_experiment`; tests call it directly.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from utils import UserError, check_writable_dir, fmt_num, read_json, resolve_device, seed_everything, write_json

ATTACK_MODES = ("train_time", "infer_time")
# Settings that change what is trained: a resumed run must agree with its folder on all of them.
TRAINING_KEYS = ("arch", "cutlayer", "batch_size", "num_epochs", "learning_rate", "local_lr", "dataset",
                 "regularization", "regularization_strength", "lambd", "var_threshold", "log_entropy",
                 "bottleneck_option", "random_seed", "select_on", "cem_lr_coupling", "limit_train", "limit_test",
                 "milestones", "AT_regularization", "AT_regularization_strength", "adv_AE_type",
                 "gan_pretrain_epochs", "gan_loss_type", "ssim_threshold", "cem_refresh_aug")


def default_filename(cfg: dict) -> str:
    ds = cfg["dataset"]
    if ":" in ds:  # npz:/path/to/x.npz,... or imagefolder:/dir -> a short readable tag
        kind, rest = ds.split(":", 1)
        ds = kind + "-" + Path(rest.split(",")[0].rstrip("/")).stem
    reg = str(cfg["regularization"])
    parts = [ds, cfg["arch"], f"cut{cfg['cutlayer']}", str(cfg["bottleneck_option"]),
             f"{reg}{fmt_num(cfg['regularization_strength'])}" if reg.lower() != "none" else "nonoise",
             f"lambd{fmt_num(cfg['lambd'])}"]
    if cfg["lambd"] > 0:
        parts.append(f"tau{fmt_num(cfg['var_threshold'])}" + ("log" if int(cfg["log_entropy"]) else "lin"))
    at = str(cfg.get("AT_regularization") or "None")
    if at.lower() != "none" and float(cfg.get("AT_regularization_strength") or 0) > 0:
        parts.append(f"{at}-s{fmt_num(float(cfg['AT_regularization_strength']))}")
    parts += [f"ep{cfg['num_epochs']}", f"lr{fmt_num(cfg['learning_rate'])}", f"seed{cfg['random_seed']}"]
    if cfg.get("limit_train"):
        parts.append(f"n{cfg['limit_train']}")
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(parts))


def parse_modes(spec) -> list:
    modes = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    bad = [m for m in modes if m not in ATTACK_MODES]
    if bad or not modes:
        raise UserError(f"bad --attack_modes '{spec}'; use a comma list of {', '.join(ATTACK_MODES)}")
    return modes


def validate(cfg: dict) -> None:
    from model_training import milestones

    milestones(int(cfg["num_epochs"]), cfg.get("milestones", "paper"))
    checks = [("num_epochs", 1), ("batch_size", 2)]
    for key, low in checks:
        if int(cfg[key]) < low:
            raise UserError(f"--{key} must be >= {low} (got {cfg[key]})")
    if float(cfg["learning_rate"]) <= 0:
        raise UserError(f"--learning_rate must be > 0 (got {cfg['learning_rate']})")
    if cfg.get("local_lr") is not None and float(cfg["local_lr"]) <= 0:
        raise UserError(f"--local_lr must be > 0 (got {cfg['local_lr']})")
    if int(cfg["log_entropy"]) not in (0, 1):
        raise UserError("--log_entropy is 1 (log-variance surrogate, the paper's) or 0 (plain variance)")
    if int(cfg.get("attack_epochs", 1)) < 1:
        raise UserError("--attack_epochs must be >= 1 (use --no_attack to skip the attack)")
    if cfg.get("select_on") not in ("val", "test"):
        raise UserError("--select_on must be 'val' (held-out 10% of train) or 'test' (the paper code)")
    parse_modes(cfg["attack_modes"])
    from attack_runner import ATTACKS, parse_list

    parse_list(cfg.get("attacks") or "decoder", ATTACKS, "--attacks")
    from defenses.at_options import at_options

    at_options(cfg, warn=False)  # a bad --AT_regularization fails before any data is loaded
    if int(cfg.get("gan_pretrain_epochs", 0)) < 0:
        raise UserError(f"--gan_pretrain_epochs must be >= 0 (got {cfg['gan_pretrain_epochs']})")
    if not -1.0 <= float(cfg.get("ssim_threshold", 0.5)) <= 1.0:
        raise UserError(f"--ssim_threshold is an SSIM level in [-1, 1] (got {cfg['ssim_threshold']})")
    if str(cfg.get("capture", "auto")) not in ("auto", "on", "off"):
        raise UserError(f"bad --capture '{cfg.get('capture')}'; choose auto, on or off")


class Run:
    """The run folder `<folder>/<filename>/` and its files."""

    def __init__(self, cfg: dict):
        self.dir = Path(cfg["folder"]) / cfg["filename"]
        self.metrics_path = self.dir / "metrics.json"
        self.config_path = self.dir / "config.json"
        self.last_ckpt = self.dir / "checkpoints" / "last.pt"
        self.best_ckpt = self.dir / "checkpoints" / "best.pt"
        self._log_file = None

    def metrics(self) -> dict:
        if not self.metrics_path.exists():
            return {}
        try:
            return read_json(self.metrics_path)
        except ValueError:
            raise UserError(f"{self.metrics_path} is not valid JSON; fix or delete it, or use --force") from None

    def finished(self) -> bool:
        return self.metrics().get("status") == "finished"

    def log(self, msg: str) -> None:
        print(msg, flush=True)
        if self._log_file is None:
            self._log_file = open(self.dir / "log.txt", "a")
        self._log_file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        self._log_file.flush()


def _load_everything(cfg: dict, device):
    """Data, model and defences for a config; every user mistake becomes a UserError."""
    from architectures import build_split_model
    from datasets import load_dataset
    from defenses import build_defenses, extra_device_layer

    bundle = load_dataset(cfg["dataset"], cfg["data_root"], select_on=cfg["select_on"], seed=cfg["random_seed"],
                          limit_train=cfg.get("limit_train"), limit_test=cfg.get("limit_test"))
    model = build_split_model(cfg["arch"], int(cfg["cutlayer"]), bundle.num_classes, bundle.image_size,
                              cfg["bottleneck_option"], extra_device_layer=extra_device_layer(cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defenses = build_defenses(cfg, bundle.num_classes, len(bundle.train), feature_shape=tuple(model.feature_shape),
                                  image_size=bundle.image_size, mean=bundle.mean, std=bundle.std)
    return bundle, model.to(device), defenses, [str(w.message) for w in caught]


def run_experiment(cfg: dict, progress: bool = True, stop_after: Optional[int] = None) -> dict:
    """Trains (or resumes) one configuration, then attacks it; returns metrics.json's content."""
    cfg = dict(cfg)
    validate(cfg)
    if not cfg.get("filename"):
        cfg["filename"] = default_filename(cfg)
    run = Run(cfg)
    if cfg.get("attack_only"):
        return attack_only(cfg, run, progress)
    if run.dir.exists() and not cfg.get("force"):
        if run.finished():
            print(f"already finished: {run.dir} (use --force to redo it, --attack_only to re-attack it)")
            return run.metrics()
        if run.last_ckpt.exists() and not cfg.get("resume"):
            raise UserError(f"{run.dir} holds an unfinished run; pass --resume to continue it or --force to start over")
    device = resolve_device(cfg.get("device", "auto"))
    check_writable_dir(cfg["folder"])
    seed_everything(int(cfg["random_seed"]))
    bundle, model, defenses, notes = _load_everything(cfg, device)

    if cfg.get("force") and run.dir.exists():
        for name in ("checkpoints", "images"):
            shutil.rmtree(run.dir / name, ignore_errors=True)
        for name in ("metrics.json", "train_log.csv", "log.txt", "config.json"):
            (run.dir / name).unlink(missing_ok=True)
    run.dir.mkdir(parents=True, exist_ok=True)
    resuming = cfg.get("resume") and run.last_ckpt.exists()
    if resuming and run.config_path.exists():
        old = read_json(run.config_path)
        diff = [k for k in TRAINING_KEYS if str(old.get(k)) != str(cfg.get(k))]
        if diff:
            raise UserError(f"--resume with settings that differ from {run.config_path}: {', '.join(diff)}; "
                            "use the same flags, another --filename, or --force")
    saved = {k: v for k, v in cfg.items() if k not in ("force", "resume", "attack_only")}
    saved.update(device=str(device), torch=torch.__version__, num_classes=bundle.num_classes,
                 image_size=bundle.image_size, n_train=len(bundle.train),
                 n_val=len(bundle.val) if bundle.val is not None else 0, n_test=len(bundle.test),
                 feature_shape=list(model.feature_shape))
    write_json(run.config_path, saved)
    for n in notes:
        run.log(f"note: {n}")
    run.log(f"run folder: {run.dir}  device: {device}  data: {bundle.name} train {len(bundle.train)} "
            f"val {len(bundle.val) if bundle.val is not None else 0} test {len(bundle.test)}  "
            f"features: {tuple(model.feature_shape)}")
    metrics = {"status": "training", "config": saved}
    write_json(run.metrics_path, metrics)

    from model_training import Trainer, TrainSettings
    from trained_run import load_weights

    settings = TrainSettings(num_epochs=int(cfg["num_epochs"]), learning_rate=float(cfg["learning_rate"]),
                             local_lr=cfg.get("local_lr"), batch_size=int(cfg["batch_size"]),
                             seed=int(cfg["random_seed"]), bf16=bool(cfg.get("bf16")),
                             milestones=str(cfg.get("milestones", "paper")),
                             channels_last=bool(cfg.get("channels_last")),
                             capture=str(cfg.get("capture", "auto")), select_on=cfg["select_on"])
    trainer = Trainer(model, bundle, defenses, device, run.dir, settings, progress=progress, log=run.log)
    if resuming:
        trainer.resume()
        run.log(f"resumed after epoch {trainer.epoch}")
    summary = trainer.fit(stop_after=stop_after)
    if trainer.epoch < settings.num_epochs:
        run.log(f"stopped after epoch {trainer.epoch}; continue with --resume")
        return metrics
    last_acc = trainer.evaluate(trainer.test_loader)
    load_weights(model, run.best_ckpt, device)
    best_acc = trainer.evaluate(trainer.test_loader)
    metrics["train"] = {"test_acc": best_acc, "test_acc_last": last_acc, "selected": "best",
                        "select_on": cfg["select_on"], **summary, "wall_time_s": summary["train_time_s"]}
    if model.extra_device_layer:  # PATROL: the attacked model's conv widths, {name: [built, now]}
        from architectures import channel_counts
        metrics["train"]["pruned_channels"] = {k: list(v) for k, v in channel_counts(model).items()}
    run.log(f"test accuracy {best_acc:.2f}% (best epoch {summary['best_epoch']} on {cfg['select_on']}), "
            f"last epoch {last_acc:.2f}%")
    if cfg.get("no_attack"):
        metrics["status"] = "finished"
        write_json(run.metrics_path, metrics)
        return metrics
    metrics["status"] = "attacking"
    write_json(run.metrics_path, metrics)
    return _attack(cfg, run, model, bundle, defenses, device, metrics, progress)


def attack_only(cfg: dict, run: Run, progress: bool) -> dict:
    """Re-attacks a finished run from its checkpoint with the attack flags given now."""
    from trained_run import load_trained_run, read_run_config

    if not run.config_path.exists() or not run.best_ckpt.exists():
        raise UserError(f"--attack_only needs a trained run in {run.dir} (config.json and checkpoints/best.pt); "
                        "check --folder/--filename or train it first")
    _, metrics = read_run_config(run.dir)
    if "train" not in metrics:
        raise UserError(f"{run.dir} has not finished training; finish it with --resume first")
    from attack_runner import ATTACK_KEYS

    overrides = {k: cfg.get(k) for k in (*ATTACK_KEYS, "device", "data_root", "capture", "bf16")}
    seed_everything(int(read_json(run.config_path)["random_seed"]))
    tr = load_trained_run(run.dir, overrides)
    return _attack(tr.cfg, run, tr.model, tr.bundle, tr.defenses, tr.device, metrics, progress)


def _attack(cfg, run: Run, model, bundle, defenses, device, metrics: dict, progress: bool) -> dict:
    from attack_runner import run_attacks

    return run_attacks(cfg, run.dir, model, bundle, defenses, device, metrics, progress=progress, log=run.log)


def main_guard(fn: Callable[[], int]) -> int:
    """User errors become one line on stderr and exit status 2; Ctrl-C keeps what was saved."""
    try:
        return fn() or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished epochs are saved; rerun the same command with --resume to continue",
              file=sys.stderr)
        return 130
