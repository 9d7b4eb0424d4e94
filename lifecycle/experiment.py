"""One configuration, start to finish: run folder, training, attacks, results files.

`main_MIA.py` only parses flags and calls `run_experiment`; tests call it directly.
"""
from __future__ import annotations

import shutil
import sys
import warnings
from typing import Callable, Optional

import torch

from lifecycle.data_files import npz_paths, record
from lifecycle.flags import DEFAULT_DATA_ROOT, check_recorded
from lifecycle.identity import attack_keys, default_filename, identity
from lifecycle.results import todo
from lifecycle.run_folder import Run
from lifecycle.validation import check_attack_data, validate
from utils import (
    OutOfSpace,
    RunFailed,
    Terminated,
    UserError,
    disk_full,
    one_line,
    resolve_device,
    seed_everything,
    write_json,
)


def _load_everything(cfg: dict, device):
    """Data, model and defences for a config; every user mistake becomes a UserError."""
    from architectures import build_split_model
    from datasets import load_dataset
    from defenses import build_defenses, device_tail, extra_device_layer

    bundle = load_dataset(cfg["dataset"], cfg["data_root"], select_on=cfg["select_on"], seed=cfg["random_seed"],
                          limit_train=cfg.get("limit_train"), limit_test=cfg.get("limit_test"),
                          num_classes=cfg.get("num_classes"))
    model = build_split_model(cfg["arch"], int(cfg["cutlayer"]), bundle.num_classes, bundle.image_size,
                              cfg["bottleneck_option"], extra_device_layer=extra_device_layer(cfg),
                              device_tail=device_tail(cfg), init=str(cfg.get("init") or "ours"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defenses = build_defenses(cfg, bundle.num_classes, len(bundle.train), feature_shape=tuple(model.feature_shape),
                                  image_size=bundle.image_size, mean=bundle.mean, std=bundle.std)
    return bundle, model.to(device), defenses, [str(w.message) for w in caught]


def run_experiment(cfg: dict, progress: bool = True, stop_after: Optional[int] = None) -> dict:
    """Trains (or resumes) one configuration, then attacks it; returns metrics.json's content.

    The run folder is locked while this works in it; a start that fails before writing anything
    leaves no folder behind.
    """
    cfg = dict(cfg)
    validate(cfg)
    if not cfg.get("filename"):
        cfg["filename"] = default_filename(cfg)
    run = Run(cfg["folder"], cfg["filename"])
    if cfg.get("attack_only"):
        return attack_only(cfg, run, progress)
    run.open()
    try:
        return _train_and_attack(cfg, run, progress, stop_after)
    except BaseException:
        run.abandon()
        raise
    finally:
        run.close()


def _clear(run: Run) -> None:
    """--force: empty a run folder (only one that holds a run's files, never an arbitrary folder)."""
    if not (run.config_path.exists() or run.metrics_path.exists() or run.last_ckpt.exists()):
        return
    for p in run.dir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _train_and_attack(cfg: dict, run: Run, progress: bool, stop_after: Optional[int]) -> dict:
    state, why = run.plan(cfg)
    if not cfg.get("force"):
        if state == "finished":
            print(f"already finished: {run.dir} (use --force to redo it, --attack_only to re-attack it)")
            return run.metrics()
        if state == "incomplete":
            return _attack_trained(cfg, run, progress)  # same settings, modes missing (e.g. killed mid-attack)
        if state in ("conflict", "attack"):
            raise UserError(why)
        if state == "resume" and not cfg.get("resume"):
            raise UserError(f"{run.dir} holds an unfinished run; pass --resume to continue it or --force to start over")
    resuming = state == "resume" and not cfg.get("force")
    cfg["data_root"] = cfg.get("data_root") or DEFAULT_DATA_ROOT
    device = resolve_device(cfg.get("device", "auto"))
    seed_everything(int(cfg["random_seed"]))
    bundle, model, defenses, notes = _load_everything(cfg, device)
    check_attack_data(cfg, bundle)  # an attack that cannot run fails now, not after training

    if cfg.get("force"):
        _clear(run)
    if not resuming:  # rows of an epoch killed before its first checkpoint have no checkpoint behind them
        run.train_log.unlink(missing_ok=True)
    saved = {k: v for k, v in cfg.items() if k not in ("force", "resume", "attack_only")}
    saved.update(device=str(device), torch=torch.__version__, num_classes=bundle.num_classes,
                 image_size=bundle.image_size, n_train=len(bundle.train),
                 n_val=len(bundle.val) if bundle.val is not None else 0, n_test=len(bundle.test),
                 feature_shape=list(model.feature_shape), identity=identity(cfg))
    if npz_paths(cfg):  # the files' contents, so that new contents at the same path are no finished run
        saved["data_files"] = record(cfg)
    write_json(run.config_path, saved)
    for n in notes:
        run.log(f"note: {n}")
    run.log(f"run folder: {run.dir}  device: {device}  data: {bundle.name} train {len(bundle.train)} "
            f"val {len(bundle.val) if bundle.val is not None else 0} test {len(bundle.test)}  "
            f"features: {tuple(model.feature_shape)}")
    metrics = {"status": "training", "identity": saved["identity"], "config": saved}
    write_json(run.metrics_path, metrics)
    with _recording(run, metrics):
        return _train(cfg, run, model, bundle, defenses, device, metrics, progress, resuming, stop_after)


class _recording:
    """Records an interruption or a failure in metrics.json before it propagates."""

    def __init__(self, run: Run, metrics: dict):
        self.run, self.metrics = run, metrics

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is None:
            return False
        # Once training has finished, a stop only cuts an attack short: the run stays `finished`, so it
        # can be attacked (run_gan_attack.py) and a rerun adds the attack results still missing.
        stopped = "finished" if "train" in self.metrics else "interrupted"
        if issubclass(kind, KeyboardInterrupt):
            self.metrics["status"] = stopped
        elif kind is RunFailed:
            self.metrics.update(status="failed", error=str(err))
            self.run.log(f"failed: {err}")
        elif kind is OutOfSpace:
            self.metrics["status"] = stopped
            if stopped == "interrupted":  # after training it would outlive the results a rerun adds
                self.metrics["error"] = str(err)
        elif issubclass(kind, Exception) and "train" not in self.metrics:
            # a bug: its traceback follows, but the status must not stay `training` for ever
            first = str(err).splitlines()[0][:200] if str(err) else ""
            self.metrics.update(status="failed", error=f"{kind.__name__}: {first}")
        else:
            return False
        try:
            write_json(self.run.metrics_path, self.metrics)
        except OutOfSpace:
            pass  # the original error says what happened; metrics.json keeps its previous state
        return False


def _train(cfg, run: Run, model, bundle, defenses, device, metrics, progress, resuming, stop_after) -> dict:
    from lifecycle.trained_run import load_weights
    from model_training import Trainer, TrainSettings

    settings = TrainSettings(num_epochs=int(cfg["num_epochs"]), learning_rate=float(cfg["learning_rate"]),
                             local_lr=cfg.get("local_lr"), batch_size=int(cfg["batch_size"]),
                             seed=int(cfg["random_seed"]), bf16=bool(cfg.get("bf16")),
                             milestones=str(cfg.get("milestones", "paper")),
                             channels_last=bool(cfg.get("channels_last")),
                             capture=str(cfg.get("capture", "auto")), select_on=cfg["select_on"],
                             checkpoint_seconds=cfg.get("checkpoint_seconds"))
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
    _leakage(cfg, run, model, bundle, defenses, device, metrics, progress)
    if cfg.get("no_attack"):
        metrics["status"] = "finished"
        write_json(run.metrics_path, metrics)
        return metrics
    metrics["status"] = "attacking"
    write_json(run.metrics_path, metrics)
    # Attack the model as a reload from the folder holds it (--attack_only, a rerun after a kill): the
    # trainer's channels_last weights give convolutions that round differently, and an attack resumed
    # after an interruption must equal the uninterrupted one bit for bit.
    model.to(memory_format=torch.contiguous_format)
    return _attack(cfg, run, model, bundle, defenses, device, metrics, progress)


def attack_only(cfg: dict, run: Run, progress: bool) -> dict:
    """Attacks a trained run from its checkpoint with the attack flags given now (training flags are
    taken from the run). Each attack's results are keyed by its own settings and the attacker's view
    (lifecycle/results.py): an attack's first settings own `attack.<attack>`, others go beside, never over."""
    if run.dir.exists() and not run.dir.is_dir():
        raise UserError(f"'{run.dir}' is a file, not a run folder; pass the --folder and --filename of a trained run")
    if not run.config_path.exists() or not run.best_ckpt.exists():
        raise UserError(f"--attack_only needs a trained run in {run.dir} (config.json and checkpoints/best.pt); "
                        "check --folder/--filename or train it first")
    run.open()
    try:
        return _attack_trained(cfg, run, progress)
    finally:
        run.close()


def _attack_trained(cfg: dict, run: Run, progress: bool) -> dict:
    saved, metrics = run.config(), run.metrics()
    check_recorded(saved, run.config_path)
    if "train" not in metrics:
        raise UserError(f"{run.dir} has not finished training; finish it with --resume first")
    merged = dict(saved)
    given_now = attack_keys() | {"device", "data_root", "capture"}  # the rest comes from the run
    for k in given_now:
        if k in cfg and not (k == "data_root" and cfg[k] is None):  # no --data_root: the run's own
            merged[k] = cfg[k]
    merged.pop("no_attack", None)
    force = bool(cfg.get("force"))
    from lifecycle.leakage import needs_leakage

    if not todo(metrics, merged, force) and not needs_leakage(metrics, merged):
        if metrics.get("status") != "finished":  # killed between the last result and the status
            metrics["status"] = "finished"
            write_json(run.metrics_path, metrics)
        print(f"already finished: {run.dir} has these attack results (use --force to redo them)")
        return metrics
    from lifecycle.trained_run import load_trained_run

    seed_everything(int(merged["random_seed"]))
    tr = load_trained_run(run.dir, {k: merged.get(k) for k in given_now})
    check_attack_data(tr.cfg, tr.bundle)
    _leakage(tr.cfg, run, tr.model, tr.bundle, tr.defenses, tr.device, metrics, progress, force)
    return _attack(tr.cfg, run, tr.model, tr.bundle, tr.defenses, tr.device, metrics, progress, force)


def _leakage(cfg, run: Run, model, bundle, defenses, device, metrics: dict, progress: bool, force: bool = False):
    """The attack-independent leakage figures (lifecycle/leakage.py), when the run lacks them."""
    from lifecycle.leakage import record_leakage

    record_leakage(cfg, run.dir, model, bundle, defenses, device, metrics, progress=progress, log=run.log,
                   force=force)


def _attack(cfg, run: Run, model, bundle, defenses, device, metrics: dict, progress: bool,
            force: bool = False) -> dict:
    from lifecycle.attack_runner import run_attacks

    try:
        return run_attacks(cfg, run.dir, model, bundle, defenses, device, metrics, progress=progress, log=run.log,
                           force=force)
    except KeyboardInterrupt as e:
        e.stage = "attack"  # main_guard's message: the trained model is safe, only attack results are missing
        raise


INTERRUPTED = {
    "training": "interrupted: training is saved up to its last checkpoint (every epoch; on CUDA every "
                "--checkpoint_seconds); rerun the same command with --resume to continue",
    "attack": "interrupted: the attack was stopped; the trained model and the attack results already written "
              "are kept (a GAN attack also its last checkpoint, every --checkpoint_every epochs); rerun the same "
              "command to resume it and add the missing results",
}


def main_guard(fn: Callable[[], int], stage: str = "training") -> int:
    """User errors become one line on stderr and exit status 2; Ctrl-C keeps what was saved and exits
    130, SIGTERM (utils.stop_on_sigterm) 143. `stage` is what an interruption stopped, unless the
    exception says otherwise (an attack after training)."""
    try:
        return fn() or 0
    # one_line: messages name folders and recorded strings, whose newlines or terminal escapes would forge
    # another `error:` line or reach the user's terminal
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except (RunFailed, OutOfSpace) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk under a log or CSV append, which are not written atomically
        if not disk_full(e):
            raise
        print(f"error: {OutOfSpace.at(e.filename)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(INTERRUPTED[getattr(e, "stage", stage)], file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
