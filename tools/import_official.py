"""Import the authors' published CEM checkpoints into a run folder of ours.

  python -m tools.import_official CKPT_DIR --dataset cifar10 --data_root ./data \\
      [--arch vgg11_bn_sgm --cutlayer 4 --bottleneck_option noRELU_C8S1] [--epoch best] \\
      [--regularization_strength SIGMA] [--folder runs --filename NAME]

CKPT_DIR holds checkpoint_{f,cloud,classifier}_<epoch>.tar as the published training code saves them.
The result, <folder>/<filename>/ with config.json, checkpoints/best.pt, metrics.json (the imported
model's test accuracy) and import_map.json (which published key filled which of ours), is attacked
like any trained run: `python main_MIA.py --attack_only --folder F --filename N`, `run_gan_attack.py`.
Every published tensor must fill exactly one of ours (same position, kind and shape) and every
tensor of ours must be filled: a mismatch is an error, never a partly random model.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Tuple

import torch

from utils import UserError, resolve_device, seed_everything, torch_save_atomic, write_json

from .official_ckpt import detect_variant, find_published_files, read_published_file
from .official_layout import PARTS, load_published, map_part

# The paper's model per dataset (README of official_ckpt_layouts): arch, cut layer, bottleneck.
PRESETS = {"tinyimagenet": ("resnet20", 5, "noRELU_C8S1")}
DEFAULT_PRESET = ("vgg11_bn_sgm", 4, "noRELU_C8S1")
# Settings the published code writes into its run folder's name, e.g.
# pretrain_False_lambd_16_noise_0.025_epoch_240_bottleneck_noRELU_C8S1_log_1_ATstrength_0.3_lr_0.05_varthres_0.125
_NAME_FIELDS = {"lambd": r"(?:^|_)lambd_([0-9.eE+-]+)", "regularization_strength": r"(?:^|_)noise_([0-9.eE+-]+)",
                "num_epochs": r"(?:^|_)epoch_(\d+)", "bottleneck_option": r"(?:^|_)bottleneck_(.+?)_log_",
                "learning_rate": r"(?:^|_)lr_([0-9.eE+-]+)", "var_threshold": r"(?:^|_)varthres_([0-9.eE+-]+)",
                "AT_regularization_strength": r"(?:^|_)ATstrength_([0-9.eE+-]+)"}


def settings_from_name(name: str) -> dict:
    out = {}
    for key, rx in _NAME_FIELDS.items():
        m = re.search(rx, name)
        if m:
            out[key] = m.group(1) if key == "bottleneck_option" else float(m.group(1))
    if "num_epochs" in out:
        out["num_epochs"] = int(out["num_epochs"])
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def patrol_options(ckpt_dir: Path, from_name: dict) -> Tuple[str, float]:
    """--AT_regularization / strength recording a PATROL run: pruningE, E from the published folder
    names (the paper code's default 140 when absent); only the pruning part changes the model."""
    m = re.search(r"pruning(\d+)", "/".join(Path(ckpt_dir).resolve().parts[-3:]))
    strength = from_name.get("AT_regularization_strength") or 1.0
    return f"pruning{int(m.group(1)) if m else 140}", float(strength)


def _take_published_shapes(model, encoder_file) -> None:
    """PATROL pruned the published encoder: give ours the published shapes (only ever smaller)."""
    from architectures.restore import reshape_to

    pairs = map_part(encoder_file, model.encoder.state_dict(), "checkpoint_f", exact_shapes=False)
    try:
        reshape_to(model, {f"encoder.{o}": list(encoder_file[t].shape) for t, o in pairs})
    except UserError as e:
        raise UserError(f"checkpoint_f: {e}; check --arch/--cutlayer/--bottleneck_option") from None


def build_config(args, from_name: dict, variant: str = "plain") -> dict:
    """A config.json like main_MIA.py's, for the published model's settings."""
    from lifecycle.flags import build_parser

    cfg = vars(build_parser().parse_args([]))
    cfg.pop("no_progress", None)
    arch, cut, bottleneck = PRESETS.get(args.dataset, DEFAULT_PRESET)
    sigma = args.regularization_strength if args.regularization_strength is not None \
        else from_name.get("regularization_strength")
    if sigma is None:
        raise UserError(f"cannot tell the noise σ of '{args.ckpt_dir}' from its name (no 'noise_<σ>'); pass "
                        "--regularization_strength (the σ the model was trained and is deployed with; 0 for none)")
    cfg.update({k: v for k, v in from_name.items() if k in ("num_epochs", "learning_rate", "var_threshold")})
    cfg.update(dataset=args.dataset, data_root=args.data_root, folder=args.folder, device=args.device,
               arch=args.arch or arch, cutlayer=args.cutlayer if args.cutlayer is not None else cut,
               bottleneck_option=args.bottleneck_option or from_name.get("bottleneck_option") or bottleneck,
               regularization="Gaussian_kl" if sigma > 0 else "None", regularization_strength=float(sigma),
               lambd=float(args.lambd if args.lambd is not None else from_name.get("lambd", 0.0)),
               select_on="test",  # the published models trained on the whole training set
               limit_test=args.limit_test, AT_regularization="None", AT_regularization_strength=0.0)
    if variant == "PATROL":  # its extra device layer and pruned shapes are part of the model
        cfg["AT_regularization"], cfg["AT_regularization_strength"] = patrol_options(args.ckpt_dir, from_name)
    if variant == "SCA":  # its sparse-coding layer is part of the encoder; the strength only switches it on
        cfg["AT_regularization"] = "SCA_new"
        cfg["AT_regularization_strength"] = float(from_name.get("AT_regularization_strength") or 0.3)
    cfg["filename"] = args.filename or _safe(f"official_{args.dataset}_{Path(args.ckpt_dir).resolve().name}"
                                             + ("" if args.epoch == "best" else f"_epoch{args.epoch}"))
    return cfg


def import_official(args, progress: bool = True) -> dict:
    """Reads, checks and converts one published run; returns the metrics.json written."""
    from architectures import build_split_model
    from architectures.restore import architecture_record
    from datasets import load_dataset
    from defenses import build_defenses, device_tail
    from lifecycle.run_folder import Run
    from model_training import Trainer, TrainSettings

    paths = find_published_files(args.ckpt_dir, args.epoch)
    files, kinds = {}, {}
    for stem, path in paths.items():
        kinds[stem], files[stem] = read_published_file(path)
    variant, _ = detect_variant(kinds["checkpoint_f"], files["checkpoint_f"])
    cfg = build_config(args, settings_from_name(Path(args.ckpt_dir).resolve().name), variant)
    run_dir = Path(cfg["folder"]) / cfg["filename"]
    if run_dir.exists() and any(run_dir.iterdir()) and not args.force:
        raise UserError(f"{run_dir} already exists; pass --force to replace it or another --filename")
    device = resolve_device(cfg["device"])
    seed_everything(int(cfg["random_seed"]))
    bundle = load_dataset(cfg["dataset"], cfg["data_root"], select_on="test", seed=cfg["random_seed"],
                          limit_test=cfg.get("limit_test"))
    model = build_split_model(cfg["arch"], int(cfg["cutlayer"]), bundle.num_classes, bundle.image_size,
                              cfg["bottleneck_option"], extra_device_layer=variant == "PATROL",
                              device_tail=device_tail(cfg))
    if variant == "PATROL":
        _take_published_shapes(model, files["checkpoint_f"])
    mapping = load_published(model, files)
    defenses = build_defenses(cfg, bundle.num_classes, len(bundle.train))

    run = Run(cfg["folder"], cfg["filename"])
    run.open()  # creates, locks and proves the folder writable, as for a trained run
    try:
        settings = TrainSettings(num_epochs=int(cfg["num_epochs"]), seed=int(cfg["random_seed"]), capture="off",
                                 channels_last=False)
        trainer = Trainer(model, bundle, defenses, device, run_dir, settings, progress=progress, log=print)
        acc = trainer.evaluate(trainer.test_loader)
        clean = Trainer(model, bundle, build_defenses({**cfg, "regularization": "None", "regularization_strength": 0,
                                                       "lambd": 0}, bundle.num_classes, len(bundle.train)),
                        device, run_dir, settings, progress=False, log=print).evaluate(trainer.test_loader)

        source = {"ckpt_dir": str(Path(args.ckpt_dir).resolve()), "epoch": args.epoch, "variant": variant,
                  "files": {p.name: _sha256(p) for p in paths.values()}}
        saved = dict(cfg, device=str(device), torch=torch.__version__, num_classes=bundle.num_classes,
                     image_size=bundle.image_size, n_train=len(bundle.train), n_val=0, n_test=len(bundle.test),
                     feature_shape=list(model.feature_shape), imported_from=source)
        epoch = int(args.epoch) if str(args.epoch).isdigit() else int(cfg["num_epochs"])
        torch_save_atomic({"epoch": epoch, "model": model.state_dict(), "architecture": architecture_record(model),
                           "imported_from": source},
                          run.best_ckpt)
        write_json(run_dir / "import_map.json", {"source": source, "mapping": {
            stem: [{"published": t, "ours": f"{attr}.{o}"} for t, o in mapping[stem]] for stem, attr in PARTS}})
        write_json(run.config_path, saved)
        metrics = {"status": "finished", "config": saved, "imported_from": source,
                   "train": {"test_acc": acc, "test_acc_clean": clean,
                             "selected": f"published checkpoint ({args.epoch})", "select_on": "published",
                             "best_epoch": epoch}}
        write_json(run.metrics_path, metrics)
        print(f"imported {variant} run {args.ckpt_dir} ({sum(len(v) for v in mapping.values())} tensors, strict) into "
              f"{run_dir}\ntest accuracy {acc:.2f}% as deployed (σ = {cfg['regularization_strength']:g}), "
              f"{clean:.2f}% without noise, on {len(bundle.test)} test images\n"
              f"attack it with: python main_MIA.py --attack_only --folder {cfg['folder']} --filename {cfg['filename']}")
        return metrics
    except BaseException:
        run.abandon()  # removes the folders it created, if still empty
        raise
    finally:
        run.close()


def build_parser() -> argparse.ArgumentParser:
    from lifecycle.flags import OneLineParser

    p = OneLineParser(prog="python -m tools.import_official", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt_dir", help="folder holding checkpoint_{f,cloud,classifier}_<epoch>.tar")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, facescrub, tinyimagenet, ...")
    p.add_argument("--data_root", default="./data", help="folder holding the dataset (default: %(default)s)")
    p.add_argument("--arch", default=None, help="default: resnet20 for tinyimagenet, else vgg11_bn_sgm")
    p.add_argument("--cutlayer", type=int, default=None, help="default: 5 for tinyimagenet, else 4")
    p.add_argument("--bottleneck_option", default=None,
                   help="default: from the folder name (bottleneck_<opt>_log_), else noRELU_C8S1")
    p.add_argument("--epoch", default="best", help="which checkpoint_*_<epoch>.tar: best, 50, 100, ... (default: best)")
    p.add_argument("--regularization_strength", type=float, default=None,
                   help="noise σ the model is deployed with; default: from the folder name (noise_<σ>)")
    p.add_argument("--lambd", type=float, default=None, help="CEM λ it was trained with (recorded only); "
                   "default: from the folder name (lambd_<λ>), else 0")
    p.add_argument("--limit_test", type=int, default=None, help="check accuracy on a seeded subset of N test images")
    p.add_argument("--folder", default="runs", help="parent folder of run folders (default: %(default)s)")
    p.add_argument("--filename", default=None, help="run folder name (default: official_<dataset>_<ckpt folder name>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing run folder of that name")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return p


def main(argv=None) -> int:
    from lifecycle.experiment import main_guard

    args = build_parser().parse_args(argv)
    return main_guard(lambda: import_official(args, progress=not args.no_progress) and 0)


if __name__ == "__main__":
    sys.exit(main())
