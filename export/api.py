"""export(): every requested artifact written, checked and described in manifest.json."""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from pocketsize.errors import ParityError
from pocketsize.io import atomic_dir, check_out_dir, write_json

from . import parity as _parity
from .config import ExportConfig
from .source import Inputs, Source, make_inputs, resolve
from .targets import BackendCannotExport, Job, get_target

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
OUTPUT_NAME = "logits"
_TOOLS = ("pocketsize", "torch", "executorch", "torchao", "onnx", "onnxruntime", "onnxscript", "coremltools",
          "timm", "transformers", "numpy")


def export(model: Any, out_dir: str | Path, config: ExportConfig | None = None, *, data: Any = None) -> dict[str, Any]:
    """Write the artifacts ``config.targets`` asks for into ``out_dir`` with manifest.json.

    ``model``: a MODEL spec or directory, a ``compress.loading.Loaded``, a stock
    timm/transformers module, or an :class:`export.Source`. ``data``: an
    already-loaded ``compress.data.ImageData`` (else ``config.data`` is read);
    for a causal LM a ``compress.text.TextData``. Returns the manifest. Every
    artifact is written even when one fails; then ParityError (exit 3) names
    the failures. Output is atomic. Causal LMs go through :mod:`export.llm`
    (KV-cached decoders, greedy-token parity).
    """
    config = config or ExportConfig()
    t0 = time.perf_counter()
    check_out_dir(out_dir)  # fail before minutes of loading, not after
    src = resolve(model)
    if src.task == "causal-lm":
        from .llm import export_lm

        return export_lm(src, out_dir, config, data, t0)
    inputs = make_inputs(src, config, data)
    with torch.no_grad():
        ref = torch.cat([src.module(inputs.parity[i:i + 32]).float() for i in range(0, inputs.parity.shape[0], 32)])
        example_out = src.module(inputs.parity[:1])
    job = Job(module=src.module, example=inputs.parity[:1].clone(), input_name=src.input_name,
              output_name=OUTPUT_NAME, quantize=config.quantize, calib=inputs.calib, config=config)

    def check(target: Any, path: Path) -> dict[str, Any]:
        return _check_image(target, path, job, inputs, ref, config)

    with atomic_dir(out_dir) as tmp:
        artifacts = [export_one(key, job, tmp, config, check) for key in config.targets]
        manifest = _manifest(src, config, job, example_out, inputs, artifacts, time.perf_counter() - t0)
        write_json(tmp / "manifest.json", manifest)
    raise_failures(artifacts, out_dir)
    return manifest


def raise_failures(artifacts: list[dict[str, Any]], out_dir: str | Path) -> None:
    """ParityError (exit 3) naming every artifact that failed to export or to match eager."""
    bad = [a for a in artifacts if a["status"] != "ok" or a["parity"].get("passed") is False]
    if bad:
        what = "; ".join(f"{a['format']}: {a.get('error') or a['parity'].get('reason')}" for a in bad)
        rest = "the others are in" if len(bad) < len(artifacts) else "details in"
        raise ParityError(f"{len(bad)} of {len(artifacts)} artifact(s) failed ({what}); {rest} {out_dir}/manifest.json")


def artifact_name(suffix: str, quantize: str) -> str:
    return f"model.int8{suffix}" if quantize == "int8" else f"model{suffix}"


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


def _check_image(target: Any, path: Path, job: Job, inputs: Inputs, ref: torch.Tensor,
                 config: ExportConfig) -> dict[str, Any]:
    v = target.verify(path, job, inputs.parity)
    if v.outputs is not None:
        p = _parity.compare(ref, v.outputs, config.precision(target.FORMAT), config, inputs.labels,
                            on_user_data=inputs.record["kind"] == "held-out")
    else:
        p = {"checked": False, "reason": v.reason, "max_abs_diff": None, "top1_agreement": None}
    if v.problems:
        p["passed"] = False
        p["reason"] = "; ".join(filter(None, [p.get("reason"), *v.problems]))
    elif not p.get("checked"):
        p["passed"] = None  # nothing compared: neither a pass nor a failure
    if v.structure:
        p["structure"] = v.structure
    return p


def digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a directory's files in sorted order
    (relative path and contents both hashed, so a rename changes the digest)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return path.stat().st_size, h.hexdigest()
    total = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        total += f.stat().st_size
    return total, h.hexdigest()


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


def _manifest(src: Source, config: ExportConfig, job: Job, example_out: torch.Tensor, inputs: Inputs,
              artifacts: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    pp = src.preprocessing
    return {
        "format_version": MANIFEST_VERSION,
        "source": src.name,
        "compression": src.meta.get("compress"),  # method/ratio/seed when the source was pruned by pocketsize
        "task": src.task,
        "family": src.meta.get("family"),
        "labels": src.meta.get("labels") or inputs.class_names,
        "preprocessing": pp,
        "inputs": [{"name": job.input_name, "shape": list(job.example.shape), "dtype": "float32",
                    "layout": pp.get("layout", "NCHW"), "color": pp.get("color", "RGB"),
                    "normalized": "(x / 255 - mean) / std"}],
        "outputs": [{"name": job.output_name, "shape": list(example_out.shape), "dtype": "float32"}],
        "parity_inputs": inputs.record,
        "config": config.to_dict(),
        "tools": tool_versions(),
        "host": {"os": platform.system(), "arch": platform.machine()},
        "artifacts": artifacts,
        "seconds": round(seconds, 3),
    }
