"""export(): every requested artifact written, checked and described in manifest.json."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from pocketsize.io import atomic_dir, check_out_dir, write_json

from . import parity as _parity
from .artifacts import MANIFEST_VERSION, OUTPUT_NAME, artifact_name, export_one, raise_failures, tool_versions  # noqa: F401
from .config import ExportConfig
from .source import Inputs, Source, make_inputs, resolve
from .targets import Job

log = logging.getLogger(__name__)



def export(model: Any, out_dir: str | Path, config: ExportConfig | None = None, *, data: Any = None) -> dict[str, Any]:
    """Write the artifacts ``config.targets`` asks for into ``out_dir`` with manifest.json.

    ``model``: a MODEL spec or directory, a ``pocketsize.loading.Loaded``, a stock
    timm/transformers module, or an :class:`pocketsize.export.Source`. ``data``: an
    already-loaded ``pocketsize.data.ImageData`` (else ``config.data`` is read);
    for a causal LM a ``pocketsize.text.TextData``. Returns the manifest. Every
    artifact is written even when one fails; then ParityError (exit 3) names
    the failures. Output is atomic. Causal LMs go through :mod:`pocketsize.export.llm`
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
        if inputs.split is not None:  # bench evaluates exactly its test entries
            from pocketsize.splits import SPLIT_FILE

            inputs.split.save(tmp / SPLIT_FILE)
    raise_failures(artifacts, out_dir)
    return manifest


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


def _manifest(src: Source, config: ExportConfig, job: Job, example_out: torch.Tensor, inputs: Inputs,
              artifacts: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    from .manifest import Manifest

    pp = src.preprocessing
    return Manifest.build(
        artifacts,
        source=src.name,
        compression=src.meta.get("compress"),  # method/ratio/seed when the source was pruned by pocketsize
        task=src.task,
        family=src.meta.get("family"),
        labels=src.meta.get("labels") or inputs.class_names,
        preprocessing=pp,
        inputs=[{"name": job.input_name, "shape": list(job.example.shape), "dtype": "float32",
                 "layout": pp.get("layout", "NCHW"), "color": pp.get("color", "RGB"),
                 "normalized": "(x / 255 - mean) / std"}],
        outputs=[{"name": job.output_name, "shape": list(example_out.shape), "dtype": "float32"}],
        parity_inputs=inputs.record,
        config=config.to_dict(),
        tools=tool_versions(),
        host={"os": platform.system(), "arch": platform.machine()},
        seconds=round(seconds, 3),
    ).to_json()
