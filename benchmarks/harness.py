"""``benchmarks.run``: every artifact of an export folder on one device -> results.json + report.html."""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from pocketsize.errors import BadInput
from pocketsize.io import atomic_dir, read_json, write_json

from .config import BenchConfig
from .devices import get_device
from .devices.base import Device, DeviceError, Job, RunOutput, Unsupported
from .stats import latency_stats, stability_warnings

log = logging.getLogger(__name__)

VARIANTS = ("original", "compressed")
RUNTIMES = {"executorch": "executorch", "onnx": "onnxruntime", "coreml": "coreml"}
MAX_SAMPLES_KEPT = 5000  # raw latencies kept in results.json for the plots


def resolve_artifact_sets(artifact_dir: Any) -> list[tuple[str, Path, dict]]:
    """[(variant, folder, manifest)] from one export folder, a folder holding
    ``original/`` and/or ``compressed/`` export folders, or a {variant: folder} mapping."""
    if isinstance(artifact_dir, Mapping):
        pairs = [(str(k), Path(v)) for k, v in artifact_dir.items()]
    else:
        root = Path(artifact_dir)
        if not root.is_dir():
            raise BadInput(f"{root} is not a folder; pass the folder written by `pocketsize export`")
        if (root / "manifest.json").exists():
            pairs = [(None, root)]
        else:
            pairs = [(v, root / v) for v in VARIANTS if (root / v / "manifest.json").exists()]
            if not pairs:
                raise BadInput(f"{root} has no manifest.json (nor original/ or compressed/ with one); "
                               "pass the folder written by `pocketsize export`")
    out = []
    for variant, folder in pairs:
        manifest = read_json(folder / "manifest.json")
        if not isinstance(manifest, dict) or not manifest.get("artifacts"):
            raise BadInput(f"{folder / 'manifest.json'} lists no artifacts; re-run `pocketsize export`")
        out.append((variant or infer_variant(manifest), folder, manifest))
    return out


def infer_variant(manifest: dict) -> str:
    """``original`` unless the manifest says otherwise or its source is a compressed model."""
    v = manifest.get("variant")
    if v in VARIANTS:
        return v
    src = str(manifest.get("source") or "")
    if src and (Path(src) / "pocketsize.json").exists():
        return "compressed"
    return "original"


def input_shape(manifest: dict) -> tuple[int, ...]:
    """Batch-1 input shape from ``inputs`` or ``preprocessing.input_size``."""
    for inp in manifest.get("inputs") or []:
        shape = inp.get("shape") if isinstance(inp, dict) else None
        if shape and all(isinstance(d, int) for d in shape):
            return tuple(shape)
    size = (manifest.get("preprocessing") or {}).get("input_size")
    if size:
        return (1, *[int(d) for d in size])
    raise BadInput("manifest.json has neither inputs[].shape nor preprocessing.input_size; re-run `pocketsize export`")


class EvalSet:
    """Held-out inputs written once as raw float32 (the runner protocol) + labels."""

    def __init__(self, path: Path, labels: Any, count: int):
        self.path, self.labels, self.count = path, labels, count


def prepare_eval(data: Any, manifest: dict, config: BenchConfig, device: Device, scratch: Path) -> EvalSet | None:
    """Write the first N held-out samples for the runner; None without data or for non-image tasks."""
    if data is None:
        return None
    task = manifest.get("task", "image-classification")
    if task != "image-classification":
        return None  # perplexity on device: issue 5; results keep "perplexity": None
    if isinstance(data, (str, Path)):
        try:
            from compress.data import load_image_data
        except ImportError as e:
            raise BadInput(f"--data needs compress.data ({e}); reinstall pocketsize") from None
        data = load_image_data(str(data), manifest.get("preprocessing") or {}, seed=config.seed)
    labels_m, labels_d = manifest.get("labels"), getattr(data, "labels", None)
    if labels_m and labels_d and list(labels_m) != list(labels_d):
        raise BadInput(f"--data classes {list(labels_d)[:5]} differ from the model's labels "
                       f"{list(labels_m)[:5]}; pass the --data the model was compressed with")
    test = data.test
    total = len(test.y)
    want = config.eval_samples if config.eval_samples is not None else device.default_eval_samples
    n = total if want is None else min(int(want), total)
    if n <= 0:
        return None
    import numpy as np

    x = test.normalized(0, n)
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    path = scratch / f"eval-{abs(hash(str(manifest.get('preprocessing'))))}.f32"
    np.ascontiguousarray(x, dtype="<f4").tofile(path)
    y = test.y[:n]
    y = y.cpu().numpy() if hasattr(y, "cpu") else np.asarray(y)
    return EvalSet(path, y, n)


def empty_result(variant: str, fmt: str, art: dict, folder: Path, config: BenchConfig) -> dict[str, Any]:
    """Every results.json key, unmeasured (None), so a failed run still has the full schema."""
    path = folder / str(art.get("path", ""))
    return {
        "variant": variant, "format": fmt, "runtime": RUNTIMES.get(fmt, fmt), "runtime_version": None,
        "artifact": str(path), "quantize": art.get("quantize", "none"),
        "bytes": art.get("bytes") if art.get("bytes") is not None else _size(path),
        "threads": config.threads, "warmup": config.warmup, "iterations": config.iterations,
        "timed_runs": 0, "min_duration_s": config.min_duration_s,
        "load_ms": None, "first_inference_ms": None,
        "latency_ms": latency_stats([]), "latency_samples_ms": [],
        "peak_rss_mb": None, "memory": {}, "accuracy": None, "perplexity": None,
        "eval_samples": 0, "status": "failed", "error": None, "warnings": [], "notes": [],
        "wall_s": None,
    }


def fill_result(res: dict, out: RunOutput, ev: EvalSet | None, config: BenchConfig, emulated: bool) -> None:
    """Fill a result from a finished run: stats, memory, on-device accuracy."""
    stats = latency_stats(out.times_ms)
    res.update(runtime=out.runtime, runtime_version=out.runtime_version, load_ms=out.load_ms,
               first_inference_ms=out.first_inference_ms, latency_ms=stats,
               latency_samples_ms=[round(t, 6) for t in out.times_ms[:MAX_SAMPLES_KEPT]],
               timed_runs=len(out.times_ms), memory=out.memory,
               peak_rss_mb=out.memory.get("peak_rss_mb"), notes=list(out.notes),
               threads=out.threads or config.threads, status="ok", error=None)
    res["warnings"] = stability_warnings(stats, len(out.times_ms), config.unstable_cv)
    if emulated:
        res["notes"].append("emulated: timings and memory include the emulator; not phone timings")
    if ev is not None:
        if out.eval_outputs is None or len(out.eval_outputs) != ev.count:
            res.update(status="failed", error="the runner returned no evaluation outputs")
            return
        pred = out.eval_outputs.argmax(axis=1)
        res["accuracy"] = float((pred == ev.labels).mean())
        res["eval_samples"] = ev.count


def measure(device: Device, job: Job, res: dict, ev: EvalSet | None, work: Path, config: BenchConfig) -> None:
    """One artifact on the device; every expected failure becomes status failed + error."""
    t0 = time.monotonic()
    reason = device.unsupported_reason(job.format)
    try:
        if reason:
            raise Unsupported(reason)
        out = device.run(job, work)
        fill_result(res, out, ev, config, device.emulated)
    except Unsupported as e:
        # status stays within the contract's ok|failed; "unsupported" says it was never tried
        res.update(status="failed", error=f"unsupported: {e}", unsupported=True)
    except DeviceError as e:
        partial = getattr(e, "partial_times", None) or []
        res.update(status="failed", error=str(e))
        if partial:  # nothing measured is lost: keep what the runner wrote before dying
            res.update(latency_ms=latency_stats(partial), latency_samples_ms=partial[:MAX_SAMPLES_KEPT],
                       timed_runs=len(partial))
            res["notes"].append(f"{len(partial)} timed runs completed before the failure")
    res["wall_s"] = round(time.monotonic() - t0, 3)


def run(artifact_dir: Any, device: str | Device = "local", config: BenchConfig | None = None,
        data: Any = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Benchmark every artifact in ``artifact_dir`` on ``device``.

    ``artifact_dir``: a folder written by ``pocketsize export``, a folder holding
    ``original/`` and ``compressed/`` export folders, or ``{variant: folder}``.
    ``data``: the user's data folder (its held-out split is evaluated on the
    device) or an object with ``.test`` (``.x``, ``.y``, ``.normalized(i, j)``).
    Writes ``results.json`` (rewritten after every artifact) and ``report.html``
    into ``out_dir`` atomically; returns the results dict. A failing artifact
    never stops the others.
    """
    config = config or BenchConfig()
    if not isinstance(config, BenchConfig):
        raise BadInput("config must be a benchmarks.BenchConfig")
    sets = resolve_artifact_sets(artifact_dir)
    dev = get_device(device) if isinstance(device, str) else device
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="pocketsize-bench-") as tmp:
            return _run(sets, dev, config, data, Path(tmp), write=False)
    with atomic_dir(out_dir) as tmp:
        return _run(sets, dev, config, data, tmp, write=True)


def _run(sets, dev: Device, config: BenchConfig, data: Any, out: Path, write: bool) -> dict[str, Any]:
    from .report import write_report

    started = time.time()
    try:
        dev_info = dev.describe()
    except DeviceError as e:
        dev_info = {"kind": dev.kind, "name": dev.spec, "os": None, "arch": None, "cpu": None,
                    "emulated": dev.emulated, "error": str(e)}
    doc: dict[str, Any] = {"format_version": 1, "device": dev_info, "config": config.to_dict(),
                           "host": {"python": platform.python_version(), "platform": platform.platform()},
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                           "results": []}
    with tempfile.TemporaryDirectory(prefix="pocketsize-bench-work-") as scratch_s, dev:
        scratch = Path(scratch_s)
        for variant, folder, manifest in sets:
            ev = prepare_eval(data, manifest, config, dev, scratch)
            shape = input_shape(manifest)
            for i, art in enumerate(manifest["artifacts"]):
                fmt = art.get("format")
                if config.formats is not None and fmt not in config.formats:
                    continue
                res = empty_result(variant, fmt, art, folder, config)
                doc["results"].append(res)
                if dev_info.get("error"):
                    res["error"] = f"device unavailable: {dev_info['error']}"
                    continue
                job = Job(artifact=(folder / art["path"]).resolve(), format=fmt, input_shape=shape,
                          warmup=config.warmup, iterations=config.iterations,
                          min_duration_s=config.min_duration_s, threads=config.threads,
                          timeout_s=config.timeout_s, eval_input=ev.path if ev else None,
                          eval_count=ev.count if ev else 0)
                work = scratch / f"{variant}-{i}-{fmt}"
                work.mkdir()
                log.info("bench %s %s on %s", variant, fmt, dev.spec)
                measure(dev, job, res, ev, work, config)
                if write:  # incremental: a later crash of the harness loses nothing measured
                    write_json(out / "results.json", doc)
    doc["seconds"] = round(time.time() - started, 3)
    if write:
        write_json(out / "results.json", doc)
        write_report(doc, out / "report.html")
    return doc


def _size(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None
