"""``pocketsize run`` and ``pocketsize demo``: compress + export + bench in one go.

The pipeline only calls the stages' verbs (compress.prune, export.export,
benchmarks.run) and writes everything into one atomic output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .errors import BadInput
from .io import atomic_dir, check_out_dir, write_json

log = logging.getLogger(__name__)

DEMO_MODEL = "zoo:dinov2-small"
DEMO_CLASSES = (0, 1, 5, 9)       # T-shirt, Trouser, Sandal, Ankle boot
DEMO_PER_CLASS = 200              # ~100 training images per class after the split


def register(sub: argparse._SubParsersAction) -> None:
    from compress.cli import add_prune_args
    from compress.methods import METHODS

    p = sub.add_parser("run", help="compress + export + bench, original and compressed side by side",
                       description="The whole job on MODEL and DATA; writes compress/, export/, bench/ and summary.json.")
    p.add_argument("model", metavar="MODEL", help="timm:NAME, hf:ID, zoo:NAME or a local model directory")
    p.add_argument("--data", required=True, help="image folder (one subfolder per class) or .txt file/folder")
    p.add_argument("--out", required=True, help="new output folder")
    add_prune_args(p, METHODS)
    _add_run_args(p)
    p.set_defaults(func=run_main)

    d = sub.add_parser("demo", help="the whole job on the embedded default (DINOv2-S on a Fashion-MNIST subset)",
                       description=f"pocketsize run {DEMO_MODEL} on a 4-class Fashion-MNIST subset, ratio 0.5.")
    d.add_argument("--out", default="pocketsize-demo", help="new output folder (default ./pocketsize-demo)")
    d.add_argument("--ratio", type=float, default=0.5, help="fraction of parameters to keep (default 0.5)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--recovery-steps", type=int, default=None, help="total recovery steps (default: compress's)")
    _add_run_args(d, default_to="executorch,onnx,coreml")
    d.set_defaults(func=demo_main)


def _add_run_args(p: argparse.ArgumentParser, default_to: str = "executorch,onnx") -> None:
    p.add_argument("--to", default=default_to, help=f"export formats (default {default_to})")
    p.add_argument("--quantize", default="none", choices=["none", "int8"], help="artifact precision (default none)")
    p.add_argument("--device", default="local", help="benchmark device (default local)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iterations", type=int, default=30)
    from benchmarks.cli import add_lm_args

    add_lm_args(p)


def run(model: Any, data: str, out: str | Path, prune_config=None, to: tuple[str, ...] = ("executorch", "onnx"),
        quantize: str = "none", device: str = "local", bench_config=None, progress=None) -> dict[str, Any]:
    """compress -> export original + compressed -> bench both; returns summary.json's dict."""
    import benchmarks
    import compress
    import export
    from compress.cli import write_outputs

    t0 = time.time()
    check_out_dir(out)
    # validate the cheap things before the expensive ones
    export_cfg_orig = export.ExportConfig(targets=tuple(to), quantize=quantize, data=data,
                                          seed=getattr(prune_config, "seed", 0))
    bench_cfg = bench_config or benchmarks.BenchConfig(seed=getattr(prune_config, "seed", 0))
    log.info("stage 1/3: compress")
    pruned = compress.prune(model, data, prune_config, progress=progress)
    with atomic_dir(out) as tmp:
        write_outputs(pruned, tmp / "compress")
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


def _num(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def print_table(summary: dict[str, Any], results: dict[str, Any], out: Path) -> None:
    from benchmarks.report import status_label

    rows = [("variant", "format", "status", "p50 ms", "accuracy/ppl", "bytes")]
    for r in results.get("results", []):
        metric = r.get("accuracy") if r.get("accuracy") is not None else r.get("perplexity")
        rows.append((r["variant"], r["format"], status_label(r),
                     f"{r['latency_ms']['p50']:.2f}" if r["status"] == "ok" else "-",
                     f"{metric:.4f}" if isinstance(metric, (int, float)) else "-", str(r.get("bytes", "-"))))
    w = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(row)), file=sys.stderr)
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in summary["speedup"].items()) or "n/a"
    print(f"\n{summary['metric']} {summary['before']:.4f} -> {summary['after']:.4f}, params x{summary['params_ratio']:.3f}, "
          f"speedup (p50 original/compressed): {sp}, {summary['seconds']:.0f} s", file=sys.stderr)
    for key, sp_ in (summary.get("llm") or {}).get("tokens_per_s", {}).items():
        par = summary["llm"]["parity"].get(key) or {}
        print(f"{key}: decode {_num(sp_['decode_tokens_per_s'])} tok/s, prefill {_num(sp_['prefill_tokens_per_s'])} "
              f"tok/s, ttft {_num(sp_['ttft_ms'])} ms, greedy parity {par.get('greedy_match')}", file=sys.stderr)
    print(f"artifacts: {out}/export   report: {out}/bench/report.html   summary: {out}/summary.json", file=sys.stderr)


def _bench_cfg(args):
    import benchmarks

    return benchmarks.BenchConfig(warmup=args.warmup, iterations=args.iterations, seed=args.seed,
                                  prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens)


def _targets(s: str) -> tuple[str, ...]:
    from export import target_names

    to = tuple(t.strip() for t in s.split(",") if t.strip())
    bad = [t for t in to if t not in target_names()]
    if bad or not to:
        raise BadInput(f"--to {s!r}: unknown format(s) {bad}; valid: {', '.join(target_names())}")
    return to


def _finish(summary: dict[str, Any], out: Path) -> int:
    results = json.loads((out / "bench" / "results.json").read_text())
    print_table(summary, results, out)
    print(json.dumps({"out": str(out), **{k: summary[k] for k in ("params_ratio", "before", "after", "speedup")}}))
    return 3 if summary.get("parity_errors") else 0


def run_main(args: argparse.Namespace) -> int:
    from compress.cli import config_from_args

    from .progress import StageBars

    cfg = config_from_args(args)
    to = _targets(args.to)
    bars = StageBars()
    try:
        summary = run(args.model, args.data, args.out, cfg, to, args.quantize, args.device, _bench_cfg(args), bars)
    finally:
        bars.close()
    return _finish(summary, Path(args.out))


def demo_data() -> Path:
    """The demo's personal data: a 4-class Fashion-MNIST subset, built once."""
    from compress.zoo import cache_dir

    from .datasets import make_fashion_subset

    return make_fashion_subset(cache_dir().parent / "data" / "fashion-0159-200", DEMO_CLASSES, DEMO_PER_CLASS)


def demo_main(args: argparse.Namespace) -> int:
    from compress.config import PruneConfig

    from .progress import StageBars

    to = _targets(args.to)
    kw = {"ratio": args.ratio, "seed": args.seed}
    if args.recovery_steps is not None:
        kw["recovery_steps"] = args.recovery_steps
    cfg = PruneConfig(**kw)
    check_out_dir(args.out)
    data = demo_data()
    print(f"demo: {DEMO_MODEL} personalized to {data} ({len(DEMO_CLASSES)} classes), keep {args.ratio:.0%} "
          f"of parameters, export {','.join(to)}, bench on {args.device}", file=sys.stderr)
    bars = StageBars()
    try:
        summary = run(DEMO_MODEL, str(data), args.out, cfg, to, args.quantize, args.device, _bench_cfg(args), bars)
    finally:
        bars.close()
    return _finish(summary, Path(args.out))
