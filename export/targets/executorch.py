"""ExecuTorch: torch.export -> XNNPACK-lowered edge program -> .pte.

int8 uses XNNPACK's PT2E quantizer on Linear and Conv2d weights and
activations: static, calibrated on the user's training images when --data is
given; dynamic (activations quantized at run time) otherwise, so that no
statistics are invented from random inputs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from . import Job, Verified, failure

FORMAT = "executorch"
SUFFIX = ".pte"
BACKEND = "ExecuTorch/XNNPACK"

log = logging.getLogger(__name__)

# Ops that only move or reinterpret data; the "compute" share leaves them out.
_LAYOUT = ("view_copy", "permute_copy", "expand_copy", "squeeze_copy", "unsqueeze_copy", "select_copy",
           "slice_copy", "clone", "_clone_dim_order", "_to_dim_order_copy", "alias_copy", "getitem",
           "quantize_per_tensor", "dequantize_per_tensor", "dequantize_per_channel", "quantize_per_channel",
           "choose_qparams")
_WHY_LOGGER = "executorch.backends.xnnpack.partition"  # parent of every config module's logger


def _quantize(module: torch.nn.Module, job: Job) -> torch.nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = job.calib is None
    qcfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    # Linear/Conv only: the elementwise and normalization ops stay fp32, which
    # keeps accuracy; they are a small share of the time in a ViT.
    quantizer = XNNPACKQuantizer().set_module_type(torch.nn.Linear, qcfg)
    if not dynamic:
        quantizer.set_module_type(torch.nn.Conv2d, qcfg)
    gm = torch.export.export(module, (job.example,)).module()
    prepared = prepare_pt2e(gm, quantizer)
    if not dynamic:
        for i in range(job.calib.shape[0]):
            prepared(job.calib[i:i + 1])
    else:
        prepared(job.example)
    return convert_pt2e(prepared)


def _fold_skip() -> set:
    """Ops constant propagation must leave alone: folding the weight
    quantize/dequantize pairs would store fp32 weights and hide the int8
    pattern XNNPACK looks for."""
    from executorch.exir.passes.constant_prop_pass import _DEFAULT_SKIP_TARGETS

    skip = set(_DEFAULT_SKIP_TARGETS) | {torch.ops.aten.full.default}
    qd = torch.ops.quantized_decomposed
    for name in ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel",
                 "choose_qparams", "quantize_per_token", "dequantize_per_token",
                 "choose_qparams_per_token_asymmetric"):
        try:
            packet = getattr(qd, name)
        except (AttributeError, RuntimeError):
            continue
        skip |= {getattr(packet, o) for o in packet.overloads()}
    return skip


class _WhyCollector(logging.Handler):
    """Collects the partitioner's 'why not partitioned' reasons per op."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        why = record.msg
        node = getattr(why, "node", None)
        if node is not None and getattr(node, "target", None) is not None:
            op = _op_name(node.target)
            self.reasons.setdefault(op, str(getattr(why, "reason", "")))


@contextlib.contextmanager
def why_not_delegated() -> Iterator[_WhyCollector]:
    """Within the block, collect the XNNPACK partitioner's reasons for the ops it declines."""
    why = _WhyCollector()
    why_logger = logging.getLogger(_WHY_LOGGER)
    old_level, old_prop = why_logger.level, why_logger.propagate
    why_logger.addHandler(why)
    why_logger.setLevel(logging.DEBUG)
    why_logger.propagate = False
    try:
        yield why
    finally:
        why_logger.removeHandler(why)
        why_logger.setLevel(old_level)
        why_logger.propagate = old_prop


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    return name if "." in name else str(target)


def export(job: Job, path: Path) -> dict[str, Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ..rewrites import xnnpack_friendly

    rewrites = bool(job.config.xnnpack_rewrites)
    try:
        with why_not_delegated() as why:
            with xnnpack_friendly(rewrites), torch.no_grad():
                module = _quantize(job.module, job) if job.quantize == "int8" else job.module
                ep = torch.export.export(module, (job.example,))
                if rewrites:
                    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

                    # folds input-independent subgraphs (attention masks built from
                    # shapes, position-embedding resizes) into constants
                    ep = constant_prop_pass(ep, custom_skip_targets=_fold_skip())
            with warnings.catch_warnings():
                # constant propagation leaves folded tensors flagged requires_grad; harmless
                warnings.filterwarnings("ignore", message=".*requires gradient.*")
                edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            report = delegation_report(edge.exported_program().graph_module, why.reasons)
        program = edge.to_executorch()
        path.write_bytes(program.buffer)
    except Exception as e:
        raise failure(BACKEND, e) from e
    report["rewrites"] = ["layer_norm", "scaled_dot_product_attention", "mean"] if rewrites else []
    info: dict[str, Any] = {"delegation": report, "backend": "XnnpackBackend"}
    if job.quantize == "int8":
        info["quantization"] = {"tool": "pt2e XNNPACKQuantizer", "ops": ["linear", "conv2d"],
                                "scheme": "dynamic" if job.calib is None else "static",
                                "weights": "int8 symmetric per-channel",
                                "calibration_samples": 0 if job.calib is None else int(job.calib.shape[0])}
    return info


def delegation_report(gm: torch.fx.GraphModule, reasons: dict[str, str]) -> dict[str, Any]:
    """Which ops XNNPACK took, which stayed on portable kernels, and why."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(gm)
    df = info.get_operator_delegation_dataframe()
    ops, kept = [], []
    compute = compute_delegated = 0
    for row in df.itertuples(index=False):
        op, d, n = str(row[0]), int(row[1]), int(row[2])
        if op == "Total":
            continue
        layout = any(op.startswith(f"aten_{p}") or op.startswith(p) or p in op for p in _LAYOUT)
        ops.append({"op": op, "delegated": d, "portable": n, "kind": "layout" if layout else "compute"})
        if not layout:
            compute += d + n
            compute_delegated += d
        if n:
            kept.append({"op": op, "count": n, "kind": "layout" if layout else "compute",
                         "why": _reason_for(op, reasons)})
    total_d = sum(o["delegated"] for o in ops)
    total = total_d + sum(o["portable"] for o in ops)
    return {
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "compute_ops": compute,
        "compute_ops_delegated": compute_delegated,
        "compute_share": (compute_delegated / compute) if compute else 1.0,
        "ops_share": (total_d / total) if total else 1.0,
        "not_delegated": kept,
        "ops": ops,
    }


def _reason_for(op: str, reasons: dict[str, str]) -> str:
    # dataframe names look like aten_linear_default; partitioner targets like aten.linear.default
    for target, why in reasons.items():
        if target.replace(".", "_").replace("::", "_") == op or target.split(".")[-2:-1] == [op]:
            return why
    if op == "getitem":
        return "tuple access between delegate calls; not an operator"
    return "the XNNPACK partitioner has no kernel for this op; it runs on ExecuTorch portable kernels"


def verify(path: Path, job: Job, inputs: torch.Tensor) -> Verified:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    method = program.load_method("forward")
    outs = [method.execute([inputs[i:i + 1].contiguous()])[0] for i in range(inputs.shape[0])]
    return Verified(outputs=torch.cat([o.detach().float() for o in outs]))
