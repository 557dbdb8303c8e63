"""``pocketsize.benchmarks.run``: every artifact of an export folder on one device -> results.json + report.html."""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from pocketsize.errors import BadInput
from pocketsize.io import atomic_dir, read_json

from pocketsize.export.manifest import ArtifactMismatch, Manifest  # the one seam allowed (pyproject)

from .config import BenchConfig
from .devices import get_device
from .devices.base import Device, DeviceError, Job, RunOutput, Unsupported
from .results import Results
from .stats import latency_stats, stability_warnings

log = logging.getLogger(__name__)

VARIANTS = ("original", "compressed")
RUNTIMES = {"executorch": "executorch", "onnx": "onnxruntime", "coreml": "coreml"}
MAX_SAMPLES_KEPT = 5000  # raw latencies kept in results.json for the plots


def resolve_artifact_sets(artifact_dir: Any) -> list[tuple[str, Path, Manifest]]:
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
        manifest = Manifest.load(folder)  # strict keys, paths inside folder: exit 2 before anything runs
        out.append((variant or infer_variant(manifest), folder, manifest))
    return out


def infer_variant(manifest: Manifest) -> str:
    """``original`` unless the manifest says otherwise or its source is a compressed model."""
    if isinstance(manifest, dict):  # what export() returns
        manifest = Manifest.from_json(manifest, "the manifest")
    if manifest.variant in VARIANTS:
        return manifest.variant
    if manifest.compression:
        return "compressed"
    src = manifest.source
    if src and (Path(src) / "pocketsize.json").exists():
        return "compressed"
    return "original"


def input_shape(manifest: Manifest) -> tuple[int, ...]:
    """Batch-1 input shape from ``inputs`` or ``preprocessing.input_size``."""
    for inp in manifest.inputs or []:
        shape = inp.get("shape") if isinstance(inp, dict) else None
        if shape and all(isinstance(d, int) for d in shape):
            return tuple(shape)
    size = (manifest.preprocessing or {}).get("input_size")
    if size:
        return (1, *[int(d) for d in size])
    raise BadInput("manifest.json has neither inputs[].shape nor preprocessing.input_size; re-run `pocketsize export`")


class EvalSet:
    """Held-out inputs written once as raw float32 (the runner protocol) + labels."""

    def __init__(self, path: Path, labels: Any, count: int):
        self.path, self.labels, self.count = path, labels, count


def prepare_eval(data: Any, manifest: dict, config: BenchConfig, device: Device, scratch: Path,
                 split_path: Path | None = None) -> EvalSet | None:
    """Write the first N held-out samples for the runner; None without data or for non-image tasks.

    A --data path is read through ``split_path`` (split.json): exactly its test
    entries, after checking --data still matches it (see :func:`recorded_images`)."""
    if data is None:
        return None
    if isinstance(data, (str, Path)):
        data = recorded_images(data, manifest.get("preprocessing") or {}, split_path)
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

    test = test.spread(n)  # every class, not the first class's images only
    x = test.normalized().cpu().numpy()
    path = scratch / f"eval-{abs(hash(str(manifest.get('preprocessing'))))}.f32"
    np.ascontiguousarray(x, dtype="<f4").tofile(path)
    y = test.y.cpu().numpy()
    return EvalSet(path, y, n)


def split_for(folder: Path, sets: list[tuple[str, Path, dict]]) -> Path | None:
    """The split.json that decides what is held out for ``folder``: its own, else
    the one beside original/ and compressed/, else another variant's (a stock
    original has none, and must be evaluated on the compressed model's test set)."""
    from pocketsize.splits import find_split

    return find_split(folder, folder.parent, *[f for _, f, _ in sets])


def _record(split_path: Path, data: Any, task: str):
    from pocketsize.splits import SplitRecord, check_data

    record = SplitRecord.load(split_path)
    if record.task != task:
        raise BadInput(f"{split_path} records a {record.task} split but the artifacts are {task}; "
                       "pass the folder pocketsize export wrote")
    check_data(record, data, split_path)
    return record


def recorded_images(data: Any, preprocessing: dict, split_path: Path | None):
    """The images to evaluate: split.json's test entries, or all of --data without one."""
    from pocketsize.data import ImageData, load_image_data
    from pocketsize.splits import load_images

    if split_path is None:
        log.warning("no split.json beside the artifacts: all of --data %s is evaluated as held-out", data)
        return load_image_data(str(data), preprocessing, val_fraction=0.0, test_fraction=1.0)
    record = _record(split_path, data, "image-classification")
    none = load_images(record, data, "train", preprocessing, 0)
    return ImageData(list(record.labels), none, none, load_images(record, data, "test", preprocessing))


def empty_result(variant: str, fmt: str, art: Any, folder: Path, config: BenchConfig) -> dict[str, Any]:
    """Every results.json key, unmeasured (None), so a failed run still has the full schema."""
    # .get: an Artifact record (its dict view) or a plain dict from the app drivers' tests
    path = folder / str(art.get("path") or "")
    return {
        "variant": variant, "format": fmt, "runtime": RUNTIMES.get(fmt, fmt), "runtime_version": None,
        "artifact": str(path), "quantize": art.get("quantize") or "none",
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


def measure(device: Device, job: Job, res: dict, ev: EvalSet | None, work: Path, config: BenchConfig,
            task: BenchTask | None = None, manifest: Manifest | None = None) -> None:
    """One artifact on the device; every expected failure becomes status failed + error.

    ``task``: what the artifact's task runs and records (images when None)."""
    t0 = time.monotonic()
    task = task or bench_task("image-classification")
    reason = task.unsupported(device, job.format)
    try:
        if reason:
            raise Unsupported(reason)
        task.run(device, job, res, ev, work, config, manifest)
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
            task = bench_task(manifest.task)
            ev = task.prepare(data, manifest, folder, config, dev, scratch, split_for(folder, sets))
            shape = task.shape(manifest, config)
            for i, art in enumerate(manifest.artifacts):
                fmt = art.format
                if config.formats is not None and fmt not in config.formats:
                    continue
                res = empty_result(variant, fmt, art, folder, config)
                doc["results"].append(res)
                if dev_info.get("error"):
                    res["error"] = f"device unavailable: {dev_info['error']}"
                    continue
                if not checked_artifact(art, folder, res):
                    continue
                if task.checks_input and not matching_input(folder / art.path, fmt, shape, res):
                    continue
                job = Job(artifact=(folder / art.path).resolve(), format=fmt, input_shape=shape,
                          warmup=config.warmup, iterations=config.iterations,
                          min_duration_s=config.min_duration_s, threads=config.threads,
                          timeout_s=config.timeout_s, eval_input=ev.path if ev else None,
                          eval_count=ev.count if ev else 0)
                work = scratch / f"{variant}-{i}-{fmt}"
                work.mkdir()
                log.info("bench %s %s on %s", variant, fmt, dev.spec)
                measure(dev, job, res, ev, work, config, task, manifest)
                if write:  # incremental: a later crash of the harness loses nothing measured
                    _write(doc, out)
    doc["seconds"] = round(time.time() - started, 3)
    results = Results.of(doc, WRITING)
    if write:
        results.write(out / "results.json")
        write_report(results, out / "report.html")
    return results.to_json()


WRITING = "the results.json being written"  # a schema error here is a pocketsize bug, not the user's


def _write(doc: dict[str, Any], out: Path) -> None:
    Results.of(doc, WRITING).write(out / "results.json")


def checked_artifact(art: Any, folder: Path, res: dict[str, Any]) -> bool:
    """Is the file on disk the one export checked? Else the row fails naming it (CLI exit 3)."""
    if art.path is None:
        res["error"] = f"not exported: {art.error or 'the export failed'}"
        return False
    try:
        art.verify(folder)
    except ArtifactMismatch as e:
        res.update(error=str(e), integrity="mismatch")
        log.error("%s", e)
        return False
    res["integrity"] = "verified"
    return True


def artifact_input_shape(path: Path, fmt: str) -> tuple[int, ...] | None:
    """The first input's static shape as the artifact itself records it; None when unknown
    (dynamic dims, Core ML, or the reader is not installed)."""
    try:
        if fmt == "onnx":
            import onnx

            dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        elif fmt == "executorch":
            from executorch.runtime import Runtime

            shape = tuple(Runtime.get().load_program(path).metadata("forward").input_tensor_meta(0).sizes())
        else:
            return None
    except ImportError:
        return None
    except Exception as e:  # an unreadable artifact fails in the runner, with its own message
        log.debug("could not read the input shape of %s: %s", path, e)
        return None
    return shape if shape and all(isinstance(d, int) and d > 0 for d in shape) else None


def matching_input(path: Path, fmt: str, shape: tuple[int, ...], res: dict[str, Any]) -> bool:
    """Does the artifact take the input shape the manifest describes? Else the row fails
    naming both: images resized for another shape would run at chance accuracy."""
    actual = artifact_input_shape(path, fmt)
    if actual is None or tuple(actual) == tuple(shape):
        return True
    res["error"] = (f"{path.name} takes input shape {list(actual)} but manifest.json describes {list(shape)} "
                    "(inputs[0].shape / preprocessing.input_size were edited?); re-run `pocketsize export`")
    log.error("%s", res["error"])
    return False


# --- causal LMs ------------------------------------------------------------------------
# The KV-cached decoders of export.llm: .pte through the native runner's decode
# loop (et_runner.cpp --llm-prompt), on this host, emulated ARM64 or an ssh
# board (its Python twin runner/llm_runner.py on this host when g++ is
# missing); .onnx through runner/llm_runner.py (ONNX Runtime's Python API) on
# this host. The phone apps have no decode loop yet.

LM_RUNNER = Path(__file__).resolve().parent / "runner" / "llm_runner.py"
LM_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "llm")
LM_NATIVE_DEVICES = ("local", "qemu-aarch64", "ssh")  # where et_runner's decode loop runs


def lm_unsupported_reason(device: Device, fmt: str) -> str | None:
    if fmt not in ("executorch", "onnx"):
        return f"no {fmt} runner for language models; benchmark the .pte or .onnx"
    if device.kind not in LM_NATIVE_DEVICES:
        return (f"language-model artifacts are benchmarked on --device {', '.join(LM_NATIVE_DEVICES)} so far; "
                "the phone apps have no decode loop yet")
    if device.kind != "local":
        if fmt == "onnx":
            return "the ONNX language-model runner is a host Python script; benchmark the .pte off this host"
        return device.unsupported_reason(fmt)
    if fmt == "onnx":
        return device.unsupported_reason("onnx")
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        return "executorch is not installed; pip install 'pocketsize[executorch]'"
    return None


def prepare_lm_eval(data: Any, manifest: dict, folder: Path, config: BenchConfig, device: Device,
                    scratch: Path, split_path: Path | None = None) -> EvalSet | None:
    """Held-out token chunks (int64) for on-device perplexity; None without data.
    A --data path gives split.json's test chunks (all chunks without one)."""
    if data is None:
        return None
    if isinstance(data, (str, Path)):
        from pocketsize.text import load_tokenizer

        tok_dir = (manifest.get("llm") or {}).get("tokenizer")
        if not tok_dir or not (folder / tok_dir).exists():
            raise BadInput(f"{folder} has no tokenizer/ to read --data with; re-export the model with its tokenizer")
        test = recorded_chunks(data, load_tokenizer(folder / tok_dir), split_path)
    else:
        test = data.test.ids
    want = config.eval_samples if config.eval_samples is not None else device.default_eval_samples
    n = len(test) if want is None else min(int(want), len(test))
    if n <= 0:
        return None
    cache = int(manifest["llm"]["cache_len"])
    length = min(int(test.shape[1]), cache)
    if length < int(test.shape[1]):
        log.warning("perplexity: held-out chunks of %d tokens are cut to %d, the artifact's KV-cache length "
                    "(cache_len in manifest.json); re-export with a larger lm_cache_len to score whole chunks",
                    int(test.shape[1]), length)
    import numpy as np

    path = scratch / f"lm-eval-{n}-{length}.i64"
    np.ascontiguousarray(test[:n, :length].numpy(), dtype="<i8").tofile(path)
    ev = EvalSet(path, None, n)
    ev.length = length  # type: ignore[attr-defined]
    return ev


def recorded_chunks(data: Any, tokenizer: Any, split_path: Path | None):
    """split.json's test chunks, or every chunk of --data without one (none was trained on)."""
    import torch

    from pocketsize.splits import load_chunks
    from pocketsize.text import load_text_data

    if split_path is None:
        log.warning("no split.json beside the artifacts: all of --data %s is evaluated as held-out", data)
        d = load_text_data(str(data), tokenizer)
        return torch.cat([d.test.ids, d.val.ids, d.train.ids])
    return load_chunks(_record(split_path, data, "causal-lm"), data, tokenizer, "test").ids


def lm_token_counts(config: BenchConfig, cache_len: int) -> tuple[int, int]:
    """(prompt, decode) tokens of one timed generation, within the artifact's KV cache
    (prompt + decode <= cache_len); says so when --prompt-tokens/--decode-tokens are cut."""
    if cache_len < 2:
        raise BadInput(f"manifest.json's llm.cache_len is {cache_len}: a generation needs at least 2 "
                       "positions (1 prompt + 1 new token); re-run `pocketsize export`")
    prompt = min(config.prompt_tokens, cache_len - 1)
    if prompt < config.prompt_tokens:
        log.warning("--prompt-tokens %d: using %d, the artifact's KV cache holds %d positions "
                    "(llm.cache_len) and at least one is kept for a new token",
                    config.prompt_tokens, prompt, cache_len)
    decode = min(config.decode_tokens, cache_len - prompt)
    if decode < config.decode_tokens:
        log.warning("--decode-tokens %d: using %d, the artifact's KV cache holds %d positions "
                    "(llm.cache_len) and the prompt takes %d", config.decode_tokens, decode, cache_len, prompt)
    return prompt, decode


def run_lm(device: Device, job: Job, work: Path, lm: dict, ev: EvalSet | None, config: BenchConfig) -> RunOutput:
    import dataclasses
    import shutil
    import sys

    from .devices.local import run_job

    prompt = int(job.input_shape[1])
    decode = min(config.decode_tokens, int(lm["cache_len"]) - prompt)
    eval_len = [] if ev is None else [str(ev.length)]  # type: ignore[attr-defined]
    if job.format == "executorch" and (device.kind != "local" or shutil.which("g++")):
        flags = ["--llm-prompt", str(prompt), "--llm-decode", str(decode), "--llm-vocab", str(int(lm["vocab_size"]))]
        flags += ["--llm-eval-len", *eval_len] if eval_len else []
        return device.run(dataclasses.replace(job, extra_args=tuple(flags)), work)
    argv = [sys.executable, str(LM_RUNNER), *job.runner_args(str(job.artifact), str(work / "out")),
            "--format", job.format, "--prompt-tokens", str(prompt), "--decode-tokens", str(decode),
            "--vocab", str(int(lm["vocab_size"]))]
    argv += ["--eval-len", *eval_len] if eval_len else []
    return run_job(argv, job, work, f"{job.format} LLM runner")


def fill_lm(res: dict, out_dir: Path, out: RunOutput, ev: EvalSet | None, config: BenchConfig) -> None:
    """Tokens/s, time to first token and perplexity from the LLM runner's output."""
    import math

    prefill = [float(ln.split()[1]) for ln in (out_dir / "times.txt").read_text().splitlines()
               if ln.startswith("p ")]
    report = read_json(out_dir / "report.json").get("llm") or {}
    p = int(report.get("prompt_tokens") or 0)
    stats = latency_stats(prefill)
    decode = out.times_ms
    res["llm"] = {**report, "prefill_ms": stats, "decode_ms_per_token": res["latency_ms"],
                  "latency_ms_is": "one decode step (one new token)",
                  "ttft_is": "p50 prefill of the prompt (its last logits give the first token)"}
    if prefill:
        res["ttft_ms"] = stats["p50"]
        res["prefill_tokens_per_s"] = p * 1000.0 * len(prefill) / sum(prefill)
    if decode:
        res["decode_tokens_per_s"] = 1000.0 * len(decode) / sum(decode)
    if ev is not None:
        if out.eval_outputs is None or out.eval_outputs.shape != (ev.count, 2):
            res.update(status="failed", error="the LLM runner returned no perplexity outputs")
            return
        nll, count = float(out.eval_outputs[:, 0].astype("float64").sum()), float(out.eval_outputs[:, 1].sum())
        res["perplexity"] = math.exp(nll / count) if count else None
        res["eval_samples"] = ev.count
        res["eval_tokens"] = int(count)


def _run_image(device: Device, job: Job, res: dict, ev: EvalSet | None, work: Path, config: BenchConfig,
               manifest: Manifest | None) -> None:
    fill_result(res, device.run(job, work), ev, config, device.emulated)


def _run_causal_lm(device: Device, job: Job, res: dict, ev: EvalSet | None, work: Path, config: BenchConfig,
                   manifest: Manifest | None) -> None:
    res.update({k: None for k in LM_KEYS})
    out = run_lm(device, job, work, manifest.llm, ev, config)
    fill_result(res, out, None, config, device.emulated)
    fill_lm(res, work / "out", out, ev, config)


# --- the task axis ---------------------------------------------------------------------

@dataclass(frozen=True)
class BenchTask:
    """What differs between tasks on a device; ``run`` keeps one loop for all."""
    prepare: Callable[..., EvalSet | None]  # (data, manifest, folder, config, device, scratch, split.json)
    shape: Callable[[Manifest, BenchConfig], tuple[int, ...]]  # the timed input
    unsupported: Callable[[Device, str], str | None]  # why a format cannot run on a device, or None
    run: Callable[..., None]  # (device, job, res, ev, work, config, manifest): measure and fill res
    checks_input: bool  # the artifact's own input shape must match the manifest's


BENCH_TASKS = {
    "image-classification": BenchTask(
        prepare=lambda data, m, folder, config, dev, scratch, split: prepare_eval(data, m, config, dev, scratch,
                                                                                  split),
        shape=lambda m, config: input_shape(m),
        unsupported=lambda dev, fmt: dev.unsupported_reason(fmt),
        run=_run_image, checks_input=True),
    "causal-lm": BenchTask(
        prepare=prepare_lm_eval,
        shape=lambda m, config: (1, lm_token_counts(config, int(m.llm["cache_len"]))[0]),
        unsupported=lm_unsupported_reason,
        run=_run_causal_lm, checks_input=False),
}


def bench_task(name: str) -> BenchTask:
    if name not in BENCH_TASKS:
        raise BadInput(f"manifest.json records a {name!r} model; pocketsize bench handles {', '.join(BENCH_TASKS)}")
    return BENCH_TASKS[name]


def _size(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None
