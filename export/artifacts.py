"""One artifact's life in export: written by its target, checked, described.

Shared by the image flow (``api``) and the language-model flow (``llm``), so
neither imports the other's module.
"""

from __future__ import annotations

import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from pocketsize.errors import ParityError
from pocketsize.io import digest

from .config import ExportConfig
from .manifest import MANIFEST_VERSION  # noqa: F401  (re-exported: one version, kept in manifest.py)
from .targets import BackendCannotExport, get_target

log = logging.getLogger(__name__)

OUTPUT_NAME = "logits"
_TOOLS = ("pocketsize", "torch", "executorch", "torchao", "onnx", "onnxruntime", "onnxscript", "coremltools",
          "timm", "transformers", "numpy")


def raise_failures(artifacts: list[dict[str, Any]], out_dir: str | Path) -> None:
    """ParityError (exit 3) naming every artifact that failed to export or to match eager."""
    bad = [a for a in artifacts if a["status"] != "ok" or a["parity"].get("passed") is False]
    if bad:
        what = "; ".join(f"{a['format']}: {a.get('error') or a['parity'].get('reason')}" for a in bad)
        rest = "the others are in" if len(bad) < len(artifacts) else "details in"
        raise ParityError(f"{len(bad)} of {len(artifacts)} artifact(s) failed ({what}); {rest} {out_dir}/manifest.json")


def artifact_name(suffix: str, quantize: str) -> str:
    return f"model{suffix}" if quantize == "none" else f"model.{quantize}{suffix}"


def export_one(key: str, job: Any, tmp: Path, config: ExportConfig,
               check: Callable[[Any, Path], dict[str, Any]], task: str = "image-classification") -> dict[str, Any]:
    """Export one target and check it; the manifest record (never raises for a backend failure).

    ``check(target, path)`` returns the parity record; an exception there means
    the runtime refused the artifact."""
    target = get_target(key, task)
    rel = artifact_name(target.SUFFIX, config.quantize)
    path = tmp / rel
    rec: dict[str, Any] = {"format": key, "path": rel, "bytes": None, "sha256": None,
                           "quantize": config.quantize, "precision": config.precision(key), "status": "ok"}
    log.info("%s: exporting %s", key, rel)
    t = time.perf_counter()
    try:
        info = target.export(job, path)
    except BackendCannotExport as e:
        log.error("%s: %s", key, e)
        rec.update(status="failed", error=str(e), error_detail=e.detail, path=None,
                   parity={"checked": False, "passed": False, "reason": f"not exported: {e}"})
        _remove(path)
        return rec
    rec["export_seconds"] = round(time.perf_counter() - t, 3)
    rec["bytes"], rec["sha256"] = digest(path)
    t = time.perf_counter()
    try:
        rec["parity"] = check(target, path)
    except Exception as e:  # the artifact exists but its runtime refuses it
        msg = f"{target.BACKEND} could not run the artifact ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        log.error("%s: %s", key, msg)
        rec["status"] = "failed"
        rec["error"] = msg
        rec["parity"] = {"checked": False, "passed": False, "reason": msg}
    rec["verify_seconds"] = round(time.perf_counter() - t, 3)
    rec.update({k: v for k, v in info.items() if k not in rec})
    return rec


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["pocketsize"] is None:  # running from a checkout, not installed
        import pocketsize

        out["pocketsize"] = pocketsize.__version__
    out["python"] = platform.python_version()
    return out
