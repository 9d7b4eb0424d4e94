"""The auxiliary-data attacker's images (`--attacker_data aux:SPEC[CLASSES]`, issue 35; the threat model
of FORA and SDAR): the training images of another data set, optionally of some classes only, resized to
the victim's input and given its channel count, 10% held out (seeded) to pick the attacker's best
decoder. It never holds the victim's distribution; it is scored on the victim's eval images as usual,
or on some of their classes (`--attack_eval_classes`: SDAR's class removal)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks.decoder import _holdout, _make_split, _take, attacker_splits
from attacks.specs.decoder import parse_attacker_data, parse_classes
from datasets import load_dataset
from utils import UserError


def fit_victim_input(x_u8: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) resized (bilinear, antialiased) to size x size and to `channels`
    (grey repeated to RGB, RGB averaged to grey)."""
    x = x_u8.float()
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1) if channels in (1, 3) else None
        if x is None:
            raise UserError(f"cannot turn {x_u8.shape[1]}-channel auxiliary images into {channels} channels")
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def aux_splits(attacker_data: str, data_root, like, size: int, channels: int, seed: int):
    """(fit, heldout) of the auxiliary images; `like` gives the split type (the victim's)."""
    _, spec, classes = parse_attacker_data(attacker_data)
    bundle = load_dataset(spec, data_root, select_on="test", seed=seed, download=False)
    x, y = bundle.train.x, bundle.train.y
    if classes is not None:
        keep = torch.isin(y.cpu(), torch.tensor(classes))
        if not keep.any():
            raise UserError(f"--attacker_data {attacker_data}: no image of classes {list(classes)} in {spec} "
                            f"({bundle.num_classes} classes)")
        x, y = x[keep], y[keep]
    return _holdout(_make_split(like, fit_victim_input(x, size, channels), y), seed)


def eval_classes(evals, classes_text):
    """The eval images of those classes only (order kept: still round-robin over the kept classes)."""
    if classes_text is None:
        return evals
    classes = parse_classes(classes_text, "--attack_eval_classes")
    keep = torch.isin(evals.y.cpu(), torch.tensor(classes))
    if not keep.any():
        raise UserError(f"--attack_eval_classes {classes_text}: no eval image of those classes")
    return _take(evals, torch.nonzero(keep).flatten())


def attacker_images(bundle, mode: str, seed: int, attacker_data: str, eval_classes_text, data_root):
    """(fit, heldout, evals) for an attack: attacks.decoder.attacker_splits', with auxiliary images in
    place of the victim's for aux:, and the eval images restricted to classes when asked."""
    aux = str(attacker_data or "split").startswith("aux:")
    fit, held, evals = attacker_splits(bundle, mode, seed, "split" if aux else str(attacker_data or "split"))
    if aux:
        fit, held = aux_splits(attacker_data, data_root, bundle.test, int(bundle.test.x.shape[-1]),
                               int(bundle.test.x.shape[1]), seed)
    return fit, held, eval_classes(evals, eval_classes_text)
