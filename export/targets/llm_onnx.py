"""ONNX for causal LMs: a decode loop over a fixed-size KV cache.

One graph ``(input_ids (1, T), cache_position (T,), key_cache_0, value_cache_0,
...) -> (logits (1, T, V), present_key_cache_0, present_value_cache_0, ...)``.
Each cache tensor is (1, kv_heads_i, cache_len, head_dim_i): fixed size, so
per-layer widths of a pruned model are just different input shapes. The
caller starts with zeros and feeds every step's ``present_*`` back as the
next step's cache (ONNX graphs hold no state). T is dynamic: prefill and
decode are the same graph. int8: onnxruntime dynamic quantization of MatMul
/ Gemm weights (per channel), as for image models. int4: ONNX Runtime's
MatMulNBits (4-bit blockwise weights, one fp32 scale per block of
``int4_group_size`` input weights, symmetric like the .pte's 8da4w), see
quantize_int4. Both run after quant_pre_process, which folds the tied
lm_head's transpose into a constant, so the lm_head is quantized too (the
embedding Gather keeps the fp32 table).
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


# MatMulNBits' accuracy_level: unset (0) dequantizes the 4-bit weights and
# multiplies in fp32, the kernel closest to fp32 eager; 4 quantizes activations
# to int8 (ExecuTorch's 8da4w arithmetic). See docs/int4.md for both on this host.
ACCURACY_LEVEL: int | None = None
SYMMETRIC = True  # as torchao's 8da4w and Core ML's linear_symmetric: one 4-bit grid everywhere


def quantize_int4(pre: Path, dest: Path, group_size: int) -> dict[str, Any]:
    """Every MatMul with a constant weight -> MatMulNBits (4-bit blocks of ``group_size`` along K)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # a line per node at INFO
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        q = MatMulNBitsQuantizer(onnx.load(str(pre)), bits=4, block_size=int(group_size), is_symmetric=SYMMETRIC,
                                 accuracy_level=ACCURACY_LEVEL, op_types_to_quantize=("MatMul",))
        q.process()
        q.model.save_model_to_file(str(dest), False)
    finally:
        chatty.setLevel(level)
    n = sum(1 for node in onnx.load(str(dest), load_external_data=False).graph.node if node.op_type == "MatMulNBits")
    return {"tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer", "ops": ["MatMul"],
            "scheme": "weight-only (MatMulNBits)", "bits": 4, "group_size": int(group_size), "symmetric": SYMMETRIC,
            "weights": f"int4 {'symmetric' if SYMMETRIC else 'asymmetric'}, one scale per block of {group_size} "
                       "input weights",
            "activations": "fp32" if not ACCURACY_LEVEL else f"accuracy_level {ACCURACY_LEVEL}",
            "accuracy_level": ACCURACY_LEVEL or 0, "matmuls_quantized": n, "embedding": "fp32",
            "calibration_samples": 0}


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
