"""The image-classification task of the export flow: a (1, C, H, W) float
input, the eager logits on held-out images as the parity reference, and a
manifest that says how to preprocess an image."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from . import parity as _parity
from .artifacts import OUTPUT_NAME, tool_versions
from .config import ExportConfig
from .source import Inputs, Source, make_inputs
from .targets import Job
from .tasks import ExportTask, Prepared


class ImageExport(ExportTask):
    name = "image-classification"

    def prepare(self, src: Source, config: ExportConfig, data: Any) -> Prepared:
        inputs = make_inputs(src, config, data)
        with torch.no_grad():
            ref = torch.cat([src.module(inputs.parity[i:i + 32]).float()
                             for i in range(0, inputs.parity.shape[0], 32)])
            example_out = src.module(inputs.parity[:1])
        job = Job(module=src.module, example=inputs.parity[:1].clone(), input_name=src.input_name,
                  output_name=OUTPUT_NAME, quantize=config.quantize, calib=inputs.calib, config=config)
        return Prepared(
            job=job,
            check=lambda target, path: _check(target, path, job, inputs, ref, config),
            manifest=lambda artifacts, out, seconds: _manifest(src, config, job, example_out, inputs, artifacts,
                                                               seconds),
            split=inputs.split)


def _check(target: Any, path: Path, job: Job, inputs: Inputs, ref: torch.Tensor,
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
