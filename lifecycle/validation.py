"""Every setting checked before any work starts, so a bad flag never costs a training run.

`validate(cfg)` runs before the run folder is touched; `check_attack_data(cfg, bundle)` right after
the data is loaded, before training, so that an attack that cannot run fails in seconds, not after
hours of training.
"""
from __future__ import annotations

from attacks.flags import MODES
from lifecycle.flags import attack_lists, check_numbers, parse_list
from utils import UserError, check_device_name


def parse_modes(spec) -> list:
    return parse_list(spec, MODES, "--attack_modes")


def validate(cfg: dict) -> None:
    from utils import milestones

    check_numbers(cfg)
    check_device_name(cfg.get("device", "auto"))
    milestones(int(cfg["num_epochs"]), cfg.get("milestones", "paper"))
    if int(cfg["log_entropy"]) not in (0, 1):
        raise UserError("--log_entropy is 1 (log-variance surrogate, the paper's) or 0 (plain variance)")
    if cfg.get("select_on") not in ("val", "test"):
        raise UserError("--select_on must be 'val' (held-out 10% of train) or 'test' (the paper code)")
    parse_modes(cfg["attack_modes"])  # given empty: refused, not replaced by the default
    attack_lists(cfg)
    if str(cfg.get("capture", "auto")) not in ("auto", "on", "off"):
        raise UserError(f"bad --capture '{cfg.get('capture')}'; choose auto, on or off")
    from defenses.at_options import at_options

    at_options(cfg, warn=False)  # a bad --AT_regularization fails before any data is loaded
    if not -1.0 <= float(cfg.get("ssim_threshold", 0.5)) <= 1.0:
        raise UserError(f"--ssim_threshold is an SSIM level in [-1, 1] (got {cfg['ssim_threshold']})")
    if not cfg.get("no_attack"):
        from architectures.decoders import parse_decoder_name

        parse_decoder_name(str(cfg["gan_AE_type"]))


def check_attack_data(cfg: dict, bundle) -> None:
    """Each requested attack mode must find attacker, held-out and evaluation images in this data."""
    if cfg.get("no_attack"):
        return
    from attacks.aux_data import attacker_images

    for mode in parse_modes(cfg["attack_modes"]):
        fit, held, evals = attacker_images(bundle, mode, int(cfg["random_seed"]), cfg.get("attacker_data"),
                                           cfg.get("attack_eval_classes"), cfg.get("data_root"))
        if min(len(fit), len(held), len(evals)) == 0:
            raise UserError(f"attack mode {mode} gets {len(fit)} attacker, {len(held)} held-out and {len(evals)} "
                            "evaluation images from this data; use more images (--limit_train / --limit_test) "
                            "or other --attack_modes")
