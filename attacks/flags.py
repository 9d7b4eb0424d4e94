"""The attacks' names, modes and command-line flags, declared here by the attacks themselves (DESIGN.md §8).

Standard library only: the run lifecycle's parser is built once per configuration when a sweep is
planned, which must not import torch.
"""
from __future__ import annotations

import argparse

ATTACKS = ("decoder", "gan", "rmle")  # in running order: the GAN generator starts from the decoder's weights
MODES = ("train_time", "infer_time")
# What the attacker's queries go through (DESIGN.md §5): `sent` = every defence of the pipeline, as the
# device sends it; `noise_only` = the Gaussian noise alone, the published attacker's view.
VIEWS = ("sent", "noise_only")
# Bump an attack's number when its results change meaning (another network design, a fixed bug):
# results recorded under an older number then count as missing and are recomputed beside the old ones,
# without retraining. Folders written before these numbers existed read as 1. Decoder and GAN 2:
# res_normN{N}C{C} became the published decoder (and generator) and DGWGAN32 the published critic.
RESULTS_VERSION = {"decoder": 2, "gan": 2, "rmle": 1}


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


def add_gan_flags(group) -> None:
    group.add_argument("--gan_epochs", type=int, default=None,
                       help="GAN attack epochs (default: 150; 80 for tinyimagenet, as in the paper)")
    group.add_argument("--n_critic", type=int, default=10,
                       help="critic steps per generator step (default: %(default)s)")
    group.add_argument("--mse_weight", type=float, default=1500.0,
                       help="weight of the pixel MSE in the generator loss (default: %(default)s)")
    group.add_argument("--lr_D", type=float, default=5e-3, help="critic Adam lr (default: %(default)s)")
    group.add_argument("--lr_G", type=float, default=5e-4, help="generator Adam lr (default: %(default)s)")
    group.add_argument("--gan_batch_size", type=int, default=128, help="GAN batch size (default: %(default)s)")
    group.add_argument("--gan_loop", default="ours", choices=["ours", "published"],
                       help="GAN attack critic steps: ours (generator in train mode, one noisy query per batch) or "
                            "published (generator in eval mode for the critic steps, fresh noise for the "
                            "generator step) (default: %(default)s)")
    group.add_argument("--checkpoint_every", type=int, default=5,
                       help="GAN epochs between resumable checkpoints (default: %(default)s)")


def add_rmle_flags(group) -> None:
    group.add_argument("--rmle_steps", type=int, default=500,
                       help="rMLE Adam steps per image (default: %(default)s)")
    group.add_argument("--rmle_lr", type=float, default=0.05, help="rMLE Adam lr (default: %(default)s)")
    group.add_argument("--tv_weight", type=float, default=0.05,
                       help="rMLE total-variation weight (default: %(default)s)")
    group.add_argument("--rmle_max_images", type=int, default=None,
                       help="score rMLE on the first N eval images only (they span the classes); its cost grows "
                            "with every image (default: all)")


def add_selection_flags(group) -> None:
    """Which results a run computes: modes, attacker views and attacks."""
    group.add_argument("--attack_modes", default="train_time,infer_time",
                       help="comma list: train_time (attacker has the training images), infer_time (attacker has "
                            "90%% of the test set, scored on the rest) (default: %(default)s)")
    add_view_flag(group)
    group.add_argument("--attacks", default="decoder",
                       help="comma list of attacks: decoder (training-based), gan (WGAN-GP generator started from "
                            "the decoder), rmle (white-box optimisation) (default: %(default)s)")


def add_view_flag(group) -> None:
    group.add_argument("--attack_view", default="sent",
                       help="comma list of what the attacker's queries go through: sent (what the device sends: "
                            "every defence of the pipeline), noise_only (the Gaussian noise alone, no dropout / "
                            "top-k / local DP: the published attacker); results are kept per view "
                            "(default: %(default)s)")


def _actions(add) -> list:
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return parser._actions  # no public accessor; stable since Python 2.7


def _dests(add) -> tuple:
    return tuple(a.dest for a in _actions(add))


# Every attack flag's default, read from the declarations above (configs written before a flag existed
# lack it; their attacks run with its default).
DEFAULTS = {a.dest: a.default for add in (add_decoder_flags, add_selection_flags, add_gan_flags, add_rmle_flags)
            for a in _actions(add)}


def settings_flags() -> dict:
    """{attack: the flags its results depend on}, from the declarations above, so that a flag added to
    one attack's group keys that attack's results. The GAN's include the decoder's: its generator
    starts from the decoder those settings trained."""
    decoder = _dests(add_decoder_flags)
    return {"decoder": decoder, "gan": decoder + _dests(add_gan_flags), "rmle": _dests(add_rmle_flags)}


def gan_epochs(cfg: dict) -> int:
    if cfg.get("gan_epochs") is not None:
        return int(cfg["gan_epochs"])
    return 80 if str(cfg.get("dataset", "")).lower().startswith("tinyimagenet") else 150
