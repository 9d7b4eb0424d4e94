"""Training-based model inversion: fit a decoder from obfuscated features back to images.

The attacker has black-box query access to the deployed device side: it sends its own images
through the frozen encoder and the deployed obfuscation (the same callable the defence uses, with
fresh randomness every query) and learns a decoder z~ -> x with an MSE loss on [0,1] images.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn as nn

from accel.capture import StepCapture, capture_enabled
from architectures.decoders import build_decoder, state_mismatch
from attacks.base import Context, TrainedAttack
from attacks.flags import MODES
from utils import UserError, load_checkpoint, torch_save_atomic

HELDOUT_FRACTION = 0.1
EVAL_FRACTION = 0.1  # infer_time: share of each test class kept for scoring


def _make_split(like, x: torch.Tensor, y: torch.Tensor):
    # The split type comes from the caller's bundle, so attacks/ needs no import of datasets/.
    return type(like)(x=x, y=y)


def _take(split, idx: torch.Tensor):
    return _make_split(split, split.x[idx], split.y[idx])


def _holdout(split, seed: int):
    """Seeded random 90/10 split of the attacker's own data: (fit, heldout)."""
    n = len(split)
    n_held = int(math.floor(HELDOUT_FRACTION * n + 0.5)) if n >= 2 else 0
    n_held = max(1, n_held) if n >= 2 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return _take(split, perm[n_held:].sort().values), _take(split, perm[:n_held].sort().values)


def _round_robin(y: torch.Tensor) -> torch.Tensor:
    """Order indices class by class in turn (c0, c1, ..., c0, c1, ...) so the first images, the ones
    shown in the reconstruction grid, span the classes instead of showing only the first class."""
    rank = torch.zeros_like(y)
    for c in torch.unique(y).tolist():
        members = y == c
        rank[members] = torch.arange(int(members.sum()))
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)


def attacker_splits(bundle, mode: str, seed: int, data: str = "split"):
    """(fit, heldout, evals) TensorSplits for the attack `mode`.

    train_time: the attacker holds the defender's training images (bundle.train); 10% of them
      (seeded) are held out to pick the best decoder; scoring is on all of bundle.test (reordered
      round-robin over classes, like infer_time's eval images).
    infer_time: the test set is shuffled within each class (seeded); per class the first 90% go to
      the attacker (10% of those held out), the last 10% are scored. Every class with >= 2 images
      gives at least one eval image. Eval images are ordered round-robin over classes so the first
      few (the picture grid) span the classes.
    data="published" (`--attacker_data published`): the published attacker's images: train_time fits
      on every training image, the validation split included (50k on CIFAR-10); infer_time splits the
      test set by index, as published: the first n - n//10 images fit, the last n//10 are scored (in
      index order; on CIFAR-10 images 0-8999 and 9000-9999); the per-epoch held-out pass runs on the
      scoring images, as the published one runs on its test loader (the final decoder is what is
      reported either way; with `--decoder_heldout_bn train` that pass moves BatchNorm's statistics, as
      published).
    """
    if mode not in MODES:
        raise UserError(f"unknown attack mode '{mode}'; choose one of {', '.join(MODES)}")
    if data not in ("split", "published"):
        raise UserError(f"--attacker_data must be split or published (got '{data}')")
    if mode == "train_time":
        train = bundle.train
        if data == "published" and bundle.val is not None and len(bundle.val):
            train = _make_split(train, torch.cat([train.x, bundle.val.x]), torch.cat([train.y, bundle.val.y]))
        evals = _take(bundle.test, _round_robin(bundle.test.y.cpu()))
        return (*_holdout(train, seed), evals) if data == "split" else (train, evals, evals)

    test = bundle.test
    if data == "published":
        # datasets_torch.py: Subset(test, range(0, n - n // 10)) fits, the last n // 10 are scored, in index
        # order (CIFAR's test set is not sorted by class; ImageFolder sets are, so there the last classes)
        n_fit = len(test) - len(test) // 10
        evals = _take(test, torch.arange(n_fit, len(test)))
        return _take(test, torch.arange(n_fit)), evals, evals
    y = test.y.cpu()
    g = torch.Generator().manual_seed(seed)
    attacker_idx, eval_idx, eval_key = [], [], []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        n_c = members.numel()
        n_eval = max(1, int(math.floor(EVAL_FRACTION * n_c + 0.5))) if n_c >= 2 else 0
        attacker_idx.append(members[: n_c - n_eval])
        ev = members[n_c - n_eval:]
        eval_idx.append(ev)
        # Sort key (rank within class, class) interleaves classes in the eval order.
        eval_key.append(torch.arange(ev.numel()) * (int(y.max()) + 1) + c)
    att = torch.cat(attacker_idx).sort().values
    ev, key = torch.cat(eval_idx), torch.cat(eval_key)
    ev = ev[torch.argsort(key)]
    evals = _take(test, ev)
    return (*_holdout(_take(test, att), seed + 1), evals)


class DecoderAttack(TrainedAttack):
    """Decoder (training-based) inversion attack; see module docstring and DESIGN §8."""

    name = "decoder"

    def __init__(self, gan_AE_type: str = "res_normN8C64", epochs: int = 50, batch_size: int = 256,
                 lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, device=None,
                 progress: bool = True, min_lr: float = 1e-5, feature_cache_mb: float = 2048,
                 capture: str = "auto", bf16: bool = False, **kw):
        if epochs < 1 or batch_size < 1:
            raise UserError(f"decoder attack needs epochs >= 1 and batch_size >= 1 "
                            f"(got {epochs}, {batch_size}); fix --attack_epochs / batch size")
        super().__init__(epochs=epochs, batch_size=batch_size, seed=seed, device=device, progress=progress,
                         feature_cache_mb=feature_cache_mb, **kw)
        self.gan_AE_type = gan_AE_type
        self.lr, self.weight_decay, self.min_lr = float(lr), float(weight_decay), float(min_lr)
        self.capture, self.bf16 = capture, bool(bf16)

    def label(self) -> str:
        return self.gan_AE_type

    def settings(self) -> dict:
        return {"decoder": self.gan_AE_type, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "min_lr": self.min_lr, "seed": self.seed,
                # only when set, so checkpoints made before the flag still resume
                **({"heldout_bn": self.heldout_bn} if self.heldout_bn != "eval" else {})}

    def build(self, ctx: Context) -> None:
        self.model = build_decoder(self.gan_AE_type, ctx.feature_shape, ctx.image_size,
                                   out_channels=ctx.channels).to(ctx.device)
        captured = capture_enabled(self.capture, ctx.device)
        # capturable: Adam's step counter lives on the device, so a replayed graph can advance it.
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                    **({"capturable": True} if captured else {}))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=self.epochs, eta_min=self.min_lr)
        self.loss_sum = torch.zeros((), device=ctx.device)
        use_bf16 = self.bf16 and ctx.device.type == "cuda"

        def step(z: torch.Tensor, target_u8: torch.Tensor) -> None:
            with (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not captured) if use_bf16
                  else contextlib.nullcontext()):
                rec = self.model(z)
            loss = nn.functional.mse_loss(rec.float(), target_u8.float().div_(255.0))  # the loss stays fp32
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.loss_sum.add_(loss.detach() * target_u8.shape[0])

        self.stepper = StepCapture(step, captured, log=self.log)

    def training_state(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])

    def train_epoch(self, ctx: Context, epoch: int, gen: torch.Generator) -> dict:
        self.loss_sum.zero_()
        seen = 0
        key = self.opt.param_groups[0]["lr"]  # baked into a captured step; changes once per epoch
        for idx in self.batches(ctx, gen):
            with torch.no_grad():
                z = ctx.obfuscate(self.fit_features(ctx, idx))
            self.stepper(key, z, ctx.x_fit[idx])
            seen += idx.numel()
        lr_now = self.opt.param_groups[0]["lr"]
        self.sched.step()
        return {"loss": self.loss_sum / seen, "lr": torch.tensor(lr_now)}


def save_decoder(model: nn.Module, path, **extra) -> Path:
    """A trained decoder with what is needed to rebuild it: architecture name and feature shape."""
    path = Path(path)
    torch_save_atomic({"arch": model.name, "feature_shape": list(model.feature_shape),
                       "image_size": model.image_size, "out_channels": model.out_channels,
                       "state_dict": model.state_dict(), **extra}, path)
    return path


def load_decoder(path, device="cpu") -> nn.Module:
    """Rebuild a decoder saved by `save_decoder` and load it strictly.

    A file whose tensors do not fit its recorded name is one UserError line: decoders saved before
    `res_normN{N}C{C}` became the published decoder hold that name with the earlier design's tensors."""
    ck = load_checkpoint(path, device)
    model = build_decoder(ck["arch"], ck["feature_shape"], ck["image_size"], ck["out_channels"])
    why = state_mismatch(model, ck["state_dict"])
    if why:
        raise UserError(f"saved decoder {path} does not fit today's {ck['arch']} ({why}); it was probably "
                        f"written with the earlier design ({ck['arch']}_v0): rerun the decoder attack")
    model.load_state_dict(ck["state_dict"], strict=True)
    return model.to(device).eval()


def from_settings(s: dict, common: dict, place) -> DecoderAttack:
    """The registered factory (attacks/specs/decoder.py)."""
    return DecoderAttack(gan_AE_type=s["gan_AE_type"], epochs=int(s["attack_epochs"]),
                         capture=str(s.get("capture", "auto")), bf16=bool(s.get("bf16")),
                         heldout_bn=str(s["decoder_heldout_bn"]), **common)
