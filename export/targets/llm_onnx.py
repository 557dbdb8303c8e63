"""ONNX for causal LMs: a decode loop over a fixed-size KV cache.

One graph ``(input_ids (1, T), cache_position (T,), key_cache_0, value_cache_0,
...) -> (logits (1, T, V), present_key_cache_0, present_value_cache_0, ...)``.
Each cache tensor is (1, kv_heads_i, cache_len, head_dim_i): fixed size, so
per-layer widths of a pruned model are just different input shapes. The
caller starts with zeros and feeds every step's ``present_*`` back as the
next step's cache (ONNX graphs hold no state). T is dynamic: prefill and
decode are the same graph. int8: onnxruntime dynamic quantization of MatMul
/ Gemm weights (per channel), as for image models. int4: ONNX Runtime's
MatMulNBits (4-bit blocks of ``int4_group_size`` input weights, each
block's min and max exact: Q4_1's grid), the lm_head and the embedding as
one 8-bit table (GatherBlockQuantized reads the lm_head's), see
quantize_int4 and export/int4_onnx.py. Both run after quant_pre_process.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from .onnx import BACKEND  # noqa: F401  (export.api names a failed artifact's backend by target.BACKEND)

FORMAT = "onnx"
SUFFIX = ".onnx"

log = logging.getLogger(__name__)


def cache_names(n_layers: int) -> list[str]:
    return [f"{kind}_cache_{i}" for i in range(n_layers) for kind in ("key", "value")]


def _export_fp32(job: Any, dest: Path) -> None:
    from ..llm_cache import CachedLM

    wrapper = CachedLM(job.model, job.cache_len, "io")
    ids, pos = job.example_inputs()
    kv = wrapper.empty_cache()
    names = cache_names(wrapper.num_layers)
    tokens = torch.export.Dim("tokens", min=1, max=job.cache_len)
    chatter = io.StringIO()  # the exporter prints progress to stdout; stdout is for JSON
    with contextlib.redirect_stdout(chatter), torch.no_grad():
        program = torch.onnx.export(
            wrapper, (ids, pos, kv), dynamo=True, opset_version=int(job.config.onnx_opset),
            input_names=["input_ids", "cache_position", *names],
            output_names=["logits", *[f"present_{n}" for n in names]],
            dynamic_shapes=({1: tokens}, {0: tokens}, [None] * len(kv)), verbose=False, external_data=False)
        program.save(str(dest))
    log.debug("torch.onnx: %s", chatter.getvalue())


def _quantize(job: Any, src: Path, dest: Path, tmp: Path) -> dict[str, Any]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx import quantize_dynamic_int8

    pre = tmp / "pre.onnx"
    quant_pre_process(str(src), str(pre))
    if job.quantize == "int4":
        return quantize_int4(pre, dest, int(job.config.int4_group_size))
    return quantize_dynamic_int8(pre, dest)


def quantize_int4(pre: Path, dest: Path, group_size: int) -> dict[str, Any]:
    """4-bit blocks of ``group_size`` along K for every MatMul, the lm_head and the embedding at 8 bits in
    one shared table (pocketsize.export.int4_onnx; the settings and why: docs/int4.md)."""
    import onnx

    from ..int4_onnx import HEAD8_ACCURACY_LEVEL, Int4Settings, quantize_model

    settings = Int4Settings(group_size=int(group_size))
    model = onnx.load(str(pre))
    done = quantize_model(model, settings)
    onnx.save(model, str(dest))
    g, head = int(group_size), settings.head_bits
    return {"tool": "pocketsize.export.int4_onnx (ONNX Runtime MatMulNBits, GatherBlockQuantized)",
            "ops": ["MatMul", "Gather"], "bits": 4, "group_size": g,
            "scheme": "4-bit weights (MatMulNBits)" + (
                ", int8 activations per block" if settings.accuracy_level == 4 else ", fp32 activations"),
            "symmetric": False,
            "weights": f"int4 blocks of {g} input weights, each with its min and max exact (scale and offset: "
                       "llama.cpp's Q4_1 grid)",
            "lm_head": f"int{head} symmetric blocks of {g}" + (
                f", int8 activations (accuracy_level {HEAD8_ACCURACY_LEVEL})" if head == 8 else ""),
            "activations": "fp32" if not settings.accuracy_level else
                           f"int8 per block of {g}, inside the kernel (accuracy_level {settings.accuracy_level})",
            "accuracy_level": settings.accuracy_level, "settings": settings.record(),
            "matmuls_quantized": done["matmuls_quantized"], "matmuls_kept": done["matmuls_kept"],
            "embedding": done["embedding"], "lm_head_tied": done["lm_head_tied"], "calibration_samples": 0}


def export(job: Any, path: Path) -> dict[str, Any]:
    from .onnx import export_with

    return export_with(job, path, _export_fp32, lambda src, dest, tmp: _quantize(job, src, dest, tmp))


def stepper(path: Path, job: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """step(input_ids (1, T), cache_position (T,)) -> logits (1, T, V); the cache
    outputs are fed back in, so the caller sees the same interface as the .pte."""
    import numpy as np
    from .onnx import cpu_session

    sess = cpu_session(path)
    names = [i.name for i in sess.get_inputs()[2:]]
    state = {i.name: np.zeros([int(d) for d in i.shape], dtype=np.float32) for i in sess.get_inputs()[2:]}

    def step(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = sess.run(None, {"input_ids": ids.numpy(), "cache_position": pos.numpy(), **state})
        state.update(zip(names, out[1:]))
        return torch.from_numpy(out[0]).float()

    return step
