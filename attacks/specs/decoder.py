"""The decoder attack's declaration (training-based inversion, attacks/decoder.py)."""
from __future__ import annotations

from attacks.registry import AttackSpec


def add_decoder_flags(group) -> None:
    group.add_argument("--attack_epochs", type=int, default=50, help="decoder attack epochs (default: %(default)s)")
    group.add_argument("--gan_AE_type", default="res_normN8C64",
                       help="attack decoder: res_normN{blocks}C{channels} (the published decoder), "
                            "res_normN{N}C{C}_v0 (this project's earlier one) or conv_normN{N}C{C} "
                            "(default: %(default)s)")
    group.add_argument("--attacker_data", default="split", choices=["split", "published"],
                       help="attacker's images: split (train_time: the defender's training split, infer_time: "
                            "90%% of the test set, 10%% of either held out to pick the best decoder) or published "
                            "(train_time: every training image, validation split included; infer_time: all 90%%; "
                            "no held-out images) (default: %(default)s)")
    group.add_argument("--decoder_heldout_bn", default="eval", choices=["eval", "train"],
                       help="decoder mode in the per-epoch held-out pass: eval, or train as published (batch "
                            "statistics, and the held-out images update BatchNorm's running statistics) "
                            "(default: %(default)s)")


# Decoder 2: res_normN{N}C{C} became the published decoder.
SPEC = AttackSpec(name="decoder", add_flags=add_decoder_flags, factory="attacks.decoder:from_settings", version=2,
                  ranges={"attack_epochs": (1, True)}, summary="decoder (training-based)")
