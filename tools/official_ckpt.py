"""Reading the authors' published checkpoint files safely, and telling their variants apart.

Bare state_dicts (every file of a plain or SCA run, and the server/head files of PATROL runs) load
through the project's one loader, `utils.load_checkpoint` (`weights_only=True`). PATROL runs pickle
the whole encoder module; that file alone is read by an unpickler that resolves only the globals the
published files are known to name (the `pickle_globals` of
../shared/data/official_ckpt_layouts/*__PATROL.json) and refuses any other, so a crafted file cannot
run code. The authors' ResNet classes resolve to empty stand-ins: only the
module tree and its tensors are read, never their code.
"""
from __future__ import annotations

import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn as nn

from utils import UnsafeCheckpoint, UserError, load_checkpoint

from .official_layout import PARTS


class _StandIn(nn.Module):
    """Holds the unpickled state of one of the authors' module classes; has no behaviour."""


# The only globals a published PATROL encoder pickle names (checked against the layout files in tests).
_AUTHOR_CLASSES = {f"model_architectures.resnet_cifar.{n}": type(n, (_StandIn,), {})
                   for n in ("conv5x5", "ResNetBasicblock", "DownsampleA")}
ALLOWED_GLOBALS = frozenset({
    "__builtin__.set", "builtins.set", "collections.OrderedDict",
    "torch.FloatStorage", "torch.LongStorage", "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2",
    "torch.nn.modules.activation.ReLU", "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.batchnorm.BatchNorm2d", "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d", "torch.nn.modules.pooling.AvgPool2d", "torch.nn.modules.pooling.MaxPool2d",
    *_AUTHOR_CLASSES,
})


class ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full not in ALLOWED_GLOBALS:
            raise ForbiddenGlobal(full)
        if full in _AUTHOR_CLASSES:
            return _AUTHOR_CLASSES[full]
        return super().find_class(module, name)


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) builds its unpickler on this module's Unpickler, so the whitelist
# applies to every global of the file; `load` covers the legacy (non-zip) format's header pickles.
RESTRICTED_PICKLE = types.SimpleNamespace(__name__="restricted_pickle", Unpickler=RestrictedUnpickler,
                                          load=_restricted_load, UnpicklingError=pickle.UnpicklingError)


def find_published_files(ckpt_dir, epoch: str) -> Dict[str, Path]:
    """file stem -> path of `<stem>_<epoch>.tar` in ckpt_dir; a missing one is a UserError."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise UserError(f"checkpoint folder '{ckpt_dir}' does not exist; pass the folder holding "
                        f"checkpoint_f_{epoch}.tar, checkpoint_cloud_{epoch}.tar and checkpoint_classifier_{epoch}.tar")
    out = {}
    for stem, _ in PARTS:
        path = ckpt_dir / f"{stem}_{epoch}.tar"
        if not path.is_file():
            have = sorted(p.name for p in ckpt_dir.glob("checkpoint_*.tar"))[:6]
            raise UserError(f"'{path}' is missing; the published run saves {stem}_<E>.tar for E = best and every "
                            f"50 epochs (found: {', '.join(have) or 'no checkpoint files'}); "
                            "check the folder or --epoch")
        out[stem] = path
    return out


def _checked_tensors(obj, path: Path) -> "OrderedDict[str, torch.Tensor]":
    """The file's state_dict, if it is one of tensors that are all finite: a NaN or inf weight would
    import as a model that scores (badly) like a real one, so it is refused."""
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state_dict of tensors (found {type(obj).__name__}); "
                        "is it a published CEM checkpoint file?")
    for key, t in obj.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{path}: tensor '{key}' holds {bad} non-finite value(s) (NaN or inf) of "
                            f"{t.numel()}; a trained model has none: the file is damaged, so nothing is imported")
    return OrderedDict(obj)


def read_published_file(path) -> Tuple[str, "OrderedDict[str, torch.Tensor]"]:
    """('state_dict' | 'module', the file's finite tensors in saved order). Never executes code from the file."""
    path = Path(path)
    try:
        return "state_dict", _checked_tensors(load_checkpoint(
            path, "cpu", fix="is it a complete published checkpoint file?"), path)
    except UnsafeCheckpoint:
        pass  # not a bare state_dict: perhaps PATROL's pickled module, read below under the whitelist
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
    except ForbiddenGlobal as e:
        raise UserError(f"{path} names '{e.name}', which no published CEM checkpoint uses; refusing to "
                        "unpickle it (only the classes listed in the layout's pickle_globals are allowed)") from None
    except Exception as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); "
                        "is it a complete published checkpoint file?") from None
    if not isinstance(obj, nn.Module):
        raise UserError(f"{path} holds a pickled {type(obj).__name__}, not a module or a state_dict; "
                        "is it a published CEM checkpoint file?")
    try:  # stand-ins have no code, but a crafted module tree can still make state_dict() fail
        tensors = OrderedDict(obj.state_dict())
    except Exception as e:
        why = str(e).splitlines()[0][:120] if str(e) else ""
        raise UserError(f"{path} holds a malformed pickled module ({type(e).__name__}: {why}); "
                        "is it a published CEM checkpoint file?") from None
    return "module", _checked_tensors(tensors, path)


def detect_variant(kind: str, encoder: "OrderedDict[str, torch.Tensor]") -> Tuple[str, str]:
    """('plain' | 'SCA' | 'PATROL', the evidence) from the encoder file, as the layout README describes."""
    for k in encoder:
        if k.rsplit(".", 1)[-1] in ("W", "weights", "forward_pass"):
            return "SCA", f"key '{k}'"
    if kind == "module":
        return "PATROL", "the encoder file is a pickled module"
    first = encoder.get("0.weight")
    if first is not None and tuple(first.shape) == (16, 3, 3, 3):
        return "PATROL", "key '0.weight' of shape (16, 3, 3, 3): the extra device layer"
    extra = encoder.get("1.weight")
    if extra is not None and tuple(extra.shape) == (16, 16, 3, 3):
        return "PATROL", "key '1.weight' of shape (16, 16, 3, 3): the extra device layer"
    return "plain", "bare state_dicts without SCA or PATROL layers"
