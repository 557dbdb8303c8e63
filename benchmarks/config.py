"""BenchConfig: how long and how to measure. Frozen, validated, serialized into results.json."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pocketsize.errors import BadInput

FORMAT_VERSION = 1


# the `pocketsize bench` flag of each field: user-facing messages name the flag, not the field
FLAGS = {"warmup": "--warmup", "iterations": "--iterations", "min_duration_s": "--min-duration",
         "threads": "--threads", "timeout_s": "--timeout", "eval_samples": "--eval-samples",
         "formats": "--formats", "prompt_tokens": "--prompt-tokens", "decode_tokens": "--decode-tokens"}


def _flag(name: str) -> str:
    return FLAGS.get(name, f"BenchConfig({name}=)")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Measurement settings shared by every device and runtime.

    warmup: untimed inferences after the first (cold) one.
    iterations: minimum number of timed inferences.
    min_duration_s: keep timing until this much time has passed too (MLPerf-style),
        so fast models get enough samples for stable percentiles.
    threads: runtime thread count (1 gives the steadiest numbers on shared CPUs).
    timeout_s: per-artifact wall-clock limit; past it the runner is killed and the
        result is ``"status": "failed"``.
    eval_samples: how many held-out samples to evaluate on the device; None = the
        device's default (all of the test split locally, fewer under emulation).
    formats: restrict to these artifact formats (None = every artifact in the manifest).
    unstable_cv: coefficient of variation above which a result carries a warning.
    prompt_tokens, decode_tokens: causal LMs only: one timed generation prefills
        this many tokens and then decodes this many (latency_ms is per decode token).
    """

    warmup: int = 5
    iterations: int = 30
    min_duration_s: float = 0.0
    threads: int = 1
    timeout_s: float = 600.0
    eval_samples: int | None = None
    formats: tuple[str, ...] | None = None
    unstable_cv: float = 0.10
    prompt_tokens: int = 64
    decode_tokens: int = 32

    def __post_init__(self) -> None:
        def need_int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise BadInput(f"{_flag(name)} {v!r}: pass a whole number >= {lo} (e.g. {_flag(name)} {max(lo, 1)})")

        need_int("warmup", 0)
        need_int("iterations", 1)
        need_int("threads", 1)
        need_int("prompt_tokens", 1)
        need_int("decode_tokens", 1)
        if self.eval_samples is not None:
            need_int("eval_samples", 0)
        for name in ("min_duration_s", "timeout_s", "unstable_cv"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise BadInput(f"{_flag(name)} {v!r}: pass a finite number >= 0")
        if self.timeout_s <= 0:
            raise BadInput(f"--timeout {self.timeout_s!r}: pass a positive number of seconds (e.g. --timeout 600)")
        if self.formats is not None:
            bad = [f for f in self.formats if f not in ("executorch", "onnx", "coreml")]
            if bad or not self.formats:
                shown = ",".join(map(str, self.formats)) if isinstance(self.formats, (tuple, list)) else self.formats
                raise BadInput(f"--formats {shown!r}: pass a non-empty comma-separated subset of executorch,onnx,coreml")
            object.__setattr__(self, "formats", tuple(self.formats))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("formats") is not None:
            kw["formats"] = tuple(kw["formats"])
        return cls(**kw)
