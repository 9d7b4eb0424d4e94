"""Every setting checked before any work starts, so a bad flag never costs a training run.

`validate(cfg)` runs before the run folder is touched; `check_attack_data(cfg, bundle)` right after
the data is loaded, before training, so that an attack that cannot run fails in seconds, not after
hours of training.
"""
from __future__ import annotations

import math

from attacks.flags import MODES
from lifecycle.flags import attack_lists, parse_list
from utils import UserError, check_device_name

# flag -> (lowest allowed value, whether the lowest value itself is allowed[, highest allowed value]).
# Any float flag must be finite whether it is listed or not; add a new numeric flag here to give it a
# range. Seeds go to torch's 64-bit generators with small offsets added (refresh count, defence
# streams), so they stop at 2**63 - 1, far from the 2**64 torch refuses.
RANGES = {
    "learning_rate": (0, False), "local_lr": (0, False), "regularization_strength": (0, True),
    "lambd": (0, True), "var_threshold": (0, False), "AT_regularization_strength": (0, True),
    "num_epochs": (1, True), "batch_size": (2, True), "attack_epochs": (1, True),
    "limit_train": (1, True), "limit_test": (1, True), "random_seed": (0, True, 2**63 - 1),
    "num_classes": (2, True),
    "gan_pretrain_epochs": (0, True), "gan_epochs": (1, True), "n_critic": (1, True), "mse_weight": (0, True),
    "lr_D": (0, False), "lr_G": (0, False), "checkpoint_every": (1, True),
    # 2: the generator is a decoder with BatchNorm, which cannot train on one image, and the attack
    # drops a last batch of one, so a batch size of 1 would train on one image per epoch.
    "gan_batch_size": (2, True),
    "checkpoint_seconds": (0, True),
    "rmle_steps": (1, True), "rmle_lr": (0, False), "tv_weight": (0, True),
}


def parse_modes(spec) -> list:
    return parse_list(spec, MODES, "--attack_modes")


def check_numbers(cfg: dict) -> None:
    for key, value in cfg.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{key} must be a finite number (got {value})")
    for key, (low, inclusive, *high) in RANGES.items():
        value = cfg.get(key)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            raise UserError(f"--{key} must be a number (got {value!r})")
        if value < low or (value == low and not inclusive):
            raise UserError(f"--{key} must be {'>=' if inclusive else '>'} {low} (got {value})")
        if high and value > high[0]:
            raise UserError(f"--{key} must be <= {high[0]} (got {value})")


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
    from attacks.decoder import attacker_splits

    for mode in parse_modes(cfg["attack_modes"]):
        fit, held, evals = attacker_splits(bundle, mode, int(cfg["random_seed"]),
                                         str(cfg.get("attacker_data") or "split"))
        if min(len(fit), len(held), len(evals)) == 0:
            raise UserError(f"attack mode {mode} gets {len(fit)} attacker, {len(held)} held-out and {len(evals)} "
                            "evaluation images from this data; use more images (--limit_train / --limit_test) "
                            "or other --attack_modes")
