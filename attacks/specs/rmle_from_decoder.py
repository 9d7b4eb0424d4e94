"""The decoder-then-likelihood attack's declaration (attacks/refine.py): white-box refinement of the
decoder's reconstruction under the known noise model. An adaptive attacker, beyond the paper's."""
from __future__ import annotations

import math

from attacks.registry import AttackSpec
from utils import UserError

LOCAL_DP_DELTA = 1e-4  # the published local-DP delta (defenses/obfuscation.py), for the Gaussian mechanism's std


def add_rfd_flags(group) -> None:
    group.add_argument("--rfd_steps", type=int, default=100,
                       help="rmle_from_decoder: Adam steps per image from the decoder's reconstruction "
                            "(default: %(default)s)")
    group.add_argument("--rfd_lr", type=float, default=0.01,
                       help="rmle_from_decoder: Adam lr on the image's logits (default: %(default)s)")
    group.add_argument("--rfd_prior_weights", default="1,10,100",
                       help="rmle_from_decoder: comma list of weights w of the prior w*||x - decoder(z)||^2 "
                            "(per image, summed over pixels); the attacker keeps the one, or the decoder's "
                            "output unrefined, with the lowest MSE on its own held-out images "
                            "(default: %(default)s)")
    group.add_argument("--rfd_tv_weight", type=float, default=0.1,
                       help="rmle_from_decoder: weight of the total variation (summed over neighbour pairs) "
                            "(default: %(default)s)")
    group.add_argument("--rfd_max_images", type=int, default=None,
                       help="score rmle_from_decoder on the first N eval images only (they span the classes) "
                            "(default: all)")


def prior_weights(spec) -> tuple:
    """The candidate prior weights of --rfd_prior_weights, checked: one line for a bad list."""
    try:
        out = tuple(float(w) for w in str(spec).split(",") if w.strip())
    except ValueError:
        out = ()
    if not out or any(not math.isfinite(w) or w < 0 for w in out):
        raise UserError(f"bad --rfd_prior_weights '{spec}'; use a comma list of numbers >= 0, e.g. 1,10,100")
    return out


def noise_model(cfg: dict, view: str) -> tuple:
    """("gaussian" | "laplace", scale) of the noise on the features the attacker observes, from the
    run's defence settings: Gaussian noise of std σ, plus local DP when the view includes it (the
    Laplace form when local_dp_laplace is deployed: its heavier tails dominate), of the mean of K sends
    for the repeated-query attacker. Scale 1 when nothing random is sent: the data term is then
    weighted as if σ were 1."""
    sigma = float(cfg.get("regularization_strength") or 0.0) \
        if str(cfg.get("regularization", "None")).lower() != "none" else 0.0
    at, eps = str(cfg.get("AT_regularization") or "None"), float(cfg.get("AT_regularization_strength") or 0.0)
    k = int(cfg.get("attack_queries") or 1)  # the mean of K sends: the noise's std shrinks by sqrt(K)
    if view == "sent" and eps > 0 and "local_dp" in at:
        if "local_dp_laplace" in at:
            if k == 1:
                return "laplace", 1.0 / eps
            sigma = math.hypot(sigma, math.sqrt(2.0) / eps)  # a mean of Laplace draws: near Gaussian, same std
        else:
            sigma = math.hypot(sigma, math.sqrt(2.0 * math.log(1.25 / LOCAL_DP_DELTA)) / eps)
    return "gaussian", sigma / math.sqrt(k) if sigma > 0 else 1.0


def check(cfg: dict) -> None:
    prior_weights(cfg.get("rfd_prior_weights") or "1")


SPEC = AttackSpec(
    name="rmle_from_decoder", add_flags=add_rfd_flags, factory="attacks.refine:from_settings", version=1,
    starts_from="decoder",
    ranges={"rfd_steps": (1, True), "rfd_lr": (0, False), "rfd_tv_weight": (0, True), "rfd_max_images": (1, True)},
    unit="steps", summary="rmle_from_decoder (white-box refinement of the decoder's output, adaptive)",
    adaptive=True, check=check)
