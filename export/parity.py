"""Numeric comparison of an artifact's outputs with the eager model's."""

from __future__ import annotations

import math
from typing import Any

import torch

SNR_CAP_DB = 300.0  # identical outputs: report a large finite number (JSON has no inf)
FP32_REFERENCE = "fp32 eager"  # a quantized artifact without an eager twin is compared with this


def snr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-noise ratio of ``out`` against ``ref`` in dB (higher is closer)."""
    ref, out = ref.double(), out.double()
    noise = (ref - out).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0.0:
        return SNR_CAP_DB
    if not (math.isfinite(noise) and math.isfinite(signal)):
        return -SNR_CAP_DB  # NaN/inf: worst, never a pass (compare() also fails it with a reason)
    if signal == 0.0:
        return -SNR_CAP_DB
    return min(SNR_CAP_DB, 10.0 * math.log10(signal / noise))


def _non_finite(ref: torch.Tensor, out: torch.Tensor) -> str | None:
    """Why parity cannot pass when either side holds NaN or inf, else None."""
    for name, t, fix in (("eager model", ref, "the model's weights or inputs hold NaN/inf"),
                         ("artifact", out, "the export or its runtime produced NaN/inf")):
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(t).sum().item())
            n_inf = int((~finite).sum().item()) - n_nan
            return f"{name} output has non-finite values ({n_nan} NaN, {n_inf} inf of {t.numel()}): {fix}"
    return None


def thresholds(precision: str, config: Any, on_user_data: bool, reference: str = "eager") -> dict[str, float]:
    """The pass thresholds of one check. ``reference``: what the artifact is
    compared with; int4 distinguishes its quantized eager twin from fp32 eager."""
    if precision == "int4":
        if reference == FP32_REFERENCE:  # no eager twin: loose, and the greedy steps count too (export.llm)
            return {"min_snr_db": float(config.int4_fp32_min_snr_db),
                    "min_greedy_agreement": float(config.int4_fp32_min_top1)}
        return {"min_snr_db": float(config.int4_min_snr_db)}
    if precision == "fp32":
        return {"max_abs_diff": float(config.fp32_atol)}
    if precision == "fp16":
        t = {"min_snr_db": float(config.fp16_min_snr_db)}
        if on_user_data:
            t["min_top1_agreement"] = float(config.fp16_min_top1)
        return t
    t = {"min_snr_db": float(config.int8_min_snr_db)}
    if on_user_data:
        t["min_top1_agreement"] = float(config.int8_min_top1)
    return t


def compare(ref: torch.Tensor, out: torch.Tensor, precision: str, config: Any,
            labels: torch.Tensor | None = None, on_user_data: bool = False, reference: str = "eager") -> dict[str, Any]:
    """Parity record for one artifact (the manifest's ``parity`` object).

    fp32 must match to ``fp32_atol`` scaled by the logits' magnitude (an
    absolute 1e-4 is meaningless for logits in the hundreds); fp16 and int8
    are judged by SNR, and on the user's data also by top-1 agreement.
    """
    if out.shape != ref.shape:
        return {"checked": True, "passed": False, "samples": int(ref.shape[0]),
                "reason": f"output shape {list(out.shape)} differs from eager {list(ref.shape)}"}
    ref, out = ref.float(), out.float()
    bad = _non_finite(ref, out)
    if bad is not None:  # NaN compares False with every threshold: never let it pass
        return {"checked": True, "passed": False, "samples": int(ref.shape[0]), "precision": precision,
                "max_abs_diff": None, "mean_abs_diff": None, "snr_db": None, "top1_agreement": None,
                "thresholds": thresholds(precision, config, on_user_data, reference), "reason": bad}
    diff = (ref - out).abs()
    rec: dict[str, Any] = {
        "checked": True,
        "samples": int(ref.shape[0]),
        "precision": precision,
        "max_abs_diff": float(diff.max().item()) if diff.numel() else 0.0,
        "mean_abs_diff": float(diff.mean().item()) if diff.numel() else 0.0,
        "snr_db": snr_db(ref, out),
        "top1_agreement": float((ref.argmax(-1) == out.argmax(-1)).float().mean().item()),
        "reason": None,
    }
    if labels is not None:
        rec["accuracy"] = {"eager": float((ref.argmax(-1) == labels).float().mean().item()),
                           "artifact": float((out.argmax(-1) == labels).float().mean().item())}
    t = thresholds(precision, config, on_user_data, reference)
    rec["thresholds"] = t
    problems = []
    if "max_abs_diff" in t:
        scale = max(1.0, float(ref.abs().max().item()))
        rec["thresholds"]["max_abs_diff_scaled"] = t["max_abs_diff"] * scale
        if rec["max_abs_diff"] > t["max_abs_diff"] * scale:
            problems.append(f"max_abs_diff {rec['max_abs_diff']:.3g} > {t['max_abs_diff'] * scale:.3g}")
    if "min_snr_db" in t and rec["snr_db"] < t["min_snr_db"]:
        problems.append(f"SNR {rec['snr_db']:.1f} dB < {t['min_snr_db']:.1f} dB")
    if "min_top1_agreement" in t and rec["top1_agreement"] < t["min_top1_agreement"]:
        problems.append(f"top-1 agreement {rec['top1_agreement']:.3f} < {t['min_top1_agreement']:.3f}")
    rec["passed"] = not problems
    if problems:
        rec["reason"] = "; ".join(problems)
    return rec
