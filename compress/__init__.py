"""compress: personalized layered pruning of pre-trained ViTs and LLMs.

Public verbs (CONTRACT.md): ``compress.prune`` and ``compress.load``. Heavy
modules are imported on first attribute access so ``import compress`` is fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["prune", "load", "load_model", "PruneConfig", "Pruned", "METHODS"]

_LAZY = {
    "prune": "compress.pruning:prune",
    "Pruned": "compress.pruning:Pruned",
    "load": "compress.loading:load",
    "load_model": "compress.loading:load_model",
    "PruneConfig": "compress.config:PruneConfig",
    "METHODS": "compress.methods:METHODS",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
