"""compress: personalized layered pruning of pre-trained ViTs and LLMs.

Public verbs (docs/interfaces.md): ``pocketsize.compress.prune`` and ``pocketsize.compress.load``. Heavy
modules are imported on first attribute access so ``import compress`` is fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["prune", "write_outputs", "load", "load_model", "PruneConfig", "HeiOptions", "LMOptions", "Pruned",
           "METHODS"]

_LAZY = {
    "prune": "pocketsize.compress.pruning:prune",
    "write_outputs": "pocketsize.compress.outputs:write_outputs",
    "Pruned": "pocketsize.compress.pruning:Pruned",
    "load": "pocketsize.loading:load",
    "load_model": "pocketsize.loading:load_model",
    "PruneConfig": "pocketsize.compress.config:PruneConfig",
    "HeiOptions": "pocketsize.compress.config:HeiOptions",
    "LMOptions": "pocketsize.compress.config:LMOptions",
    "METHODS": "pocketsize.compress.methods:METHODS",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
