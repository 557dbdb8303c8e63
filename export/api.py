"""export(): every requested artifact written, checked and described in manifest.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pocketsize.io import atomic_dir, check_out_dir, write_json
from pocketsize.splits import SPLIT_FILE

from .artifacts import MANIFEST_VERSION, OUTPUT_NAME, artifact_name, export_one, raise_failures, tool_versions  # noqa: F401
from .config import ExportConfig
from .source import resolve
from .targets import get_target
from .tasks import task_for


def check_precision(task: str, config: ExportConfig) -> None:
    """BadInput when ``config.quantize`` does not apply to models of ``task`` (e.g. int4 on an image model)."""
    task_for(task).check(config)

log = logging.getLogger(__name__)


def export(model: Any, out_dir: str | Path, config: ExportConfig | None = None, *, data: Any = None) -> dict[str, Any]:
    """Write the artifacts ``config.targets`` asks for into ``out_dir`` with manifest.json.

    ``model``: a MODEL spec or directory, a ``pocketsize.loading.Loaded``, a stock
    timm/transformers module, or an :class:`pocketsize.export.Source`. ``data``: an
    already-loaded ``pocketsize.data.ImageData`` (else ``config.data`` is read);
    for a causal LM a ``pocketsize.text.TextData``. Returns the manifest. Every
    artifact is written even when one fails; then ParityError (exit 3) names
    the failures. Output is atomic. One flow for every task
    (``pocketsize.export.tasks``): image classifiers are checked on held-out
    images, causal LMs (KV-cached decoders, :mod:`pocketsize.export.llm`) by greedy tokens.
    """
    config = config or ExportConfig()
    t0 = time.perf_counter()
    check_out_dir(out_dir)  # fail before minutes of loading, not after
    src = resolve(model)
    for key in config.targets:  # a format that cannot take this task is bad input before any work
        get_target(key, src.task)
    task = task_for(src.task)
    task.check(config)  # so is a precision it cannot take (int4 on an image model)
    with task.hold(src):
        prep = task.prepare(src, config, data)
        with atomic_dir(out_dir) as tmp:
            artifacts = [export_one(key, prep.job, tmp, config, prep.check, task=src.task) for key in config.targets]
            if prep.split is not None:  # bench evaluates exactly its held-out entries
                prep.split.save(tmp / SPLIT_FILE)
            manifest = prep.manifest(artifacts, tmp, time.perf_counter() - t0)
            write_json(tmp / "manifest.json", manifest)
    raise_failures(artifacts, out_dir)
    return manifest
