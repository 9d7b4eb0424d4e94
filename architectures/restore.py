"""Checkpoints of split models whose shapes changed after building (PATROL's channel pruning).

A checkpoint never pickles a module: it holds the state_dict plus `architecture_record(model)`,
the extra-layer flag and the shape of every tensor that differs from the freshly built model.
`load_split_state` reshapes a built model to that record and loads the weights strictly; resume,
`lifecycle.trained_run` (--attack_only and every attack) and the end-of-training reload all go through it.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn

from utils import UserError

from .split import SplitModel


def architecture_record(model: SplitModel) -> dict:
    """What a checkpoint needs, beyond the run's config, to rebuild `model`'s exact shapes."""
    changed = {k: list(v.shape) for k, v in model.state_dict().items()
               if tuple(v.shape) != tuple(model.nominal_shapes.get(k, v.shape))}
    return {"extra_device_layer": bool(model.extra_device_layer), "shapes": changed}


def channel_counts(model: SplitModel) -> Dict[str, Tuple[int, int]]:
    """{conv name: (built out-channels, current out-channels)} for every conv that was pruned."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            built = model.nominal_shapes.get(f"{name}.weight", m.weight.shape)[0]
            if built != m.out_channels:
                out[name] = (int(built), int(m.out_channels))
    return out


def _sync_attributes(m: nn.Module) -> None:
    """Keeps a module's size attributes in step with its tensors (used by repr and by torch-pruning)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape


def reshape_to(model: SplitModel, shapes: Dict[str, list]) -> None:
    """Gives every tensor of `model` its recorded shape (the built one where none is recorded).

    Only shrinking is allowed, so a checkpoint of another configuration cannot pass as a pruned one.
    The values are placeholders until `load_state_dict` fills them.
    """
    unknown = sorted(set(shapes) - set(model.nominal_shapes))
    if unknown:
        raise UserError(f"the checkpoint records shapes of tensors the model lacks: {unknown[:3]}")
    touched = set()
    for key, built in model.nominal_shapes.items():
        want = tuple(shapes.get(key, built))
        mod_name, _, attr = key.rpartition(".")
        mod = model.get_submodule(mod_name)
        cur = getattr(mod, attr)
        if tuple(cur.shape) == want:
            continue
        if len(want) != len(built) or any(w > b for w, b in zip(want, built)):
            raise UserError(f"checkpoint shape {list(want)} of {key} does not fit the built {list(built)}")
        new = torch.empty(want, dtype=cur.dtype, device=cur.device)
        if isinstance(cur, nn.Parameter):
            setattr(mod, attr, nn.Parameter(new, requires_grad=cur.requires_grad))
        else:
            mod._buffers[attr] = new
        touched.add(mod)
    for mod in touched:
        _sync_attributes(mod)


def check_tensors(model, state: dict) -> None:
    """load_state_dict casts what it copies: integer, half-precision or NaN weights would load silently
    and be attacked as if they were the trained model. A run saves its own dtypes, all finite."""
    import torch

    own = model.state_dict()
    for k, v in state.items():
        want = own.get(k)
        if not isinstance(v, torch.Tensor) or want is None:
            continue  # strict loading names missing, unexpected and non-tensor entries
        if v.dtype != want.dtype:
            raise UserError(f"{k} is {str(v.dtype).removeprefix('torch.')}, the model's is "
                            f"{str(want.dtype).removeprefix('torch.')}: not a checkpoint this project saved")
        if v.is_floating_point() and v.shape == want.shape and not bool(torch.isfinite(v).all()):
            raise UserError(f"{k} holds NaN or infinite values: a diverged or damaged model, not one to attack")


def load_split_state(model: SplitModel, ck: dict) -> None:
    """Loads a checkpoint dict ({"model": state_dict, "architecture": record}) strictly into `model`.

    Raises a UserError naming the mismatch; callers add which files were involved.
    """
    record = ck.get("architecture") or {"extra_device_layer": False, "shapes": {}}
    if bool(record.get("extra_device_layer")) != bool(model.extra_device_layer):
        raise UserError("the checkpoint " + ("has" if record.get("extra_device_layer") else "lacks")
                        + " PATROL's extra device layer but the configuration "
                        + ("does not" if record.get("extra_device_layer") else "has it")
                        + " (--AT_regularization pruningE)")
    reshape_to(model, record.get("shapes", {}))
    check_tensors(model, ck["model"])
    try:
        model.load_state_dict(ck["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise UserError(first[0].strip()[:200]) from None
