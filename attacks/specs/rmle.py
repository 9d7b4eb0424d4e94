"""rMLE's declaration (white-box optimisation from the mean image, attacks/optimization.py)."""
from __future__ import annotations

from attacks.registry import AttackSpec


def add_rmle_flags(group) -> None:
    group.add_argument("--rmle_steps", type=int, default=500,
                       help="rMLE Adam steps per image (default: %(default)s)")
    group.add_argument("--rmle_lr", type=float, default=0.05, help="rMLE Adam lr (default: %(default)s)")
    group.add_argument("--tv_weight", type=float, default=0.05,
                       help="rMLE total-variation weight (default: %(default)s)")
    group.add_argument("--rmle_max_images", type=int, default=None,
                       help="score rMLE on the first N eval images only (they span the classes); its cost grows "
                            "with every image (default: all)")


SPEC = AttackSpec(name="rmle", add_flags=add_rmle_flags, factory="attacks.optimization:from_settings", version=1,
                  ranges={"rmle_steps": (1, True), "rmle_lr": (0, False), "tv_weight": (0, True)},
                  unit="steps", summary="rmle (white-box optimisation)")
