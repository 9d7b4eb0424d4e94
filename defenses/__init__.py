"""Defences on the sent features, found by their CLI names (DESIGN.md §5)."""
from __future__ import annotations

import warnings

from defenses.base import Defense, DefenseStack
from defenses.cem import CEM, cem_batch_loss, fit_class_kmeans, lambda_eff
from defenses.noise import GaussianNoise
from utils import UserError

__all__ = ["Defense", "DefenseStack", "CEM", "GaussianNoise", "build_defenses", "cem_batch_loss",
           "fit_class_kmeans", "lambda_eff", "cem_clusters"]


def cem_clusters(arch: str) -> int:
    """K per class: 5 for Sigmoid encoders (bounded features), 15 otherwise (paper setting)."""
    return 5 if (arch.endswith("_sgm") or arch == "resnet20") else 15


def build_defenses(cfg: dict, num_classes: int, n_train: int) -> DefenseStack:
    """Builds the defence stack from a run config (the argparse namespace as a dict)."""
    reg = str(cfg.get("regularization") or "None")
    sigma = float(cfg.get("regularization_strength") or 0.0)
    lambd = float(cfg.get("lambd") or 0.0)
    if sigma < 0:
        raise UserError(f"--regularization_strength is a noise standard deviation and must be >= 0 (got {sigma})")
    if lambd < 0:
        raise UserError(f"--lambd must be >= 0 (got {lambd})")
    if float(cfg.get("var_threshold", 0.125)) <= 0:
        raise UserError("--var_threshold must be > 0 (the paper uses 0.125; 0.0625 for TinyImageNet)")
    at = str(cfg.get("AT_regularization") or "None")
    if at.lower() not in ("none", ""):
        raise UserError(f"--AT_regularization '{at}' is not available in this version yet; use None")

    stack = []
    if reg.lower().startswith("gaussian"):
        stack.append(GaussianNoise(sigma))
    elif reg.lower() in ("none", ""):
        if sigma > 0:
            raise UserError("--regularization_strength > 0 needs --regularization Gaussian_kl (noise is off with None)")
        sigma = 0.0
    else:
        raise UserError(f"unknown --regularization '{reg}'; choose Gaussian_kl (noise + optional CEM) or None")

    if lambd > 0:
        if sigma == 0:
            warnings.warn("CEM with sigma = 0: its variance threshold log(tau*sigma^2 + gamma) then depends on "
                          "gamma only; allowed, but the paper always pairs CEM with noise", stacklevel=2)
        coupling = cfg.get("cem_lr_coupling", "paper")
        if coupling not in ("paper", "none"):
            raise UserError(f"--cem_lr_coupling must be 'paper' or 'none' (got '{coupling}')")
        stack.append(CEM(lambd=lambd, sigma=sigma, var_threshold=float(cfg.get("var_threshold", 0.125)),
                         num_classes=num_classes, n_train=n_train, k=cem_clusters(cfg["arch"]),
                         log_entropy=bool(int(cfg.get("log_entropy", 1))), lr_coupling=coupling,
                         seed=int(cfg.get("random_seed", 0)), compile=bool(cfg.get("compile", True))))
    return DefenseStack(stack)
