"""manifest.json as typed records: what export wrote, read back strictly by bench.

The one export module that benchmarks may import (import-linter contract in
pyproject.toml), so it imports only the core, never another export module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

from pocketsize.errors import BadInput, ParityError
from pocketsize.io import digest, read_json, write_json
from pocketsize.records import Record, check_version, opt, req

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
FORMATS = ("executorch", "onnx", "coreml")
FIX = "re-run `pocketsize export` to rewrite it"

# Facts a target's export() adds beside the common keys (export/targets/*.py):
# task- and backend-specific, so they live in Artifact.target_info, written flat
# as before. A key not listed here is still an unknown field.
TARGET_INFO_KEYS = frozenset({
    "backend", "method", "opset", "ir_version", "ops", "deployment_target", "deployment_target_note",
    "compute_precision", "input_dtype", "states",
})


class ArtifactMismatch(ParityError):
    """The file on disk is not the one export checked (exit 3, like a parity failure)."""


@dataclasses.dataclass(frozen=True)
class Parity(Record):
    """The artifact-vs-eager check (export/parity.py, export/llm.py compare_lm)."""

    checked: bool = req()
    passed: bool | None = opt(omit_none=False)  # None: nothing compared, neither pass nor failure
    max_abs_diff: float | None = opt(omit_none=False)
    top1_agreement: float | None = opt(omit_none=False)
    reason: str | None = opt(omit_none=False)
    samples: int | None = opt()
    precision: str | None = opt()
    mean_abs_diff: float | None = opt()
    snr_db: float | None = opt()
    thresholds: dict[str, float] | None = opt()
    accuracy: dict[str, float] | None = opt()    # eager vs artifact on the user's labels
    greedy: dict[str, Any] | None = opt()        # causal LMs: greedy tokens, eager vs artifact
    logit_rows: dict[str, int] | None = opt()    # causal LMs
    structure: dict[str, Any] | None = opt()     # Core ML: the saved program's inputs/outputs/ops
    reference: str | None = opt()                # quantized LMs: what was compared ("quantized eager", "fp32 eager")
    vs_fp32: dict[str, Any] | None = opt()       # int4 .pte: its distance to fp32 eager (a figure, not a check)


@dataclasses.dataclass(frozen=True)
class Artifact(Record):
    """One exported file (or .mlpackage folder) and its check."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"parity": Parity}
    EXTRA: ClassVar[str | None] = "target_info"
    EXTRA_KEYS: ClassVar[frozenset[str] | None] = TARGET_INFO_KEYS

    format: str = req()
    path: str | None = req()        # relative to the manifest's folder; None when the export failed
    bytes: int | None = req()
    sha256: str | None = req()
    quantize: str = req()
    parity: Parity = req()
    precision: str | None = opt()
    status: str | None = opt()      # ok | failed (export or its check); absent in old hand-made manifests
    error: str | None = opt()
    error_detail: str | None = opt()
    export_seconds: float | None = opt()
    verify_seconds: float | None = opt()
    delegation: dict[str, Any] | None = opt()
    quantization: dict[str, Any] | None = opt()
    target_info: dict[str, Any] = opt(factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (None, "ok") and self.path is not None

    def check(self, where: str, fix: str) -> None:
        if self.format not in FORMATS:
            raise BadInput(f"{where}.format is {self.format!r}, expected one of {', '.join(FORMATS)}; {fix}")
        if self.path is not None:
            _check_relative(self.path, f"{where}.path", fix)

    def verify(self, folder: str | Path) -> None:
        """Recompute bytes + sha256 of the file on disk; ArtifactMismatch (exit 3) when they differ.

        Run before benchmarking, so a corrupted or swapped file is never
        reported as the model export checked."""
        where = f"{Path(folder) / MANIFEST}"
        if self.path is None or self.sha256 is None:
            raise ArtifactMismatch(f"{self.format} has no exported file in {where} ({self.error or 'export failed'}); "
                                   "re-run pocketsize export")
        path = Path(folder) / self.path
        if not path.exists():
            raise ArtifactMismatch(f"{self.path} is listed in {where} but missing; re-run pocketsize export")
        size, sha = digest(path)
        if sha != self.sha256 or (self.bytes is not None and size != self.bytes):
            raise ArtifactMismatch(f"{self.path} does not match {MANIFEST}'s sha256: the artifact was modified "
                                   "or corrupted; re-run pocketsize export")


@dataclasses.dataclass(frozen=True)
class Manifest(Record):
    """manifest.json: the artifacts of one export and how to feed them."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"artifacts": Artifact}
    FIX: ClassVar[str] = FIX

    version: int = req(json="format_version")
    source: str = req()
    artifacts: list[Artifact] = req()
    compression: dict[str, Any] | None = opt(omit_none=False)  # method/ratio/seed when pocketsize pruned it
    task: str = opt("image-classification", omit_none=False)
    family: str | None = opt(omit_none=False)
    labels: list[str] | None = opt()
    preprocessing: dict[str, Any] | None = opt(omit_none=False)
    inputs: list[dict[str, Any]] | None = opt(omit_none=False)
    outputs: list[dict[str, Any]] | None = opt(omit_none=False)
    llm: dict[str, Any] | None = opt()           # causal LMs: cache_len, kv_cache, vocab_size, tokenizer...
    parity_inputs: dict[str, Any] | None = opt(omit_none=False)
    config: dict[str, Any] | None = opt(omit_none=False)
    tools: dict[str, str | None] | None = opt(omit_none=False)
    host: dict[str, Any] | None = opt(omit_none=False)
    seconds: float | None = opt(omit_none=False)
    variant: str | None = opt()                  # original | compressed, when the writer knew it

    def to_json(self) -> dict[str, Any]:
        # key order as export always wrote it: artifacts near the end
        d = super().to_json()
        tail = {k: d.pop(k) for k in ("artifacts", "seconds", "variant") if k in d}
        return {**d, **tail}

    def check(self, where: str, fix: str) -> None:
        check_version(self.version, MANIFEST_VERSION, where, fix)
        if not isinstance(self.artifacts, list) or not self.artifacts:
            raise BadInput(f"{where} lists no artifacts; {fix}")
        if self.task == "image-classification":
            _check_input_size(self.preprocessing, self.inputs, where, fix)
        if self.task == "causal-lm":
            lm = self.llm if isinstance(self.llm, dict) else {}
            for k in ("cache_len", "vocab_size"):  # what bench needs to drive the decode loop
                if not isinstance(lm.get(k), int):
                    raise BadInput(f"{where}.llm lacks the required field '{k}'; {fix}")

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        """FOLDER/manifest.json, checked: strict keys, and every artifact path inside FOLDER."""
        folder = Path(folder)
        path = folder / MANIFEST
        m = cls.from_json(read_json(path), str(path))
        for i, a in enumerate(m.artifacts):
            if a.path is not None:
                _check_inside(folder, a.path, f"{path}: artifacts[{i}].path")
        return m

    @classmethod
    def build(cls, artifacts: list[dict[str, Any]], **sections: Any) -> "Manifest":
        """The manifest export writes: export_one's records checked exactly as bench will read them,
        so a field added to a target without adding it here fails in export's tests, not on a user."""
        where, fix = "the manifest being written", "a pocketsize bug: add the field to export/manifest.py"
        arts = [Artifact.from_json(a, f"{where}: artifacts[{i}]", fix) for i, a in enumerate(artifacts)]
        m = cls(version=MANIFEST_VERSION, artifacts=arts, **sections)
        m.check(where, fix)
        return m

    def write(self, folder: str | Path) -> None:
        write_json(Path(folder) / MANIFEST, self.to_json())


def _check_input_size(pp: Any, inputs: Any, where: str, fix: str) -> None:
    """preprocessing.input_size must be the shape the artifacts were exported with
    (inputs[0].shape without the batch): bench resizes --data to input_size, and a
    runner fed other-sized images reads garbage and reports chance accuracy as ok."""
    size = pp.get("input_size") if isinstance(pp, dict) else None
    shape = inputs[0].get("shape") if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else None
    if size is None or not isinstance(shape, list) or len(shape) < 2:
        return
    if list(size) != list(shape[1:]):
        raise BadInput(f"{where}: preprocessing.input_size {list(size)} does not match the input shape "
                       f"{list(shape)} the artifacts were exported with (inputs[0].shape); {fix}")


def _check_relative(p: Any, where: str, fix: str) -> None:
    """A plain relative path with no '..' (checked without the folder)."""
    if not isinstance(p, str) or not p:
        raise BadInput(f"{where} is {p!r}, expected a file name relative to the manifest's folder; {fix}")
    pp, wp = PurePosixPath(p), PureWindowsPath(p)
    if pp.is_absolute() or wp.is_absolute() or wp.drive or ".." in pp.parts or ".." in wp.parts:
        raise BadInput(f"{where} is {p!r}: artifact paths must stay inside the export folder; {fix}")


def _check_inside(folder: Path, rel: str, where: str) -> None:
    """After symlinks: the artifact must resolve inside the folder (a link out is refused)."""
    root = folder.resolve()
    target = (folder / rel).resolve()
    if root not in target.parents:
        raise BadInput(f"{where} {rel!r} resolves outside {folder} (a symlink?): artifact paths must stay "
                       f"inside the export folder; {FIX}")
