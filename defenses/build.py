"""The defence stack of a run, built from its config (DESIGN.md §5)."""
from __future__ import annotations

import math
import warnings

from defenses import adversarial, nopeek, obfuscation, pruning, sca  # noqa: F401 (register their --AT_regularization builders)
from defenses.at_options import at_options
from defenses.base import DefenseStack
from defenses.cem import CEM
from defenses.noise import GaussianNoise
from defenses.registry import AT_BUILDERS, BuildContext
from utils import UserError


def extra_device_layer(cfg: dict) -> bool:
    """PATROL's extra device layer is part of the model from epoch 1 whenever pruningE is on."""
    return at_options(cfg, warn=False).pruning_epoch is not None


def cem_clusters(arch: str) -> int:
    """K per class as the paper code: 5 when the arch name contains 'sgm', else 15 (so `resnet20`,
    despite its Sigmoid encoder, gets 15)."""
    return 5 if "sgm" in arch else 15


def build_defenses(cfg: dict, num_classes: int, n_train: int, **context) -> DefenseStack:
    """Builds the defence stack from a run config (the argparse namespace as a dict).

    Order: Gaussian noise, then the --AT_regularization options in pipeline order (local DP, dropout,
    top-k obfuscate after the noise, as published; nopeek / gan_adv / pruning only add encoder losses
    or act on the trainer), then CEM. `context` fills `BuildContext` (feature_shape, image_size, mean,
    std). A config recorded before `--AT_version` existed is rebuilt with the meaning its options had
    then (defenses/at_options.py), so an old run is attacked through what it actually sent.
    """
    reg = str(cfg.get("regularization") or "None")
    sigma = float(cfg.get("regularization_strength") or 0.0)
    lambd = float(cfg.get("lambd") or 0.0)
    if sigma < 0:
        raise UserError(f"--regularization_strength is a noise standard deviation and must be >= 0 (got {sigma})")
    if lambd < 0:
        raise UserError(f"--lambd must be >= 0 (got {lambd})")
    if float(cfg.get("var_threshold", 0.125)) <= 0:
        raise UserError("--var_threshold must be > 0 (the paper uses 0.125; 0.0625 for TinyImageNet)")
    at = at_options(cfg)

    stack = []
    if reg.lower().startswith("gaussian"):
        stack.append(GaussianNoise(sigma))
    elif reg.lower() in ("none", ""):
        if sigma > 0:
            raise UserError("--regularization_strength > 0 needs --regularization Gaussian_kl (noise is off with None)")
        sigma = 0.0
    else:
        raise UserError(f"unknown --regularization '{reg}'; choose Gaussian_kl (noise + optional CEM) or None")

    ctx = BuildContext(cfg=cfg, num_classes=num_classes, n_train=n_train, sigma=sigma, **context)
    for name in at.enabled():
        stack.append(AT_BUILDERS[name](at, ctx))

    if lambd > 0:
        if sigma == 0:
            warnings.warn("CEM with sigma = 0: its variance threshold log(tau*sigma^2 + gamma) then depends on "
                          "gamma only; allowed, but the paper always pairs CEM with noise", stacklevel=2)
        coupling = cfg.get("cem_lr_coupling", "paper")
        if coupling not in ("paper", "none"):
            raise UserError(f"--cem_lr_coupling must be 'paper' or 'none' (got '{coupling}')")
        kmeans = str(cfg.get("cem_kmeans") or "ours")
        if kmeans == "published":  # its alpha counts the training loader's batches times the batch size
            n_train = math.ceil(n_train / int(cfg["batch_size"])) * int(cfg["batch_size"])
        stack.append(CEM(lambd=lambd, sigma=sigma, var_threshold=float(cfg.get("var_threshold", 0.125)),
                         num_classes=num_classes, n_train=n_train, k=cem_clusters(cfg["arch"]),
                         log_entropy=bool(int(cfg.get("log_entropy", 1))), lr_coupling=coupling,
                         seed=int(cfg.get("random_seed", 0)), compile=bool(cfg.get("compile", True)),
                         refresh_aug=bool(int(cfg.get("cem_refresh_aug", 1))),
                         stats=str(cfg.get("cem_stats") or "own"), kmeans=kmeans))
    return DefenseStack(stack)
