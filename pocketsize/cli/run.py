"""``pocketsize run`` and ``pocketsize demo``: flags, the closing table, exit codes.

The work itself is :func:`pocketsize.pipeline.run`; this module only parses
flags and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from pocketsize.io import check_out_dir
from pocketsize.pipeline import DEFAULT_TO, DEMO_CLASSES, DEMO_MODEL, demo_data, run


def register(sub: argparse._SubParsersAction) -> None:
    from pocketsize.cli.compress import add_prune_args
    from pocketsize.compress.methods import METHODS

    p = sub.add_parser("run", help="compress + export + bench, original and compressed side by side",
                       description="The whole job on MODEL and DATA; writes compress/, export/, bench/ and summary.json.")
    p.add_argument("model", metavar="MODEL", help="timm:NAME, hf:ID, zoo:NAME or a local model directory")
    p.add_argument("--data", required=True, help="image folder (one subfolder per class) or .txt file/folder")
    p.add_argument("--out", required=True, help="new output folder")
    add_prune_args(p, METHODS)
    _add_run_args(p, default_to=",".join(DEFAULT_TO))
    p.set_defaults(func=run_main)

    d = sub.add_parser("demo", help="the whole job on the embedded default (DINOv2-S on a Fashion-MNIST subset)",
                       description=f"pocketsize run {DEMO_MODEL} on a 4-class Fashion-MNIST subset; "
                                   "every compress, export and bench flag of `run` applies.")
    d.add_argument("--out", default="pocketsize-demo", help="new output folder (default ./pocketsize-demo)")
    add_prune_args(d, METHODS)
    _add_run_args(d, default_to="executorch,onnx,coreml")
    d.set_defaults(func=demo_main)


def _add_run_args(p: argparse.ArgumentParser, default_to: str) -> None:
    """Export and bench flags, each declared once next to its stage's own command."""
    from pocketsize.cli.bench import add_bench_args
    from pocketsize.cli.export import add_export_args

    add_export_args(p, default_to=default_to)
    add_bench_args(p, formats=False)  # run benches exactly the --to formats


def _cell(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def print_table(summary: dict[str, Any], results: dict[str, Any], out: Path) -> None:
    from pocketsize.benchmarks.report import status_label

    # the deployment table: every artifact of the run side by side (summary.json["deployment"])
    rows = [("variant", "format", "precision", "status", "MB", "peak MB", "p50 ms", "decode tok/s", "accuracy/ppl",
             "parity")]
    labels = {(r["variant"], r["format"]): status_label(r) for r in results.get("results", [])}
    for d in summary.get("deployment", []):
        metric = d["accuracy"] if d.get("accuracy") is not None else d.get("perplexity")
        rows.append((d["variant"], d["format"], d["precision"], labels.get((d["variant"], d["format"]), d["status"]),
                     _cell(d["file_mb"], ".1f"), _cell(d["peak_rss_mb"], ".0f"), _cell(d["p50_ms"], ".2f"),
                     _cell(d.get("decode_tokens_per_s"), ".1f"), _cell(metric, ".4f"),
                     d["parity"] + (f" ({d['snr_db']:.1f} dB)" if d.get("snr_db") is not None else "")))
    w = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(row)), file=sys.stderr)
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in summary["speedup"].items()) or "n/a"
    print(f"\n{summary['metric']} {summary['before']:.4f} -> {summary['after']:.4f}, params x{summary['params_ratio']:.3f}, "
          f"speedup (p50 original/compressed): {sp}, {summary['seconds']:.0f} s", file=sys.stderr)
    ft = (summary.get("references") or {}).get("finetuned")
    if ft is not None:
        print(f"unpruned model with the same recovery budget (references.finetuned): {summary['metric']} {ft:.4f}",
              file=sys.stderr)
    gen = ((summary.get("llm") or {}).get("perplexity") or {}).get("general")
    if gen:
        print(f"perplexity on text that is not the user's ({gen['text']}): {gen['base']:.2f} -> {gen['after']:.2f}"
              + (f", fine-tuned reference {gen['finetuned']:.2f}" if gen.get("finetuned") is not None else ""),
              file=sys.stderr)
    lat = summary.get("latency")
    if lat:
        print(f"latency ({lat['runtime']}, {lat['threads']} thread(s)): target {lat['target_ms']:g} ms, predicted "
              f"{lat['predicted_ms']:.2f} ms, measured {_cell(lat['measured_ms'], '.1f')} ms", file=sys.stderr)
    for key, sp_ in (summary.get("llm") or {}).get("tokens_per_s", {}).items():
        par = summary["llm"]["parity"].get(key) or {}
        speeds = ", ".join(f"{name} {_cell(sp_[k], '.1f')} {unit}" for name, k, unit in (
            ("decode", "decode_tokens_per_s", "tok/s"), ("prefill", "prefill_tokens_per_s", "tok/s"),
            ("ttft", "ttft_ms", "ms")))
        print(f"{key}: {speeds}, greedy parity {par.get('greedy_match')}", file=sys.stderr)
    print(f"artifacts: {out}/export   report: {out}/bench/report.html   summary: {out}/summary.json", file=sys.stderr)


def _stage_configs(args: argparse.Namespace, data: str | None):
    """Every stage's config from the flags, all validated before any heavy work."""
    from pocketsize.cli.bench import bench_config_from_args
    from pocketsize.cli.compress import check_generic, config_from_args
    from pocketsize.cli.export import export_config_from_args

    cfg = config_from_args(args)
    export_cfg = export_config_from_args(args, data=data)
    bench_cfg = bench_config_from_args(args)
    check_generic(args)
    return cfg, export_cfg, bench_cfg


def _finish(summary: dict[str, Any], out: Path) -> int:
    results = json.loads((out / "bench" / "results.json").read_text())
    print_table(summary, results, out)
    print(json.dumps({"out": str(out), **{k: summary[k] for k in ("params_ratio", "before", "after", "speedup")}}))
    if summary.get("parity_errors"):
        return 3
    rows = results.get("results", [])
    if not any(r.get("status") == "ok" for r in rows):  # as `pocketsize bench`: nothing measured is an error
        print(f"pocketsize: error: every benchmark failed ({len(rows)} artifact(s)); see {out}/bench/results.json "
              "for each error", file=sys.stderr)
        return 1
    return 0


def run_main(args: argparse.Namespace) -> int:
    from pocketsize.progress import StageBars

    cfg, export_cfg, bench_cfg = _stage_configs(args, args.data)
    bars = StageBars()
    try:
        summary = run(args.model, args.data, args.out, cfg, device=args.device, bench_config=bench_cfg,
                      progress=bars, export_config=export_cfg, generic=args.generic, runtime=args.runtime)
    finally:
        bars.close()
    return _finish(summary, Path(args.out))


def demo_main(args: argparse.Namespace) -> int:
    from pocketsize.progress import StageBars

    cfg, export_cfg, bench_cfg = _stage_configs(args, None)
    check_out_dir(args.out)
    data = demo_data()
    export_cfg = dataclasses.replace(export_cfg, data=str(data))
    size = (f"prune to {cfg.target_latency_ms:g} ms ({args.runtime})" if cfg.target_latency_ms
            else f"keep {cfg.ratio:.0%} of parameters")
    print(f"demo: {DEMO_MODEL} personalized to {data} ({len(DEMO_CLASSES)} classes), {size}, "
          f"export {','.join(export_cfg.targets)}, bench on {args.device}", file=sys.stderr)
    bars = StageBars()
    try:
        summary = run(DEMO_MODEL, str(data), args.out, cfg, device=args.device, bench_config=bench_cfg,
                      progress=bars, export_config=export_cfg, generic=args.generic, runtime=args.runtime)
    finally:
        bars.close()
    return _finish(summary, Path(args.out))
