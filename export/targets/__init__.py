"""The export targets, one small module each, keyed by format name.

Each module has ``FORMAT``, ``SUFFIX``, ``export(job, path) -> dict`` (writes
the artifact, returns format-specific facts for the manifest) and
``verify(path, job, inputs) -> Verified``. Modules are imported on first use so
that ``import export`` never pulls in executorch, onnxruntime or coremltools.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from pocketsize.errors import BadInput

_TARGETS: dict[str, str] = {
    "executorch": "pocketsize.export.targets.executorch",
    "onnx": "pocketsize.export.targets.onnx",
    "coreml": "pocketsize.export.targets.coreml",
}
# causal LMs: the same format keys, modules that export a KV-cached decoder
# (see export.llm). A format missing here cannot take language models yet.
_LM_TARGETS: dict[str, str] = {
    "executorch": "pocketsize.export.targets.llm_executorch",
    "onnx": "pocketsize.export.targets.llm_onnx",
    "coreml": "pocketsize.export.targets.llm_coreml",
}


def target_names() -> list[str]:
    return list(_TARGETS)


def lm_target_names() -> list[str]:
    return list(_LM_TARGETS)


def get_target(name: str, task: str = "image-classification") -> ModuleType:
    """The target module for ``name`` and the model's task; BadInput listing the valid keys."""
    if name not in _TARGETS:
        raise BadInput(f"unknown export target {name!r}; valid: {', '.join(target_names())}")
    if task == "causal-lm":
        if name not in _LM_TARGETS:
            raise BadInput(f"--to {name} cannot take language models yet; use --to {','.join(lm_target_names())}")
        return importlib.import_module(_LM_TARGETS[name])
    return importlib.import_module(_TARGETS[name])


@dataclass
class Job:
    """Everything a target needs to write one artifact (built by export.api)."""

    module: torch.nn.Module          # eval mode, forward(x) -> logits tensor
    example: torch.Tensor            # one input, batch 1 (the exported shape)
    input_name: str
    output_name: str
    quantize: str                    # "none" | "int8"
    calib: torch.Tensor | None       # user's calibration inputs (N, ...) or None
    config: Any                      # ExportConfig


@dataclass
class Verified:
    """What verify() saw: outputs to compare, or why they could not be computed."""

    outputs: torch.Tensor | None = None      # (N, ...) stacked, one row per input
    reason: str | None = None                # set when outputs is None
    structure: dict[str, Any] = field(default_factory=dict)  # structural checks done
    problems: list[str] = field(default_factory=list)        # structural mismatches (fail)


class BackendCannotExport(Exception):
    """A toolchain refused the model; the message names the backend and the op.

    ``str(err)`` is one short line; ``detail`` keeps the toolchain's own words."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


_OP_PATTERNS = (
    r"op '([\w.:]+)'",                                  # coremltools: op 'foo' not implemented
    r"Unsupported fx node (\w+)",                       # coremltools on an ExportedProgram
    r"OpOverload\(op='([\w.]+)'",                       # torch.onnx dynamo
    r"\b((?:aten|prims|quantized_decomposed|torch\.ops\.\w+)[.:]{1,2}\w+(?:\.\w+)?)",
)


def failure(backend: str, exc: BaseException) -> BackendCannotExport:
    """A one-line error naming the backend and, when we can find it, the op."""
    import re

    text = f"{type(exc).__name__}: {exc}"
    op = None
    for pat in _OP_PATTERNS:
        m = re.search(pat, text)
        if m:
            op = m.group(1)
            break
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(text.split()))  # no ANSI colours in JSON
    if op:
        return BackendCannotExport(f"{backend} cannot take op {op}", text[:2000])
    return BackendCannotExport(f"{backend} failed: {text[:200]}", text[:2000])
