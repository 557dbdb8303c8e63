"""`pocketsize export MODEL_DIR --to executorch,onnx,coreml [--quantize none|int8] [--data DATA] --out DIR`.

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
    p.add_argument("--to", required=True, metavar="TARGETS",
                   help=f"comma-separated formats: {','.join(target_names())}")
    p.add_argument("--quantize", default="none", choices=["none", "int8"], help="precision (default: none)")
    p.add_argument("--data", default=None,
                   help="your data: parity on the test files of MODEL_DIR/split.json, int8 calibration on "
                        "its train files (no split.json: all of it is held out)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    p.add_argument("--parity-samples", type=int, default=64, help="inputs each artifact is checked on")
    p.add_argument("--calib-samples", type=int, default=32, help="training images for static int8 calibration")
    p.add_argument("--coreml-target", default="iOS17",
                   help="Core ML minimum deployment target (default iOS17; language models need and get iOS18)")
    p.add_argument("--no-xnnpack-rewrites", action="store_true",
                   help="export LayerNorm/attention as-is for ExecuTorch (less of the graph runs on XNNPACK)")
    p.set_defaults(func=handle, handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    from pocketsize.export import ExportConfig, export

    config = ExportConfig(targets=args.to, quantize=args.quantize, data=args.data,
                          parity_samples=args.parity_samples, calib_samples=args.calib_samples,
                          coreml_target=args.coreml_target, xnnpack_rewrites=not args.no_xnnpack_rewrites)
    manifest = export(args.model_dir, args.out, config)
    summary = {"out": str(args.out), "artifacts": [
        {"format": a["format"], "path": a["path"], "bytes": a["bytes"], "status": a["status"],
         "parity": {k: a["parity"].get(k) for k in ("checked", "passed", "max_abs_diff", "top1_agreement", "reason")}}
        for a in manifest["artifacts"]]}
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
