"""ONNX: the dynamo exporter (torch.onnx.export(dynamo=True)), checked in ONNX Runtime.

int8 goes through onnxruntime.quantization: static QDQ calibrated on the
user's training images when --data is given, dynamic otherwise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from . import Job, Verified, failure

FORMAT = "onnx"
SUFFIX = ".onnx"
BACKEND = "ONNX (torch.onnx dynamo exporter)"

log = logging.getLogger(__name__)

# ONNX Runtime's int8 GEMMs on x86 without VNNI (AVX2, plain AVX-512) add pairs of
# u8 x s8 products in int16 (VPMADDUBSW), which saturates for full-range weights.
# 7-bit weights (reduce_range) keep every pair sum in range. Measured on this AVX2
# host, DINOv2-S pruned to 0.5 for one user: static QDQ 54.6% / SNR 4.3 dB with
# 8-bit weights, 69.3% / 11.7 dB with 7-bit ones (fp32 74.3%); ExecuTorch's int8
# .pte of the same model, 68.6% / 11.8 dB. The artifact is then accurate on every
# CPU; on ARM the cost is one bit of per-channel weight precision.
REDUCE_RANGE = True
WEIGHTS = "int8 per-channel, 7-bit range (reduce_range)"


def _export_fp32(job: Job, dest: Path) -> None:
    chatter = io.StringIO()  # the exporter prints progress to stdout; stdout is for JSON
    with contextlib.redirect_stdout(chatter):
        program = torch.onnx.export(job.module, (job.example,), dynamo=True, opset_version=int(job.config.onnx_opset),
                                    input_names=[job.input_name], output_names=[job.output_name],
                                    verbose=False, external_data=False)
        program.save(str(dest))
    log.debug("torch.onnx: %s", chatter.getvalue())


def _quantize(job: Job, src: Path, dest: Path, tmp: Path) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(str(src), str(pre))
    if job.calib is None:
        return quantize_dynamic_int8(pre, dest)

    calib, name = job.calib, job.input_name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(calib.shape[0]))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {name: calib[i:i + 1].numpy()}

    quantize_static(str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=REDUCE_RANGE, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    return {"tool": "onnxruntime.quantization.quantize_static", "scheme": "static QDQ",
            "weights": WEIGHTS, "activations": "int8", "calibration_samples": int(calib.shape[0])}


def quantize_dynamic_int8(pre: Path, dest: Path) -> dict[str, Any]:
    """Dynamic int8 of every MatMul/Gemm (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(pre), str(dest), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=REDUCE_RANGE, op_types_to_quantize=["MatMul", "Gemm"])
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "scheme": "dynamic",
            "weights": WEIGHTS, "calibration_samples": 0}


def export(job: Job, path: Path) -> dict[str, Any]:
    return export_with(job, path, _export_fp32, lambda src, dest, tmp: _quantize(job, src, dest, tmp))


def export_with(job: Any, path: Path, export_fp32: Callable[[Any, Path], None],
                quantize: Callable[[Path, Path, Path], dict[str, Any]]) -> dict[str, Any]:
    """The ONNX flow every model kind shares: fp32 export (then int8 through a
    temporary fp32 file when asked), backend errors wrapped, graph facts recorded."""
    import onnx

    info: dict[str, Any] = {"delegation": {"applies": False, "reason": "ONNX Runtime assigns nodes to execution "
                                                                  "providers when the session loads"}}
    try:
        if job.quantize == "none":
            export_fp32(job, path)
        else:
            with tempfile.TemporaryDirectory(prefix="pocketsize-onnx-") as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                export_fp32(job, fp32)
                info["quantization"] = quantize(fp32, path, Path(tmp))
    except Exception as e:
        raise failure(BACKEND, e) from e
    model = onnx.load(str(path), load_external_data=False)
    info["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    info["ir_version"] = int(model.ir_version)
    info["ops"] = sorted({n.op_type for n in model.graph.node})
    return info


def cpu_session(path: Path):
    """One-thread CPU session: steady and polite on shared cores."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def verify(path: Path, job: Job, inputs: torch.Tensor) -> Verified:
    sess = cpu_session(path)
    name = sess.get_inputs()[0].name
    outs = [torch.from_numpy(sess.run(None, {name: inputs[i:i + 1].numpy()})[0]) for i in range(inputs.shape[0])]
    return Verified(outputs=torch.cat(outs).float(),
                    structure={"inputs": [i.name for i in sess.get_inputs()],
                               "outputs": [o.name for o in sess.get_outputs()]})
