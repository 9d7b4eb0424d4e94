"""What every attack returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class AttackResult:
    """Scores on the eval images plus a few reconstructions.

    `final` / `best_heldout`: `metrics.summarize` dicts on the eval set for the decoder after the last
    epoch and for the one with the lowest held-out MSE (`best_epoch`, 1-based). `final` is the
    headline number; `best_heldout` is labelled as such because the attacker picked it on its own
    held-out data, never on the eval images.
    """
    final: dict
    best_heldout: dict
    best_epoch: int
    n_fit: int
    n_heldout: int
    n_eval: int
    wall_time_s: float
    grid_originals: torch.Tensor          # (<=16, 3, S, S) in [0,1], CPU
    grid_recons: torch.Tensor             # same images reconstructed by the final decoder
    name: str = ""                        # e.g. the decoder name
    epochs: int = 0
    per_image_final: dict = field(default_factory=dict)   # metric -> (n_eval,) CPU tensor
    per_image_best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)           # per epoch: {"epoch", "loss", "heldout_mse", "lr"}
    model: Optional[Any] = None           # the final decoder (e.g. to initialise a GAN generator)
    # Scores of a constant guess, the attacker's mean image: an attack is only informative above this.
    baseline_mean_image: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready part for metrics.json (the caller adds the grid's path)."""
        return {"final": self.final, "best_heldout": self.best_heldout, "best_epoch": self.best_epoch,
                "n_fit": self.n_fit, "n_heldout": self.n_heldout, "n_eval": self.n_eval,
                "decoder": self.name, "epochs": self.epochs, "wall_time_s": round(self.wall_time_s, 3),
                "baseline_mean_image": self.baseline_mean_image}
