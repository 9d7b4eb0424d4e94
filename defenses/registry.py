"""Registry of the `--AT_regularization` defences, keyed by option name (see at_options.py).

A builder gets the parsed options and a `BuildContext` and returns one `Defense`. Modules register
their builder with `@register_at("name")`; `build_defenses` calls them in pipeline order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence


@dataclass
class BuildContext:
    """What a defence may need to know about the run it is built for."""

    cfg: dict
    num_classes: int
    n_train: int
    feature_shape: Optional[Sequence[int]] = None   # (C, H, W) of the encoder output z
    image_size: Optional[int] = None
    mean: Optional[Sequence[float]] = None          # input normalisation, to get [0,1] images back
    std: Optional[Sequence[float]] = None
    sigma: float = 0.0                              # the run's Gaussian noise std (0: no noise)


AT_BUILDERS: dict[str, Callable] = {}


def register_at(name: str):
    def deco(fn):
        AT_BUILDERS[name] = fn
        return fn
    return deco


