"""ExecuTorch for causal LMs: one ``forward(input_ids, cache_position) -> logits``
method with a static KV cache held in the program's mutable buffers, lowered
to XNNPACK.

The token count T is dynamic (1..cache_len): the same method prefills a
prompt (T = prompt length) and decodes (T = 1). The cache persists between
calls of one loaded method; positions come from ``cache_position``, so a new
sequence simply starts again at position 0 (stale entries past the current
position are masked). The cache is stored initialized (zeros).

With ``xnnpack_rewrites`` (default) the graph is traced with eager attention
and a delegate-friendly RMSNorm mean, so more of each layer runs on XNNPACK
(the delegation table is in the manifest; the cache writes, index_put, stay
on portable kernels). int8 / int4: torchao 8da8w / 8da4w on every Linear
(see quantize_linears); the embedding stays fp32. XNNPACK takes the 4-bit
grouped linears (the delegation table counts them) and stores them packed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import failure

FORMAT = "executorch"
SUFFIX = ".pte"
BACKEND = "ExecuTorch/XNNPACK"
METHOD = "forward"

log = logging.getLogger(__name__)


# the weight grid of each --quantize: torchao weight dtype, granularity, manifest words
_SCHEMES = {
    "int8": ("int8", "8da8w", "int8 symmetric per output channel"),
    "int4": ("int4", "8da4w", "int4 symmetric, one scale per group of {g} input weights"),
}


def quantize_linears(model: torch.nn.Module, quantize: str, group_size: int = 32
                     ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A quantized copy of ``model`` (the caller's model stays fp32): every Linear
    gets int8 per-channel (``"int8"``, 8da8w) or int4 grouped (``"int4"``, 8da4w:
    ``group_size`` weights per scale) weights, with activations quantized per
    token at run time. The embedding stays fp32. This copy is the .pte's eager
    twin: int4 parity compares the .pte with it.

    Weight-only int8 (torchao IntxWeightOnlyConfig) would be the natural choice,
    but lowered to XNNPACK with executorch 1.5.1 it produced wrong logits
    (SNR -68 dB on a tiny Llama); the dynamic-activation form is the one
    XNNPACK's kernels take, and it matched eager's greedy tokens. 8da4w is what
    ExecuTorch's own LLM export uses for 4 bits."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    dtype, scheme, weights = _SCHEMES[quantize]
    granularity = PerGroup(int(group_size)) if quantize == "int4" else PerAxis(0)
    q = copy.deepcopy(model)
    quantize_(q, Int8DynamicActivationIntxWeightConfig(weight_dtype=getattr(torch, dtype),
                                                       weight_granularity=granularity))
    info = {"tool": "torchao.quantize_(Int8DynamicActivationIntxWeightConfig)", "ops": ["linear"],
            "scheme": f"dynamic ({scheme})", "weights": weights.format(g=group_size),
            "activations": "int8 per token, quantized at run time", "calibration_samples": 0}
    if quantize == "int4":
        info.update(bits=4, group_size=int(group_size), symmetric=True, embedding="fp32")
    return q, info


def _int4(job: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The job's 8da4w copy and its record, made once: the .pte is lowered from it and checked against it."""
    return job.memo("torchao-int4", lambda: quantize_linears(job.model, "int4", job.config.int4_group_size))


def quantized_twin(job: Any) -> torch.nn.Module | None:
    """The eager model an int4 .pte computes (torchao 8da4w, made once per job), or None.

    export.llm judges an int4 .pte against it (greedy tokens must be equal) and
    reports the distance to fp32 eager as a figure."""
    return _int4(job)[0] if job.quantize == "int4" else None


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """transformers' eager attention while exporting: its additive mask is built
    once per forward, and matmul/softmax are XNNPACK ops, where SDPA decomposes
    into NaN guards (any/eq/where/logical_not) that split every layer off the
    delegate. Same math; parity is checked against the untouched model."""
    cfg = model.config
    old = getattr(cfg, "_attn_implementation", None)
    if enabled:
        cfg._attn_implementation = "eager"
    try:
        yield
    finally:
        if enabled:
            cfg._attn_implementation = old


def export(job: Any, path: Path) -> dict[str, Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    from ..llm_cache import CachedLM
    from ..rewrites import lm_xnnpack_friendly
    from .executorch import delegation_report, why_not_delegated

    info: dict[str, Any] = {"backend": "XnnpackBackend", "method": METHOD}
    try:
        model = job.model
        if job.quantize == "int8":
            model, info["quantization"] = quantize_linears(model, "int8")
        elif job.quantize == "int4":
            model, info["quantization"] = _int4(job)
        wrapper = CachedLM(model, job.cache_len, "buffers")
        example = job.example_inputs()
        tokens = torch.export.Dim("tokens", min=1, max=job.cache_len)
        rewrites = bool(job.config.xnnpack_rewrites)
        with why_not_delegated() as why:
            with torch.no_grad(), eager_attention(model, rewrites), lm_xnnpack_friendly(rewrites):
                ep = torch.export.export(wrapper, example, dynamic_shapes=({1: tokens}, {0: tokens}), strict=False)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*requires gradient.*")
                edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                                   constant_methods=constant_methods(job))
            report = delegation_report(edge.exported_program().graph_module, why.reasons)
        # Mutated buffers are left uninitialized in a .pte unless marked: an
        # unwritten cache slot holding NaN would poison attention (0 * NaN) even
        # where the mask hides it, so the cache is stored as zeros.
        program = edge.to_executorch(ExecutorchBackendConfig(
            passes=[InitializedMutableBufferPass(["k_cache_", "v_cache_"])]))
        path.write_bytes(program.buffer)
    except Exception as e:
        raise failure(BACKEND, e) from e
    report["rewrites"] = ["eager_attention", "rms_norm_mean"] if rewrites else []
    info["delegation"] = report
    if "quantization" in info:  # a quantized linear left to portable kernels would be slow: say how many
        lin = next((o for o in report.get("ops", []) if o["op"] == "aten_linear_default"), None)
        info["quantization"]["linears"] = {"delegated": lin["delegated"] if lin else 0,
                                           "portable": lin["portable"] if lin else 0}
    return info


def constant_methods(job: Any) -> dict[str, Any]:
    """Facts an app reads from the .pte itself (ExecuTorch LLM runner names)."""
    cfg = job.model.config
    out: dict[str, Any] = {"get_max_seq_len": int(job.cache_len), "get_vocab_size": int(cfg.vocab_size),
                           "get_n_layers": len(job.kv_shapes()), "use_kv_cache": True, "enable_dynamic_shape": True}
    if isinstance(getattr(cfg, "bos_token_id", None), int):
        out["get_bos_id"] = int(cfg.bos_token_id)
    eos = getattr(cfg, "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else [e for e in (eos or []) if isinstance(e, int)]
    if eos:
        out["get_eos_ids"] = eos
    return out


def stepper(path: Path, job: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """step(input_ids (1, T), cache_position (T,)) -> logits (1, T, V), cache kept inside."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method(METHOD)

    def step(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return method.execute([ids.contiguous(), pos.contiguous()])[0].detach().float()

    return step
