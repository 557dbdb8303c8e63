"""``pocketsize run`` and ``pocketsize demo``: compress + export + bench in one go.

The pipeline only calls the stages' verbs (compress.prune, export.export,
benchmarks.run) and writes everything into one atomic output folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .io import atomic_dir, check_out_dir, write_json

log = logging.getLogger(__name__)

DEMO_MODEL = "zoo:dinov2-small"
DEMO_CLASSES = (0, 1, 5, 9)       # T-shirt, Trouser, Sandal, Ankle boot
DEMO_PER_CLASS = 200              # ~100 training images per class after the split


def run(model: Any, data: str, out: str | Path, prune_config=None, to: tuple[str, ...] = ("executorch", "onnx"),
        quantize: str = "none", device: str = "local", bench_config=None, progress=None) -> dict[str, Any]:
    """compress -> export original + compressed -> bench both; returns summary.json's dict."""
    from pocketsize import benchmarks
    from pocketsize import compress
    from pocketsize import export

    t0 = time.time()
    check_out_dir(out)
    # validate the cheap things before the expensive ones
    export_cfg_orig = export.ExportConfig(targets=tuple(to), quantize=quantize, data=data,
                                          seed=getattr(prune_config, "seed", 0))
    bench_cfg = bench_config or benchmarks.BenchConfig(seed=getattr(prune_config, "seed", 0))
    log.info("stage 1/3: compress")
    pruned = compress.prune(model, data, prune_config, progress=progress)
    with atomic_dir(out) as tmp:
        compress.write_outputs(pruned, tmp / "compress")
        (tmp / "export").mkdir()
        log.info("stage 2/3: export (original and compressed)")
        parity_errors = []
        for variant, src in (("original", pruned.teacher), ("compressed", pruned.loaded)):
            try:
                export.export(src, tmp / "export" / variant, export_cfg_orig, data=pruned.data)
            except Exception as e:  # a parity failure is reported, the run goes on to measure
                from .errors import ParityError

                if not isinstance(e, ParityError):
                    raise
                parity_errors.append(str(e))
        log.info("stage 3/3: bench on %s", device)
        results = benchmarks.run(tmp / "export", device=device, config=bench_cfg, data=pruned.data,
                                 out_dir=tmp / "bench")
        summary = summarize(pruned.report, results, time.time() - t0)
        if pruned.report.get("metric") == "perplexity":
            summary["llm"] = summarize_lm(pruned.report, results, tmp / "export")
        summary["parity_errors"] = parity_errors
        write_json(tmp / "summary.json", summary)
    return summary


def summarize(report: dict[str, Any], results: dict[str, Any], seconds: float) -> dict[str, Any]:
    p50: dict[tuple[str, str], float] = {}
    for r in results.get("results", []):
        if r.get("status") == "ok" and r.get("quantize", "none") in ("none", None):
            p50[(r["variant"], r["format"])] = r["latency_ms"]["p50"]
    speedup = {fmt: p50[("original", fmt)] / p50[("compressed", fmt)]
               for (v, fmt) in p50 if v == "original" and ("compressed", fmt) in p50 and p50[("compressed", fmt)] > 0}
    return {"params_ratio": report["params_ratio"], "metric": report["metric"], "before": report["before"],
            "after": report["after"], "params_before": report["params_before"], "params_after": report["params_after"],
            "p50_ms": {f"{v}/{f}": ms for (v, f), ms in sorted(p50.items())},
            "speedup": speedup, "seconds": round(seconds, 1)}


def summarize_lm(report: dict[str, Any], results: dict[str, Any], export_dir: Path) -> dict[str, Any]:
    """The language-model view: personal perplexity, greedy-token parity per
    artifact, and tokens/s per variant and format."""
    from .io import read_json

    parity = {}
    for variant in ("original", "compressed"):
        m = export_dir / variant / "manifest.json"
        for a in (read_json(m).get("artifacts") or []) if m.exists() else []:
            p = a.get("parity") or {}
            g = p.get("greedy") or {}
            parity[f"{variant}/{a['format']}"] = {
                "checked": p.get("checked"), "passed": p.get("passed"), "greedy_tokens": g.get("new_tokens"),
                "greedy_match": g.get("match"), "max_abs_diff": p.get("max_abs_diff"), "reason": p.get("reason")}
    speed = {}
    for r in results.get("results", []):
        speed[f"{r['variant']}/{r['format']}"] = {
            "status": r["status"], "prefill_tokens_per_s": r.get("prefill_tokens_per_s"),
            "decode_tokens_per_s": r.get("decode_tokens_per_s"), "ttft_ms": r.get("ttft_ms"),
            "peak_rss_mb": r.get("peak_rss_mb"), "perplexity": r.get("perplexity"), "error": r.get("error")}
    return {"perplexity": {"before": report["before"], "after": report["after"], "split": "held-out"},
            "parity": parity, "tokens_per_s": speed}


def demo_data() -> Path:
    """The demo's personal data: a 4-class Fashion-MNIST subset, built once."""
    from pocketsize.zoo import cache_dir

    from .datasets import make_fashion_subset

    return make_fashion_subset(cache_dir().parent / "data" / "fashion-0159-200", DEMO_CLASSES, DEMO_PER_CLASS)


