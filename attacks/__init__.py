"""Model-inversion attacks on split models. Never imports defenses/: the deployed obfuscation
arrives as a plain callable `z -> z~` handed in by the caller.

Names are loaded on first use (PEP 562), so `attacks.flags` imports without torch: the sweep's
planner reads it once per configuration.
"""
from __future__ import annotations

import importlib

__all__ = ["Attack", "AttackResult", "TrainedAttack"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'attacks' has no attribute {name!r}")
    return getattr(importlib.import_module("attacks.base"), name)
