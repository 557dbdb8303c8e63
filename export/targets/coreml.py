"""Core ML: an mlprogram .mlpackage (fp16 compute by default, iOS 17 by default).

coremltools converts on any OS but predicts only on macOS. On Linux, verify()
checks the structure (inputs, outputs, shapes, op list) and reports parity as
not checked, with the reason: never a fake pass.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import torch

from pocketsize.errors import BadInput

from . import Job, Verified, failure

FORMAT = "coreml"
SUFFIX = ".mlpackage"
BACKEND = "Core ML (coremltools)"
NO_PREDICT_REASON = "Core ML prediction needs macOS"

log = logging.getLogger(__name__)


def _can_predict() -> bool:
    return platform.system() == "Darwin"


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """coremltools logs every graph pass at INFO and warns about untested torch
    versions and its missing macOS runtime at import; keep stderr readable."""
    quiet = logging.getLogger("coremltools")
    old = quiet.level
    quiet.setLevel(logging.ERROR)  # incl. import-time version warnings on Linux
    try:
        yield
    finally:
        quiet.setLevel(old)


@contextlib.contextmanager
def _deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C (and a caught SIGTERM/SIGHUP) while coremltools imports, then deliver it.

    coremltools' __init__ wraps imports in bare ``except:`` clauses, which
    swallow a KeyboardInterrupt raised inside them (export then ran on and
    exited 0). A signal that arrives is recorded and re-sent once the import is
    done, to whatever handler was installed before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    hits: list[int] = []
    previous: dict[int, Any] = {}
    for sig in (getattr(signal, n) for n in names if hasattr(signal, n)):
        old = signal.getsignal(sig)
        if callable(old):  # a Python handler raises inside the import; SIG_DFL/SIG_IGN cannot be swallowed
            previous[sig] = old
            signal.signal(sig, lambda signum, frame: hits.append(signum))
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if hits:
        signal.raise_signal(hits[0])
        raise KeyboardInterrupt  # the previous handler returned: still never a silent success


def import_coremltools() -> Any:
    """``import coremltools``, never losing a Ctrl-C (see _deferred_signals)."""
    import sys

    ct = sys.modules.get("coremltools")
    if ct is not None and getattr(ct, "target", None) is not None:  # imported completely before
        return ct
    with _deferred_signals():
        import coremltools
    return coremltools


def deployment_target(name: str) -> Any:
    """``ct.target.<name>``; BadInput listing the names this coremltools knows."""
    ct = import_coremltools()

    target = getattr(ct.target, name, None)
    if target is None:
        valid = [t for t in dir(ct.target) if not t.startswith("_")]
        raise BadInput(f"coreml_target {name!r} is unknown to coremltools {ct.__version__}; "
                       f"valid: {', '.join(valid)}")
    return target


def compute_precision(config: Any) -> Any:
    ct = import_coremltools()

    return ct.precision.FLOAT16 if config.coreml_precision == "fp16" else ct.precision.FLOAT32


def quantize_weights(ml: Any, quantize: str = "int8", group_size: int = 32) -> tuple[Any, dict[str, Any]]:
    """Weight-only quantization of a converted mlprogram, symmetric: int8 per output
    channel, or int4 per block of ``group_size`` input weights (blockwise int4
    needs iOS18 / macOS15, which language models get anyway)."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    if quantize == "int4":
        op = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                     block_size=int(group_size))
        words: dict[str, Any] = {"weights": f"int4 symmetric, one scale per block of {group_size} input weights",
                                 "bits": 4, "group_size": int(group_size), "symmetric": True}
    else:
        op = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
        words = {"weights": "int8 symmetric per-channel"}
    return linear_quantize_weights(ml, config=OptimizationConfig(global_config=op)), {
        "tool": "coremltools.optimize.coreml.linear_quantize_weights", "scheme": "weight-only", **words,
        "calibration_samples": 0}


def export(job: Job, path: Path) -> dict[str, Any]:
    with quiet_coremltools():
        return _export(job, path)


def _export(job: Job, path: Path) -> dict[str, Any]:
    ct = import_coremltools()

    target = deployment_target(job.config.coreml_target)
    precision = compute_precision(job.config)
    try:
        ep = torch.export.export(job.module, (job.example,)).run_decompositions({})
        ml = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=target, compute_precision=precision,
                        inputs=[ct.TensorType(name=job.input_name, shape=tuple(job.example.shape))],
                        outputs=[ct.TensorType(name=job.output_name)], skip_model_load=not _can_predict())
        info: dict[str, Any] = {"delegation": {"applies": False, "reason": "Core ML picks CPU/GPU/Neural Engine "
                                                                         "per op on the device"},
                                "deployment_target": job.config.coreml_target,
                                "compute_precision": job.config.coreml_precision}
        if job.quantize == "int8":
            ml, info["quantization"] = quantize_weights(ml)
        ml.save(str(path))
        deterministic_package(path)
    except BadInput:
        raise
    except Exception as e:
        raise failure(BACKEND, e) from e
    return info


PACKAGE_UUID_NAMESPACE = "pocketsize.mlpackage"


def deterministic_package(path: Path) -> None:
    """Make a saved .mlpackage byte-reproducible: coremltools names the package's items
    (Manifest.json's itemInfoEntries keys and rootModelIdentifier) with random UUIDs, the
    only bytes that differ between two saves of the same model. Each is replaced by a
    UUID derived from the item's path (uuid5), so exporting the same model twice gives
    the same files and the same sha256 in manifest.json. Everything else is untouched."""
    import json
    import uuid

    manifest = path / "Manifest.json"
    if not manifest.is_file():
        return
    doc = json.loads(manifest.read_text())
    items = doc.get("itemInfoEntries")
    if not isinstance(items, dict):
        return
    ns = uuid.uuid5(uuid.NAMESPACE_URL, PACKAGE_UUID_NAMESPACE)
    rename = {old: str(uuid.uuid5(ns, str(entry.get("path") if isinstance(entry, dict) else old)))
              for old, entry in items.items()}
    if len(set(rename.values())) != len(rename):
        return  # two items share a path: keep coremltools' names rather than merge them
    doc["itemInfoEntries"] = {rename[k]: v for k, v in sorted(items.items(), key=lambda kv: rename[kv[0]])}
    if doc.get("rootModelIdentifier") in rename:
        doc["rootModelIdentifier"] = rename[doc["rootModelIdentifier"]]
    manifest.write_text(json.dumps(doc, indent=4) + "\n")


def structure_of(path: Path) -> dict[str, Any]:
    ct = import_coremltools()

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    ops: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    return {
        "spec_version": int(spec.specificationVersion),
        "inputs": [{"name": i.name, "shape": [int(s) for s in i.type.multiArrayType.shape]} for i in spec.description.input],
        "outputs": [{"name": o.name, "shape": [int(s) for s in o.type.multiArrayType.shape]} for o in spec.description.output],
        "ops": dict(sorted(ops.items())),
    }


def verify(path: Path, job: Job, inputs: torch.Tensor) -> Verified:
    structure = structure_of(path)
    problems = []
    want_in = {"name": job.input_name, "shape": list(job.example.shape)}
    if structure["inputs"] != [want_in]:
        problems.append(f"inputs are {structure['inputs']}, expected [{want_in}]")
    out_names = [o["name"] for o in structure["outputs"]]
    if out_names != [job.output_name]:
        problems.append(f"outputs are {out_names}, expected [{job.output_name!r}]")
    with torch.no_grad():
        want_out = list(job.module(job.example).shape)
    got_out = structure["outputs"][0]["shape"] if structure["outputs"] else []
    if got_out and got_out != want_out:  # an empty shape means "flexible": accepted
        problems.append(f"output shape is {got_out}, eager gives {want_out}")
    if not structure["ops"]:
        problems.append("the ML program has no operations")
    if not _can_predict():
        return Verified(reason=NO_PREDICT_REASON, structure=structure, problems=problems)
    ct = import_coremltools()

    ml = ct.models.MLModel(str(path))
    outs = [torch.from_numpy(ml.predict({job.input_name: inputs[i:i + 1].numpy()})[job.output_name])
            for i in range(inputs.shape[0])]
    return Verified(outputs=torch.cat(outs).float(), structure=structure, problems=problems)
