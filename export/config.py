"""ExportConfig: every knob of the export stage, validated up front."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketsize.errors import BadInput

CONFIG_VERSION = 1
QUANTIZE = ("none", "int8", "int4")
INT8_ACTIVATIONS = ("static", "dynamic")
_COREML_TARGET = re.compile(r"^(iOS|macOS|tvOS|watchOS)\d+$")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how strictly to check it.

    targets: keys of ``pocketsize.export.targets.TARGETS`` (a tuple, or a comma string such
        as ``"executorch,onnx"``).
    quantize: ``"none"`` (fp32; Core ML fp16 compute), ``"int8"`` or ``"int4"``
        (causal LMs only: 4-bit grouped weights, see ``int4_group_size``).
    data: the user's ImageFolder; parity runs on the test files of the model
        folder's split.json and int8 calibration on its train files (without a
        split.json all of it is held out). Without data both use seeded random
        inputs shaped like the model input.
    seed: seeds only those random inputs; the data split is split.json's.
    parity_samples: held-out (or random) inputs each artifact is checked on.
    calib_samples: training images used to calibrate static int8.
    int8_activations: ``"static"`` (scales calibrated on the user's training
        images, int8 between layers) or ``"dynamic"`` (each input's activations
        quantized at run time: one scale per token in ExecuTorch/XNNPACK, per
        input tensor in ONNX Runtime; no calibration). Weights are int8 per
        channel either way.
    int4_group_size: weights per 4-bit group (one scale each, along the input
        dimension of every Linear): a power of two >= 16 (ONNX Runtime's
        MatMulNBits takes no other) that divides every Linear's in-features.
    The ``*_atol`` / ``*_snr_db`` / ``*_top1`` fields are the pass thresholds per
    precision; they are written into every parity record.
    Causal LMs (``pocketsize.export.llm``): ``data`` is the user's .txt file or folder (the
    parity prompt is the start of a held-out chunk); ``lm_cache_len`` is the
    KV-cache size (prompt + generated tokens, capped by the model's positions);
    ``lm_new_tokens`` greedy tokens every artifact must reproduce;
    ``lm_prompt_tokens`` prompt length; ``lm_prompt`` the fixed prompt used
    without data.
    """

    targets: tuple[str, ...] = ("executorch", "onnx", "coreml")
    quantize: str = "none"
    data: str | None = None
    seed: int = 0
    parity_samples: int = 64
    calib_samples: int = 32
    int8_activations: str = "static"
    int4_group_size: int = 32
    # thresholds (see export.parity)
    fp32_atol: float = 1e-4          # max |eager - artifact|, scaled by max(1, max|eager|)
    fp16_min_snr_db: float = 30.0
    fp16_min_top1: float = 0.95
    int8_min_snr_db: float = 12.0
    int8_min_top1: float = 0.9       # only enforced on the user's data (random inputs make ties)
    # int4 LMs (export.llm): the .pte must reproduce its quantized eager twin's greedy
    # tokens and match its logits to int4_min_snr_db; the .onnx (no eager twin) is
    # judged against fp32 eager by SNR and the share of greedy steps on eager's token
    int4_min_snr_db: float = 20.0
    int4_fp32_min_snr_db: float = 10.0
    int4_fp32_min_top1: float = 0.75
    # backend options
    onnx_opset: int = 18
    coreml_target: str = "iOS17"
    coreml_precision: str = "fp16"
    xnnpack_rewrites: bool = True    # express LayerNorm/SDPA in ops XNNPACK takes (see export.rewrites)
    # causal LMs
    lm_cache_len: int = 256
    lm_new_tokens: int = 16
    lm_prompt_tokens: int = 16
    lm_prompt: str = "Once upon a time, in a small town by the sea, there lived"

    def __post_init__(self) -> None:
        from .targets import target_names  # light: names only, no toolchains

        targets = self.targets
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(","))
        targets = tuple(dict.fromkeys(t.strip().lower() for t in targets if t and t.strip()))
        if not targets:
            raise BadInput(f"--to is empty; pass one or more of {','.join(target_names())}")
        unknown = [t for t in targets if t not in target_names()]
        if unknown:
            raise BadInput(f"unknown export target(s) {', '.join(unknown)}; valid: {', '.join(target_names())}")
        object.__setattr__(self, "targets", targets)
        if self.quantize not in QUANTIZE:
            raise BadInput(f"--quantize {self.quantize!r} is not supported; use one of {', '.join(QUANTIZE)}")
        if self.data is not None:
            data = Path(self.data)
            if not data.exists():
                raise BadInput(f"--data {data} does not exist; pass the user's data (a folder with one subfolder of "
                               "images per class; for a language model a .txt file or folder)")
            object.__setattr__(self, "data", str(data))
        if int(self.parity_samples) < 1:
            raise BadInput(f"--parity-samples {self.parity_samples}: check at least 1 input")
        if self.int8_activations not in INT8_ACTIVATIONS:
            raise BadInput(f"--int8-activations {self.int8_activations!r}: use one of {', '.join(INT8_ACTIVATIONS)}")
        g = self.int4_group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 16 or g & (g - 1):
            raise BadInput(f"--group-size {g!r}: use a power of two >= 16 (e.g. 32, 64, 128; ONNX Runtime's "
                           "4-bit MatMul takes no other)")
        if int(self.calib_samples) < 1:
            raise BadInput(f"--calib-samples {self.calib_samples}: calibrate on at least 1 input")
        if not 13 <= int(self.onnx_opset) <= 23:
            raise BadInput(f"onnx_opset={self.onnx_opset}: use an opset between 13 and 23 (default 18)")
        if not _COREML_TARGET.match(str(self.coreml_target)):
            raise BadInput(f"--coreml-target {self.coreml_target!r}: use a name like iOS17, iOS18 or macOS14")
        if self.coreml_precision not in ("fp16", "fp32"):
            raise BadInput(f"coreml_precision={self.coreml_precision!r}: use fp16 or fp32")
        if int(self.lm_new_tokens) < 1 or int(self.lm_prompt_tokens) < 1:
            raise BadInput("lm_new_tokens and lm_prompt_tokens must be >= 1")
        if int(self.lm_cache_len) < int(self.lm_prompt_tokens) + int(self.lm_new_tokens):
            raise BadInput(f"lm_cache_len={self.lm_cache_len} cannot hold the parity prompt and its "
                           f"{self.lm_new_tokens} new tokens; use at least {self.lm_prompt_tokens + self.lm_new_tokens}")
        if self.fp32_atol <= 0:
            raise BadInput(f"fp32_atol={self.fp32_atol}: must be > 0")

    def precision(self, fmt: str) -> str:
        """The numeric precision an artifact of format ``fmt`` is written and checked at."""
        if self.quantize in ("int8", "int4"):
            return self.quantize
        return self.coreml_precision if fmt == "coreml" else "fp32"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExportConfig":
        d = {k: v for k, v in d.items() if k != "version"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BadInput(f"unknown ExportConfig keys {sorted(unknown)}; valid keys: {sorted(known)}")
        if "targets" in d:
            d["targets"] = tuple(d["targets"]) if not isinstance(d["targets"], str) else d["targets"]
        return cls(**d)
