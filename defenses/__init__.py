"""Defences on the sent features, found by their CLI names (DESIGN.md §5).

Names are loaded on first use (PEP 562), so `defenses.flags` and `defenses.at_options` import without
torch: the sweep's planner reads them once per configuration.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Defense": "base", "DefenseStack": "base", "CEM": "cem", "cem_batch_loss": "cem", "fit_class_kmeans": "cem",
    "lambda_eff": "cem", "GaussianNoise": "noise", "ATOptions": "at_options", "at_options": "at_options",
    "parse_at_options": "at_options", "AT_BUILDERS": "registry", "BuildContext": "registry",
    "register_at": "registry", "build_defenses": "build", "extra_device_layer": "build",
    "cem_clusters": "build", "device_tail": "sca",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'defenses' has no attribute {name!r}")
    return getattr(importlib.import_module(f"defenses.{_EXPORTS[name]}"), name)
