"""``pocketsize bench ARTIFACT_DIR --device DEVICE [--data DATA] [--warmup N] [--iterations N] --out DIR``."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand; its handler is :func:`main`."""
    p = subparsers.add_parser(
        "bench", help="measure latency, memory and on-device accuracy of exported artifacts",
        description="Run every artifact of an export folder on a device; writes results.json and report.html.")
    p.add_argument("artifact_dir", metavar="ARTIFACT_DIR",
                   help="folder written by `pocketsize export` (or one holding original/ and compressed/)")
    p.add_argument("--data", help="the user's data; the test entries of ARTIFACT_DIR's split.json are "
                                  "evaluated on the device (no split.json: all of it)")
    p.add_argument("--out", required=True, help="new output folder")
    add_bench_args(p)
    p.set_defaults(func=main)
    return p


def add_bench_args(p: argparse.ArgumentParser, formats: bool = True) -> None:
    """The bench stage's flags, declared once: `bench`, `run` and `demo` all call this.

    Help texts show BenchConfig's own defaults. ``formats=False`` leaves out --formats
    (`run`/`demo` bench exactly the formats they export with --to). --data and --out
    belong to each command."""
    from pocketsize.benchmarks.config import BenchConfig

    d = BenchConfig()
    p.add_argument("--device", default="local",
                   help="benchmark device: local, qemu-aarch64, ssh://user@host[:port], adb[:serial], ios[:udid] "
                        "(default: local)")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed runs after the first (default {d.warmup})")
    p.add_argument("--iterations", type=int, default=d.iterations,
                   help=f"minimum timed runs (default {d.iterations})")
    p.add_argument("--min-duration", type=float, default=d.min_duration_s, metavar="S",
                   help=f"keep timing for at least S seconds (default {d.min_duration_s:g})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"runtime threads (default {d.threads}: steadiest numbers)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, metavar="S",
                   help=f"per-artifact time limit; past it the run is marked failed (default {d.timeout_s:g})")
    p.add_argument("--eval-samples", type=int, default=d.eval_samples, metavar="N",
                   help="held-out samples to evaluate, from every class (default: all locally, 16 under emulation)")
    if formats:
        p.add_argument("--formats", help="comma-separated subset of executorch,onnx,coreml")
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens, metavar="N",
                   help=f"language models: tokens prefilled per timed generation (default {d.prompt_tokens})")
    p.add_argument("--decode-tokens", type=int, default=d.decode_tokens, metavar="N",
                   help=f"language models: tokens decoded one at a time after it (default {d.decode_tokens})")


def bench_config_from_args(args: argparse.Namespace):
    """BenchConfig from the flags of :func:`add_bench_args` (validated: bad flags are exit 2)."""
    from pocketsize.benchmarks import BenchConfig

    fs = getattr(args, "formats", None)
    formats = tuple(f.strip() for f in fs.split(",") if f.strip()) if fs else None
    return BenchConfig(warmup=args.warmup, iterations=args.iterations, min_duration_s=args.min_duration,
                       threads=args.threads, timeout_s=args.timeout, eval_samples=args.eval_samples,
                       formats=formats, prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens)


def main(args: argparse.Namespace) -> int:
    from pocketsize.benchmarks import run

    config = bench_config_from_args(args)
    doc = run(args.artifact_dir, device=args.device, config=config, data=args.data, out_dir=args.out)
    for r in doc["results"]:
        st = r["latency_ms"]
        acc = "" if r.get("accuracy") is None else f" acc {r['accuracy']:.4f} (n={r['eval_samples']})"
        line = (f"{r['variant']:<10} {r['format']:<10} {r['status']:<6} "
                + (f"p50 {st['p50']:.3f} ms  p90 {st['p90']:.3f} ms  peak RSS {r['peak_rss_mb']} MB{acc}"
                   if r["status"] == "ok" else str(r.get("error"))))
        print(line, file=sys.stderr)
    print(json.dumps({"out": str(args.out), "ok": sum(r["status"] == "ok" for r in doc["results"]),
                      "failed": sum(r["status"] != "ok" for r in doc["results"])}))
    # partial failures are data (status/error in results.json); nothing measured at all is an error.
    # A file that is not the one export checked is worse than a failure: its numbers would describe
    # some other model, so the command says so with the parity exit code (3).
    if any(r.get("integrity") == "mismatch" for r in doc["results"]):
        return 3
    return 0 if any(r["status"] == "ok" for r in doc["results"]) else 1
