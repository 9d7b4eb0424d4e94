"""The common interface every defence implements, and the stack that chains them."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


class Defense:
    """One defence on the features the device sends.

    `obfuscate` is what the device applies before sending (used in training, validation and by every
    attack); `encoder_loss` is an extra term only the encoder sees; `on_train_start` runs once before
    the first epoch of a run (not again on resume: state that matters is in the checkpoint);
    `on_epoch_end` updates any state.
    """

    name = "defense"
    # Whether the published attacker's queries (attacker view `noise_only`, DESIGN.md §5) go through this
    # defence too: only the Gaussian noise does, the published attacker never saw dropout, top-k or local DP.
    in_noise_only_view = False
    # Whether a training step using this defence may be recorded as a CUDA graph and replayed
    # (accel/capture.py). False for a defence that syncs with the host or steps its own optimizer inside
    # encoder_loss/obfuscate; the trainer then runs every step eagerly.
    capturable = True

    def capture_key(self):
        """Hashable summary of whatever a captured step baked in from this defence (which terms
        exist, which buffers it reads); when it changes, the trainer captures the step afresh.
        Buffers read inside the step must be updated in place to stay valid between changes."""
        return None

    def set_capture(self, enabled: bool) -> None:
        """Told once whether the training step is captured (e.g. to skip compiling small kernels)."""

    def obfuscate(self, z: torch.Tensor, training: bool) -> torch.Tensor:
        return z

    def encoder_loss(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float) -> Optional[torch.Tensor]:
        return None

    def on_train_start(self, trainer) -> dict:
        """One-off preparation before training (e.g. pre-training a model); returns scalars to log."""
        return {}

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Before epoch `epoch` (0-based) trains; may change the model (then calls trainer.structure_changed)."""

    def on_epoch_end(self, trainer) -> dict:
        """Refresh state after an epoch; returns scalars to log (may be empty)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def to(self, device: torch.device) -> "Defense":
        return self


class DefenseStack(Defense):
    """Applies defences in order; encoder losses add up."""

    name = "stack"

    def __init__(self, defenses: Sequence[Defense]):
        self.defenses = list(defenses)

    @property
    def capturable(self):
        return all(d.capturable for d in self.defenses)

    def capture_key(self):
        return tuple(d.capture_key() for d in self.defenses)

    def set_capture(self, enabled):
        for d in self.defenses:
            d.set_capture(enabled)

    def obfuscate(self, z, training):
        for d in self.defenses:
            z = d.obfuscate(z, training)
        return z

    def encoder_losses(self, z, x, y, lr) -> dict:
        """{defence name: its encoder term} for the defences that add one now."""
        terms = {}
        for d in self.defenses:
            term = d.encoder_loss(z, x, y, lr)
            if term is not None:
                terms[d.name] = term
        return terms

    def encoder_loss(self, z, x, y, lr):
        terms = list(self.encoder_losses(z, x, y, lr).values())
        return sum(terms[1:], terms[0]) if terms else None

    def on_epoch_start(self, trainer, epoch):
        for d in self.defenses:
            d.on_epoch_start(trainer, epoch)

    def on_train_start(self, trainer):
        logs = {}
        for d in self.defenses:
            logs.update(d.on_train_start(trainer))
        return logs

    def on_epoch_end(self, trainer):
        logs = {}
        for d in self.defenses:
            logs.update(d.on_epoch_end(trainer))
        return logs

    def state_dict(self):
        return {d.name: d.state_dict() for d in self.defenses}

    def load_state_dict(self, state):
        for d in self.defenses:
            if d.name in state:
                d.load_state_dict(state[d.name])

    def to(self, device):
        for d in self.defenses:
            d.to(device)
        return self

    def deployed(self, view: str = "sent") -> Callable[[torch.Tensor], torch.Tensor]:
        """The obfuscation an attacker's queries go through, for attacks (which never import defenses).

        view `sent`: what the device sends, every defence of the pipeline as deployed at inference;
        `noise_only`: the published attacker's queries, with the defences marked `in_noise_only_view`
        (the Gaussian noise) alone.
        """
        if view == "sent":
            stack = self
        elif view == "noise_only":
            stack = DefenseStack([d for d in self.defenses if d.in_noise_only_view])
        else:
            raise ValueError(f"unknown attacker view {view!r}; use sent or noise_only")
        return lambda z: stack.obfuscate(z, training=False)

    def find(self, name: str) -> Optional[Defense]:
        return next((d for d in self.defenses if d.name == name), None)
