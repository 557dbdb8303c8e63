"""Latency statistics and the stability check (pure functions, no I/O)."""

from __future__ import annotations

import math
from typing import Sequence


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted list."""
    if not sorted_xs:
        return math.nan
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def latency_stats(times_ms: Sequence[float]) -> dict[str, float | None]:
    """min/p50/p90/p99/mean/std (+max, trimmed mean, cv) in ms; None when there are no samples."""
    xs = sorted(float(t) for t in times_ms)
    if not xs:
        return {k: None for k in ("min", "p50", "p90", "p99", "mean", "std", "max", "trimmed_mean", "cv")}
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    cut = n // 10  # ExecuTorch's benchmark apps report a trimmed mean; keep it comparable
    trimmed = xs[cut:n - cut] or xs
    return {
        "min": xs[0], "p50": percentile(xs, 50), "p90": percentile(xs, 90),
        "p99": percentile(xs, 99), "mean": mean, "std": std, "max": xs[-1],
        "trimmed_mean": sum(trimmed) / len(trimmed),
        "cv": std / mean if mean > 0 else None,
    }


def stability_warnings(stats: dict[str, float | None], n: int, max_cv: float) -> list[str]:
    """Human-readable warnings when the spread says the numbers should not be trusted."""
    out = []
    cv, p50, p99 = stats.get("cv"), stats.get("p50"), stats.get("p99")
    if n < 10:
        out.append(f"only {n} timed runs: percentiles are rough; raise --iterations")
    if cv is not None and cv > max_cv:
        out.append(f"unstable: std/mean = {cv:.2f} > {max_cv:.2f}; the machine was busy or "
                   "throttling; close other work, pin threads, or raise --iterations")
    if p50 and p99 and p99 > 2.0 * p50:
        out.append(f"long tail: p99 {p99:.3g} ms > 2x p50 {p50:.3g} ms")
    return out
