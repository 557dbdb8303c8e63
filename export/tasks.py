"""The task axis of the export stage: what differs between image classifiers
and causal language models, asked for by the one flow of
``pocketsize.export.api.export``.

A task turns a resolved :class:`~pocketsize.export.source.Source` into a
:class:`Prepared` export: the job every target lowers, the parity check of
one artifact, the data split to copy beside the manifest, and the manifest
itself. Tasks register by the core's task name; their modules import on
first use.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from pocketsize.tasks import task_object


@dataclass
class Prepared:
    job: Any                                                   # what every target's export() lowers
    check: Callable[[Any, Path], dict[str, Any]]               # (target, artifact path) -> parity record
    manifest: Callable[[list[dict[str, Any]], Path, float], dict[str, Any]]  # (artifacts, out folder, seconds)
    split: Any = None                                          # SplitRecord to save beside the manifest


class ExportTask:
    name: str = ""
    quantize: tuple[str, ...] = ("none", "int8")   # the --quantize values this task's targets take

    def check(self, config: Any) -> None:
        """BadInput, before any work, for a precision this task cannot take."""
        from pocketsize.errors import BadInput

        if config.quantize not in self.quantize:
            fix = "use --quantize int8" if "int8" in self.quantize else f"use --quantize {self.quantize[0]}"
            raise BadInput(f"--quantize {config.quantize} does not apply to {self.name} models (they take "
                           f"{', '.join(self.quantize)}; int4 is for language models); {fix}")

    def hold(self, src: Any) -> ContextManager:
        """Held around preparing and exporting (e.g. frozen weights)."""
        return contextlib.nullcontext()

    def prepare(self, src: Any, config: Any, data: Any) -> Prepared:
        raise NotImplementedError


_TASKS = {  # model task -> "module:class" in this package, imported on first use
    "image-classification": "images:ImageExport",
    "causal-lm": "llm:LMExport",
}


def task_for(name: str) -> ExportTask:
    return task_object(_TASKS, name, __package__, "export")
