"""Core ML for causal LMs: a stateful mlprogram whose KV cache is Core ML state.

One function ``forward(input_ids (1, T), cache_position (T,)) -> logits (1, T, V)``
like the .pte. T is a flexible dimension (1..cache_len, torch.export's dynamic
dim becomes a Core ML range), so prefill and decode are one model. Each
layer's cache is a pair of states ``k_cache_i`` / ``v_cache_i`` of shape
(1, kv_heads_i, cache_len, head_dim_i), read and written in place by the model
(``pocketsize.export.llm_cache`` mode ``state``): per-layer widths of a pruned model are
just different state shapes. Apps keep one ``MLState`` (``makeState()``) per
conversation; a new sequence starts again at position 0 (stale entries past
the current position are masked).

Why these choices: stateful models (iOS 18 / macOS 15) keep the cache inside
Core ML instead of copying it in and out every token, so the deployment
target is raised to iOS18 when ``coreml_target`` is lower. Inputs are int32
(Core ML has no int64 arrays). fp16 compute by default (``coreml_precision``;
the states are then fp16 too), logits come back as fp32. int8: weight-only,
per channel, as for image models; int4: weight-only, symmetric, one scale per
block of ``int4_group_size`` input weights (constexpr_blockwise_shift_scale,
counted by verify()).

coremltools converts on any OS but predicts only on macOS. There, parity runs
the greedy check through ``make_state()`` + ``predict(..., state=...)``;
elsewhere ``verify()`` checks the saved spec (inputs, token range, output,
one key and one value state per layer with its shape, spec version) and
parity is reported as not checked, with the reason: never a fake pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from . import Verified, failure
from .coreml import (BACKEND, NO_PREDICT_REASON, _can_predict, compute_precision, deployment_target,
                     deterministic_package, import_coremltools,
                     quantize_weights, quiet_coremltools)
from .coreml import structure_of as image_structure

FORMAT = "coreml"
SUFFIX = ".mlpackage"
INPUTS = ["input_ids", "cache_position"]
OUTPUT = "logits"
STATEFUL_TARGET = "iOS18"   # first Core ML with model state (macOS 15)
STATEFUL_SPEC = 9           # its specificationVersion
BLOCKWISE_OP = "constexpr_blockwise_shift_scale"  # iOS18's per-block dequantization of a constant weight


def state_names(n_layers: int) -> list[str]:
    """State names in layer order (k_cache_0, v_cache_0, ...): CachedLM's buffer names."""
    return [f"{kind}_cache_{i}" for i in range(n_layers) for kind in ("k", "v")]


def expected_states(job: Any) -> list[dict[str, Any]]:
    """One key and one value state per layer, (1, kv_heads_i, cache_len, head_dim_i)."""
    return [{"name": f"{kind}_cache_{i}", "shape": [1, kv, int(job.cache_len), d]}
            for i, (kv, d) in enumerate(job.kv_shapes()) for kind in ("k", "v")]


def _target(name: str) -> tuple[Any, str, str | None]:
    """(ct target, its name, why it differs from ``name``): at least iOS18."""
    ct = import_coremltools()

    target = deployment_target(name)
    if target < ct.target.iOS18:
        return ct.target.iOS18, STATEFUL_TARGET, f"raised from {name}: stateful models need iOS18 / macOS15"
    return target, name, None


def _exported(job: Any) -> torch.export.ExportedProgram:
    from ..llm_cache import CachedLM

    wrapper = CachedLM(job.model, job.cache_len, "state")
    tokens = torch.export.Dim("tokens", min=1, max=job.cache_len)
    with torch.no_grad():
        ep = torch.export.export(wrapper, job.example_inputs(), dynamic_shapes=({1: tokens}, {0: tokens}),
                                 strict=False)
    return _drop_aliases(ep.run_decompositions({}))


def _drop_aliases(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """aten.alias (transformers' ``logits_to_keep`` slice) is an identity that
    coremltools' torch.export frontend has no converter for: use its input."""
    graph = ep.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    ep.graph_module.recompile()
    return ep


def export(job: Any, path: Path) -> dict[str, Any]:
    with quiet_coremltools():
        return _export(job, path)


def _export(job: Any, path: Path) -> dict[str, Any]:
    ct = import_coremltools()
    import numpy as np

    target, target_name, raised = _target(job.config.coreml_target)
    info: dict[str, Any] = {
        "delegation": {"applies": False, "reason": "Core ML picks CPU/GPU/Neural Engine per op on the device"},
        "deployment_target": target_name, "compute_precision": job.config.coreml_precision,
        "input_dtype": "int32", "states": state_names(len(job.kv_shapes()))}
    if raised:
        info["deployment_target_note"] = raised
    try:
        ml = ct.convert(_exported(job), convert_to="mlprogram", minimum_deployment_target=target,
                        compute_precision=compute_precision(job.config),
                        outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)], skip_model_load=not _can_predict())
        if job.quantize != "none":
            ml, info["quantization"] = quantize_weights(ml, job.quantize, int(job.config.int4_group_size))
        ml.save(str(path))
        deterministic_package(path)
    except Exception as e:
        raise failure(BACKEND, e) from e
    return info


# --- checks ------------------------------------------------------------------------

def structure_of(path: Path) -> dict[str, Any]:
    """The image target's facts (spec version, inputs, outputs, op counts) plus
    each input's size ranges and the states."""
    ct = import_coremltools()

    out = image_structure(path)
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    ranges = {i.name: [[int(r.lowerBound), int(r.upperBound)] for r in i.type.multiArrayType.shapeRange.sizeRanges]
              for i in spec.description.input}
    for i in out["inputs"]:
        i["ranges"] = ranges.get(i["name"], [])
    out["states"] = [{"name": s.name, "shape": [int(d) for d in s.type.stateType.arrayType.shape]}
                     for s in spec.description.state]
    return out


def problems_in(structure: dict[str, Any], job: Any) -> list[str]:
    """Mismatches between the saved spec and the interface export.llm promises."""
    got_in = [i["name"] for i in structure["inputs"]]
    problems = [] if got_in == INPUTS else [f"inputs are {got_in}, expected {INPUTS}"]
    tokens = [1, int(job.cache_len)]
    for i in structure["inputs"]:
        if i["ranges"] and i["ranges"][-1] != tokens:
            problems.append(f"{i['name']} takes {i['ranges'][-1]} tokens, expected {tokens}")
        elif not i["ranges"]:
            problems.append(f"{i['name']} has a fixed shape: prefill and decode need a flexible token count")
    got_out = [o["name"] for o in structure["outputs"]]
    if got_out != [OUTPUT]:
        problems.append(f"outputs are {got_out}, expected [{OUTPUT!r}]")
    want = expected_states(job)
    if structure["states"] != want:
        problems.append(f"states are {structure['states']}, expected {want}")
    if structure["spec_version"] < STATEFUL_SPEC:
        problems.append(f"spec version {structure['spec_version']} < {STATEFUL_SPEC} (iOS18): no model state")
    if structure["ops"].get("write_state", 0) != len(want):  # each cache written once per call
        problems.append(f"{structure['ops'].get('write_state', 0)} write_state ops for {len(want)} states")
    if job.quantize == "int4" and not structure["ops"].get(BLOCKWISE_OP):
        problems.append(f"no {BLOCKWISE_OP} op: the weights were not quantized blockwise")
    return problems


def verify(path: Path, job: Any) -> Verified:
    """Structural checks anywhere; ``reason`` set where Core ML cannot predict
    (then export.llm reports parity as not checked instead of stepping)."""
    with quiet_coremltools():
        structure = structure_of(path)
    return Verified(reason=None if _can_predict() else NO_PREDICT_REASON, structure=structure,
                    problems=problems_in(structure, job))


def stepper(path: Path, job: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """step(input_ids (1, T), cache_position (T,)) -> logits (1, T, V); the KV
    cache lives in one MLState, zeroed first (macOS only)."""
    ct = import_coremltools()
    import numpy as np
    from coremltools.proto import FeatureTypes_pb2

    ml = ct.models.MLModel(str(path))
    state = ml.make_state()
    dtypes = {s.name: s.type.stateType.arrayType.dataType for s in ml.get_spec().description.state}
    fp16 = FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    for s in expected_states(job):
        # zeros, not whatever the fresh state holds: an unwritten slot holding
        # NaN would poison attention (0 * NaN) even where the mask hides it
        state.write_state(name=s["name"], value=np.zeros(s["shape"], np.float16 if dtypes[s["name"]] == fp16
                                                          else np.float32))

    def step(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = ml.predict({"input_ids": ids.numpy().astype(np.int32), "cache_position": pos.numpy().astype(np.int32)},
                         state=state)
        return torch.from_numpy(np.asarray(out[OUTPUT], dtype=np.float32))

    return step
