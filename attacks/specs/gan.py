"""The GAN attack's declaration (attacks/gan.py): a WGAN-GP generator started from the decoder."""
from __future__ import annotations

from attacks.registry import AttackSpec


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


def gan_epochs(cfg: dict) -> int:
    if cfg.get("gan_epochs") is not None:
        return int(cfg["gan_epochs"])
    return 80 if str(cfg.get("dataset", "")).lower().startswith("tinyimagenet") else 150


# GAN 2: the published generator and critic (DGWGAN32).
SPEC = AttackSpec(
    name="gan", add_flags=add_gan_flags, factory="attacks.gan:from_settings", version=2, starts_from="decoder",
    ranges={"gan_epochs": (1, True), "n_critic": (1, True), "mse_weight": (0, True), "lr_D": (0, False),
            "lr_G": (0, False), "checkpoint_every": (1, True),
            # 2: the generator is a decoder with BatchNorm, which cannot train on one image, and the attack
            # drops a last batch of one, so a batch size of 1 would train on one image per epoch.
            "gan_batch_size": (2, True)},
    summary="gan (WGAN-GP generator started from the decoder)")
