"""The authors' published checkpoint layout and its one-to-one correspondence with our split models.

The published code saves three bare state_dicts per epoch (`checkpoint_f_<E>.tar` = device encoder,
`checkpoint_cloud_<E>.tar` = server trunk, `checkpoint_classifier_<E>.tar` = head). Their tensors are
ours in the same order (our models add only parameter-free modules: Flatten, the pooling in the ResNet
head), so a key of theirs maps to the key of ours at the same position, provided the kind
(weight / bias / running stats) and the shape agree at every position. The layout records in
`../shared/data/official_ckpt_layouts/` and the golden fixtures' weight rule live here too, so tests
and the importer generate published-format files in the same way.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from utils import UserError

# published file stem -> our SplitModel attribute
PARTS = (("checkpoint_f", "encoder"), ("checkpoint_cloud", "server"), ("checkpoint_classifier", "classifier"))
LAYOUT_DIR = "official_ckpt_layouts"


def layout_file(data_root, config: str) -> Path:
    return Path(data_root) / LAYOUT_DIR / f"{config}.json"


def read_layout(path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def layout_keys(layout: dict) -> Dict[str, List[Tuple[str, tuple]]]:
    """file stem ('checkpoint_f', ...) -> [(key, shape), ...] in the saved order."""
    out = {}
    for entry in layout["files"]:
        stem = entry["file"].rsplit("_", 1)[0]  # checkpoint_f_best.tar -> checkpoint_f
        out[stem] = [(k, tuple(shape)) for k, shape in entry["keys"]]
    return out


def _is_bn_weight(key: str, shape: tuple, names: set) -> bool:
    if len(shape) != 1 or not (key.endswith(".weight") or key == "weight"):
        return False
    return key[:key.rfind(".") + 1] + "running_mean" in names


def seeded_state(keys: List[Tuple[str, tuple]], g: torch.Generator) -> "OrderedDict[str, torch.Tensor]":
    """The golden fixtures' documented weight rule for one key list, drawing from `g` in key order."""
    names = {k for k, _ in keys}
    sd = OrderedDict()
    for k, shape in keys:
        shape = tuple(shape)
        if k.endswith("num_batches_tracked"):
            t = torch.tensor(0)
        elif k.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif (k.endswith(".weight") or k == "weight") and len(shape) >= 2:
            t = torch.randn(shape, generator=g) * (1.0 / math.sqrt(math.prod(shape[1:])))
        else:
            t = 0.1 * torch.randn(shape, generator=g)
            if _is_bn_weight(k, shape, names):
                t = t + 1.0
        sd[k] = t
    return sd


def generate_weights(layout: dict) -> Tuple[Dict[str, "OrderedDict[str, torch.Tensor]"], torch.Tensor]:
    """The golden fixtures' documented weight rule: state_dicts per file stem, then the input batch x."""
    g = torch.Generator().manual_seed(0)
    keys = layout_keys(layout)
    files = {stem: seeded_state(keys[stem], g) for stem, _ in PARTS}
    h = int(layout["settings"]["image_size"])
    x = torch.randn(4, 3, h, h, generator=g)
    return files, x


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_part(theirs: "OrderedDict[str, torch.Tensor]", ours: "OrderedDict[str, torch.Tensor]",
             what: str, exact_shapes: bool = True) -> List[Tuple[str, str]]:
    """[(their key, our key)] pairing tensors by position; any count, kind or shape mismatch is a UserError.

    `exact_shapes=False` compares only the number of dimensions (pruned tensors, before reshaping ours)."""
    t_items, o_items = list(theirs.items()), list(ours.items())
    for i, ((tk, tv), (ok, ov)) in enumerate(zip(t_items, o_items)):
        shape_ok = tuple(tv.shape) == tuple(ov.shape) if exact_shapes else tv.dim() == ov.dim()
        if _kind(tk) != _kind(ok) or not shape_ok:
            raise UserError(f"{what}: tensor {i} '{tk}' {tuple(tv.shape)} does not match our '{ok}' "
                            f"{tuple(ov.shape)}; check --arch/--cutlayer/--bottleneck_option/--dataset")
    if len(t_items) != len(o_items):
        extra = t_items[len(o_items):] or o_items[len(t_items):]
        side = "the file has" if len(t_items) > len(o_items) else "our model has"
        raise UserError(f"{what}: {side} {abs(len(t_items) - len(o_items))} more tensor(s) (first: "
                        f"'{extra[0][0]}'); check --arch/--cutlayer/--bottleneck_option/--dataset")
    return [(tk, ok) for (tk, _), (ok, _) in zip(t_items, o_items)]


def load_published(model, files: Dict[str, "OrderedDict[str, torch.Tensor]"]) -> Dict[str, List[Tuple[str, str]]]:
    """Copies published state_dicts into `model` strictly; returns the key mapping per file stem."""
    mapping = {}
    for stem, attr in PARTS:
        part = getattr(model, attr)
        ours = part.state_dict()
        pairs = map_part(files[stem], ours, stem)
        converted = OrderedDict((ok, files[stem][tk].to(ours[ok].dtype)) for tk, ok in pairs)
        part.load_state_dict(converted, strict=True)
        mapping[stem] = pairs
    return mapping
