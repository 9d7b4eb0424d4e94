"""PATROL (`--AT_regularization pruningE`): structured channel pruning of the encoder at epoch E.

With the option on, the device side also gets one extra layer from the start (built by
`architectures.build_split_model(extra_device_layer=True)`). At the start of epoch E (1-based) the
encoder's conv channels are pruned with torch-pruning's DepGraph: Taylor importance |w · dL/dw|
summed over each coupled group, gradients from real training batches, ratio 0.05 per layer; convs
with at most 32 output channels, and the conv that produces z, are left alone, so the features the
server reads keep their shape. The trainer then rebuilds its optimizer over the pruned tensors
(`--patrol_optimizer rebuild`, our default). torch-pruning replaces the tensors of every layer it
touches, and the published code keeps its optimizer, which still holds the replaced ones: those
layers stop training for the rest of the run. `--patrol_optimizer published` reproduces that: the
optimizer keeps only the tensors that survived pruning unchanged, with their momentum.
"""
from __future__ import annotations

import gc
import itertools
from typing import Dict, Iterable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from defenses.base import Defense
from defenses.registry import register_at
from utils import UserError

PRUNE_RATIO = 0.05
KEEP_AT_MOST = 32     # convs this narrow are never pruned (the paper's setting)
TAYLOR_BATCHES = 8    # training batches whose summed gradient scores the channels


def prune_encoder(model, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], ratio: float = PRUNE_RATIO,
                  keep_at_most: int = KEEP_AT_MOST) -> Dict[str, Tuple[int, int]]:
    """Prunes `model.encoder` in place; returns {conv name: (built, now)} out-channels of pruned convs.

    Gradients come from the whole model's task loss in eval mode, so BatchNorm statistics and the
    random state stay untouched: a resumed run prunes exactly as the uninterrupted one did.
    """
    import torch_pruning as tp

    from architectures import channel_counts

    enc = model.encoder
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return {}
    # The last conv makes z (directly or through a residual sum): pruning its group would change
    # the features the server reads, so it and every group coupled to it are kept.
    ignored = [m for m in convs if m.out_channels <= keep_at_most] + [convs[-1]]
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    first = None
    for x, y in batches:
        first = x if first is None else first
        F.cross_entropy(model(x).float(), y).backward()
    if first is None:
        raise UserError("PATROL pruning needs at least one training batch")
    example = torch.zeros_like(first[:1])
    with torch.no_grad():
        before = tuple(enc(example).shape)
    pruner = tp.pruner.MetaPruner(enc, example, importance=tp.importance.GroupTaylorImportance(),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    model.zero_grad(set_to_none=True)
    # torch-pruning's trace leaves reference cycles holding an autograd graph of the model; its
    # gradient-accumulator nodes (made on the default stream) would then be reused by the next CUDA
    # graph capture, which fails on the stream mismatch. Free them now, not at some later gc pass.
    del pruner
    gc.collect()
    with torch.no_grad():
        after = tuple(enc(example).shape)
    model.train(was_training)
    if after != before:
        raise RuntimeError(f"pruning changed the encoder output {before} -> {after}")
    return channel_counts(model)


class PatrolPruning(Defense):
    """Prunes the encoder once, at the start of epoch `epoch` (1-based); sends z unchanged."""

    name = "pruning"

    def __init__(self, epoch: int, ratio: float = PRUNE_RATIO, keep_at_most: int = KEEP_AT_MOST,
                 taylor_batches: int = TAYLOR_BATCHES, optimizer: str = "rebuild"):
        if optimizer not in ("rebuild", "published"):
            raise UserError(f"--patrol_optimizer must be rebuild or published (got '{optimizer}')")
        self.epoch, self.optimizer = int(epoch), optimizer
        self.ratio, self.keep_at_most, self.taylor_batches = ratio, keep_at_most, taylor_batches
        self.pruned: Dict[str, list] = {}

    def on_epoch_start(self, trainer, epoch):
        if epoch + 1 != self.epoch:
            return
        # the very batches epoch E is about to train on (the loader's order is seeded per epoch)
        trainer.train_loader.set_epoch(epoch)
        batches = ((trainer._prep(x), y) for x, y in itertools.islice(trainer.train_loader, self.taylor_batches))
        counts = prune_encoder(trainer.model, batches, self.ratio, self.keep_at_most)
        self.pruned = {k: list(v) for k, v in counts.items()}
        desc = ", ".join(f"{k} {a}->{b}" for k, (a, b) in counts.items()) or "no prunable conv"
        trainer.structure_changed(f"PATROL: pruned the encoder at the start of epoch {self.epoch}: {desc}",
                                  optimizer=self.optimizer)

    def state_dict(self):
        return {"epoch": self.epoch, "pruned": dict(self.pruned)}

    def load_state_dict(self, state):
        self.pruned = dict(state.get("pruned", {}))


@register_at("pruning")
def _build(opts, ctx):
    epochs = int(ctx.cfg.get("num_epochs", opts.pruning_epoch))
    if opts.pruning_epoch > epochs:
        raise UserError(f"--AT_regularization {opts.text}: pruning epoch {opts.pruning_epoch} is after the last "
                        f"epoch ({epochs}); choose pruningE with E <= --num_epochs")
    return PatrolPruning(opts.pruning_epoch, optimizer=str(ctx.cfg.get("patrol_optimizer") or "rebuild"))
