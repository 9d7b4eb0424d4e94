"""The paper's learning-rate schedule and best-checkpoint resets, scaled to a run's length."""
from __future__ import annotations

from typing import Sequence

from .errors import UserError

# The paper's schedule, in epochs of its 240-epoch runs (used by the trainer, validation and gan_adv's decoder).
PAPER_MILESTONES = (60, 120, 180, 210)  # the lr drops x0.2 from these (1-based) epochs on
PAPER_BEST_RESETS = (40, 100, 200)  # the paper code's best-accuracy tracker restarts after these


def paper_epochs(points: Sequence[int], num_epochs: int) -> list:
    """Epochs of the paper's 240-epoch schedule scaled to the run's length; never before epoch 2, so the
    first epoch of any run trains at the base lr."""
    return sorted({max(2, int(round(m * num_epochs / 240))) for m in points})


def milestones(num_epochs: int, spec: str = "paper"):
    """Epochs (counted from 1) that already run at the lr reduced x0.2, as the paper code's MultiStepLR
    stepped with 1-based epochs: 'paper' (60/120/180/210 of 240, scaled to the run's length), 'none'
    (constant lr, for short demo runs), or a comma list of epochs."""
    spec = str(spec).strip().lower()
    if spec == "paper":
        return paper_epochs(PAPER_MILESTONES, num_epochs)
    if spec == "none":
        return []
    try:
        return sorted({int(m) for m in spec.split(",") if m.strip()})
    except ValueError:
        raise UserError(f"bad --milestones '{spec}'; use paper, none, or a comma list of epochs like 60,120") from None


def best_resets(num_epochs: int):
    """1-based epochs after which the paper code forgets its best accuracy (40/100/200 of 240, scaled),
    so its "best" is the best of the last 40 epochs; only points that leave epochs after them count."""
    return sorted({e for e in (int(round(r * num_epochs / 240)) for r in PAPER_BEST_RESETS) if 1 <= e < num_epochs})


def step_decay(base: float, epoch: int, points: Sequence[int], factor: float = 0.2) -> float:
    """lr of the epoch with 0-based index `epoch` (its 1-based number is epoch + 1) when it drops
    x`factor` from each 1-based epoch of `points` on, as MultiStepLR stepped with 1-based epochs."""
    return base * factor ** sum(epoch + 1 >= m for m in points)


def scheduled_lr(base: float, epoch: int, num_epochs: int, spec: str = "paper") -> float:
    """lr of the epoch with 0-based index `epoch` under --milestones `spec`."""
    return step_decay(base, epoch, milestones(num_epochs, spec))
