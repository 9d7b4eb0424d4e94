"""The defences' command-line flags, declared here by the defences themselves (DESIGN.md §5).

Standard library only: the run lifecycle's parser is built once per configuration when a sweep is
planned, which must not import torch.
"""
from __future__ import annotations

from defenses.at_options import AT_VERSION


def add_noise_flags(group) -> None:
    group.add_argument("--regularization", default="Gaussian_kl",
                       help="feature obfuscation: Gaussian_kl (Gaussian noise, std = --regularization_strength) "
                            "or None (default: %(default)s)")
    group.add_argument("--regularization_strength", type=float, default=0.05,
                       help="noise standard deviation sigma (default: %(default)s)")


def add_cem_flags(group) -> None:
    group.add_argument("--lambd", type=float, default=16.0,
                       help="CEM weight lambda; 0 turns CEM off (default: %(default)s)")
    group.add_argument("--var_threshold", type=float, default=0.125,
                       help="CEM threshold tau: cluster variances are pushed below tau*sigma^2 "
                            "(default: %(default)s)")
    group.add_argument("--log_entropy", type=int, default=1, choices=[0, 1],
                       help="1: log-variance surrogate (paper); 0: plain variance (default: %(default)s)")
    group.add_argument("--cem_lr_coupling", default="paper", choices=["paper", "none"],
                       help="paper: lambda_eff = lambda*0.001/lr for lr >= 4.1e-4 (no cap), else lambda, as the "
                            "paper code's two-pass update; none: lambda as given (default: %(default)s)")
    group.add_argument("--cem_refresh_aug", type=int, default=1, choices=[0, 1],
                       help="1: fit CEM's per-class mixture after each epoch on augmented training images, as "
                            "the paper code; 0: on un-augmented ones (default: %(default)s)")
    group.add_argument("--cem_kmeans", default="ours", choices=["ours", "published"],
                       help="CEM's mixture fit: ours (k-means++ seeding, empty clusters invalid, arrays aligned "
                            "with clusters) or published (seeding proportional to the distance, empty clusters "
                            "stay candidates, variances and weights compacted, alpha's dataset size = batches x "
                            "batch size) (default: %(default)s)")
    group.add_argument("--cem_stats", default="own", choices=["own", "published"],
                       help="stored variance and weight in each class term of the CEM loss: the class's own "
                            "(own), or the published code's lookup by the sample's position in the label-sorted "
                            "batch, so most terms use another class's (published) (default: %(default)s)")


def add_at_flags(group) -> None:
    """--AT_regularization and the settings of the defences it turns on (gan_adv's own decoder, ...)."""
    group.add_argument("--AT_regularization", default="None",
                       help="the paper's extra defences, joined by '_': gan_adv[_stepN] (attacker-aware training, "
                            "N defender-decoder steps per batch, 3 without _stepN), dropoutP (zero each sent "
                            "element with probability P, no rescale), topkpruneP (zero the fraction P of smallest "
                            "entries per sample), local_dp (Gaussian noise of std sqrt(2 ln(1.25/delta))/epsilon, "
                            "delta 1e-4, epsilon = strength; local_dp_gaussian is the same option, kept so old "
                            "commands parse; Laplace before --AT_version 2), local_dp_laplace (Laplace noise of "
                            "scale 1/epsilon), nopeek (distance correlation), pruningE (PATROL at epoch E), "
                            "SCA_new (the published sparse-coding layer after the bottleneck, part of the encoder; "
                            "the strength only switches it on); "
                            "sent features: z -> noise -> local DP -> dropout -> top-k; e.g. "
                            "gan_adv_step1_pruning180 (default: %(default)s)")
    group.add_argument("--AT_regularization_strength", type=float, default=0.0,
                       help="weight of gan_adv, nopeek's weight / 0.1 (x10 more on cifar10, as published), "
                            "epsilon of local_dp; 0 disables every --AT_regularization option, as in the paper "
                            "code (default: %(default)s)")
    group.add_argument("--AT_version", type=int, default=AT_VERSION, choices=[AT_VERSION],
                       help="what the --AT_regularization text means; recorded so that a run made before its "
                            "defaults became the published ones (no AT_version in config.json: version 1, where "
                            "local_dp was Laplace and came after top-k) is not mistaken for a new one, and is "
                            "re-attacked with what it sent (default: %(default)s)")
    group.add_argument("--adv_AE_type", default="res_normN4C64",
                       help="gan_adv: the defender's own decoder (distinct from --gan_AE_type, the attack's) "
                            "(default: %(default)s)")
    group.add_argument("--gan_pretrain_epochs", type=int, default=30,
                       help="gan_adv: epochs pre-training the defender decoder with MSE on noisy features, as "
                            "published (default: %(default)s, the paper's)")
    group.add_argument("--gan_pretrain_data", default="train", choices=["train", "test"],
                       help="gan_adv: images the defender decoder is pre-trained on: train (the defender's own "
                            "training split) or test (the paper code's choice: the defender then has seen the "
                            "images the attacks are scored on) (default: %(default)s)")
    group.add_argument("--gan_loss_type", default="SSIM", choices=["SSIM", "MSE"],
                       help="gan_adv: defender decoder loss -SSIM (encoder penalty on SSIM above "
                            "--ssim_threshold) or MSE (encoder penalty -strength*MSE) (default: %(default)s)")
    group.add_argument("--ssim_threshold", type=float, default=0.5,
                       help="gan_adv with SSIM: the encoder is penalised only for SSIM above this "
                            "(default: %(default)s)")
    group.add_argument("--patrol_optimizer", default="rebuild", choices=["rebuild", "published"],
                       help="PATROL (pruningE): after pruning, rebuild the optimizer over the pruned tensors "
                            "(rebuild), or keep the published code's optimizer, which still holds the replaced "
                            "pre-pruning tensors, so every pruned layer (and the layer after it) stops training "
                            "(published) (default: %(default)s)")
    group.add_argument("--gan_adv_init", default="default", choices=["default", "xavier"],
                       help="gan_adv: the defender decoder's initialisation: PyTorch's default, or the published "
                            "Xavier-uniform weights with zero biases (default: %(default)s)")


def add_defence_flags(group) -> None:
    add_noise_flags(group)
    add_cem_flags(group)
    add_at_flags(group)
