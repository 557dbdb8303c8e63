"""The task registry every stage shares: the tasks pocketsize knows, and the
lookup of a stage's object for one of them.

A model's task comes from its adapter (``Loaded.task``) or its manifest. Each
stage keeps one flow and a table ``{task: "module:Class"}`` of what differs
per task, inside its own package; the modules import on first use, so
importing a stage stays light.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from .errors import BadInput

TASKS = ("image-classification", "causal-lm")


def task_object(table: Mapping[str, str], name: str, package: str, command: str) -> Any:
    """A new instance of the class ``table`` maps ``name`` to, from ``package``;
    one line naming what ``pocketsize COMMAND`` handles when it maps nothing."""
    if name not in table:
        raise BadInput(f"pocketsize {command} handles {', '.join(table)} models, not {name!r}; "
                       "pass an image classifier or a causal language model")
    mod, cls = table[name].split(":")
    return getattr(importlib.import_module(f"{package}.{mod}"), cls)()
