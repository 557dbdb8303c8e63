"""`pocketsize export MODEL_DIR --to executorch,onnx,coreml [--quantize none|int8|int4] [--data DATA] --out DIR`.

Parses flags and calls export.export; nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys

from pocketsize.export.targets import target_names


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="write ExecuTorch / ONNX / Core ML artifacts, each checked against the eager model",
        description="Export a model to phone formats; every artifact is checked against eager PyTorch "
                    "and described in DIR/manifest.json. Exit 3 when an artifact fails its check.")
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="DIR/model written by pocketsize compress, a save_pretrained / save_for_hf folder, "
                        "or a timm:/hf:/zoo: name")
    p.add_argument("--data", default=None,
                   help="your data: parity on the test files of MODEL_DIR/split.json, int8 calibration on "
                        "its train files (no split.json: all of it is held out)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    add_export_args(p)
    p.set_defaults(func=handle, handler=handle)
    return p


def add_export_args(p: argparse.ArgumentParser, default_to: str | None = None) -> None:
    """The export stage's flags, declared once: `export`, `run` and `demo` all call this.

    ``default_to`` None makes --to required (`export`). Help texts show ExportConfig's own
    defaults. --data and --out belong to each command."""
    from pocketsize.export.config import INT8_ACTIVATIONS, QUANTIZE, ExportConfig

    d = ExportConfig()
    if default_to is None:
        p.add_argument("--to", required=True, metavar="TARGETS",
                       help=f"comma-separated formats: {','.join(target_names())}")
    else:
        p.add_argument("--to", default=default_to, metavar="TARGETS",
                       help=f"comma-separated export formats: {','.join(target_names())} (default {default_to})")
    p.add_argument("--quantize", default=d.quantize, choices=list(QUANTIZE),
                   help=f"precision (default {d.quantize}); int4 (4-bit grouped weights) is for language models")
    p.add_argument("--group-size", type=int, default=d.int4_group_size, metavar="N",
                   help="int4: weights per 4-bit group, a power of two >= 16 dividing every Linear's "
                        f"in-features (default {d.int4_group_size})")
    p.add_argument("--parity-samples", type=int, default=d.parity_samples, metavar="N",
                   help=f"held-out inputs each artifact is checked on, from every class (default {d.parity_samples})")
    p.add_argument("--calib-samples", type=int, default=d.calib_samples, metavar="N",
                   help=f"training images (from every class) for static int8 calibration (default {d.calib_samples})")
    p.add_argument("--int8-activations", default=d.int8_activations, choices=list(INT8_ACTIVATIONS),
                   help="int8 activations: scales calibrated on the training images (static) or taken per "
                        f"input at run time (dynamic; no calibration) (default {d.int8_activations})")
    p.add_argument("--coreml-target", default=d.coreml_target,
                   help=f"Core ML minimum deployment target (default {d.coreml_target}; "
                        "language models need and get iOS18)")
    p.add_argument("--no-xnnpack-rewrites", action="store_true",
                   help="export LayerNorm/attention as-is for ExecuTorch (less of the graph runs on XNNPACK)")


def export_config_from_args(args: argparse.Namespace, data: str | None = None):
    """ExportConfig from the flags of :func:`add_export_args` (validated: bad flags are exit 2)."""
    from pocketsize.export import ExportConfig

    return ExportConfig(targets=args.to, quantize=args.quantize, data=data,
                        parity_samples=args.parity_samples, calib_samples=args.calib_samples,
                        int8_activations=args.int8_activations, int4_group_size=args.group_size,
                        coreml_target=args.coreml_target, xnnpack_rewrites=not args.no_xnnpack_rewrites)


def handle(args: argparse.Namespace) -> int:
    from pocketsize.export import export

    config = export_config_from_args(args, data=args.data)
    manifest = export(args.model_dir, args.out, config)
    summary = {"out": str(args.out), "artifacts": [
        {"format": a["format"], "path": a["path"], "bytes": a["bytes"], "status": a["status"],
         "parity": {k: a["parity"].get(k) for k in ("checked", "passed", "max_abs_diff", "top1_agreement", "reason")}}
        for a in manifest["artifacts"]]}
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
