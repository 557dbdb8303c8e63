"""int8 of an unpruned and a pruned DINOv2-S for one Fashion-MNIST user, side by side.

    python -m experiments.int8 --user B --seed 0                     # every variant, ~20 min on 2 cores
    python -m experiments.int8 --user B --seed 0 --variants spread-32,dynamic --bench

The pruned model is hei at keep 0.5, judged at the cut (one shot, head re-fitted,
no recovery). Each model is exported to int8 .pte and .onnx: static, calibrated on
the first 32 training images (what export did before its subsets took every class:
all 32 of one class), on 32 taken from every class (today's default), on 128 from
every class; and dynamic (`--int8-activations dynamic`: activations quantized at
run time, no calibration). Parity runs on every held-out image; one JSON line per
artifact. `--bench` also exports the fp32 unpruned model and measures every
artifact's p50 at 1 thread in one run at the end, with its speedup over fp32
unpruned in the same runtime.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

VARIANTS = {"first-32": ("static", 32), "spread-32": ("static", 32), "spread-128": ("static", 128),
            "dynamic": ("dynamic", 32)}


def _models(user: str, seed: int):
    from experiments import methods
    from pocketsize import compress

    base = compress.PruneConfig(finetuned_reference=False)
    loaded, data = methods._personalized(next(k for k in methods.SUBSETS if k.startswith(user)), seed, 200, base, "cpu")
    cut = replace(base, ratio=0.5, seed=seed, buffer=False, recovery_steps=0)
    return {"unpruned": loaded, "pruned": compress.prune(copy.deepcopy(loaded), data, cut).loaded}, data


def _export(model, data, variant: str, out: Path) -> dict:
    """The manifest of an export (int8 unless ``variant`` is fp32); a parity failure still wrote it."""
    import torch

    from pocketsize import export
    from pocketsize.data import Split
    from pocketsize.errors import ParityError

    spread = Split.spread
    if variant == "first-32":  # the old subsets: the first n, class by class
        Split.spread = lambda self, k: self.subset(torch.arange(min(k, len(self))))
    try:
        if variant == "fp32":
            cfg = export.ExportConfig(targets=("executorch", "onnx"), parity_samples=len(data.test))
        else:
            acts, n = VARIANTS[variant]
            cfg = export.ExportConfig(targets=("executorch", "onnx"), quantize="int8", parity_samples=len(data.test),
                                      calib_samples=n, int8_activations=acts)
        try:
            return export.export(model, out, cfg, data=data)
        except ParityError:
            return json.loads((out / "manifest.json").read_text())
    finally:
        Split.spread = spread


def _p50(folder: Path) -> dict[str, float]:
    from pocketsize import benchmarks

    res = benchmarks.run(folder, device="local",
                         config=benchmarks.BenchConfig(warmup=5, iterations=50, threads=1, eval_samples=0))
    return {r["format"]: r["latency_ms"]["p50"] for r in res["results"] if r["status"] == "ok"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", default="B", help="A or B (experiments.methods.SUBSETS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    p.add_argument("--bench", action="store_true", help="p50 of every artifact at 1 thread, side by side, at the end")
    args = p.parse_args(argv)
    chosen = [v for v in args.variants.split(",") if v]
    if not chosen or any(v not in VARIANTS for v in chosen):
        p.error(f"--variants {args.variants}: choose from " + ", ".join(VARIANTS))
    models, data = _models(args.user, args.seed)
    rows, folders = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        todo = [(name, v) for name in models for v in chosen]
        if args.bench:
            todo.append(("unpruned", "fp32"))
        for name, variant in todo:
            t = time.time()
            folder = Path(tmp) / f"{name}-{variant}"
            manifest = _export(models[name], data, variant, folder)
            folders[name, variant] = folder
            for a in manifest["artifacts"]:
                par = a.get("parity") or {}
                rows.append({"user": args.user, "seed": args.seed, "model": name, "variant": variant,
                             "format": a["format"], "scheme": (a.get("quantization") or {}).get("scheme", "fp32"),
                             "bytes": a.get("bytes"), "snr_db": par.get("snr_db"), "accuracy": par.get("accuracy"),
                             "top1_agreement": par.get("top1_agreement"), "parity_passed": par.get("passed"),
                             "seconds": round(time.time() - t)})
                if not args.bench:
                    print(json.dumps(rows[-1]), flush=True)
        if args.bench:  # all timings at the end, one after the other, so they share the host's state
            p50 = {key: _p50(folder) for key, folder in folders.items()}
            ref = p50["unpruned", "fp32"]
            for r in rows:
                ms = p50[r["model"], r["variant"]].get(r["format"])
                r["p50_ms"] = ms
                r["speedup_vs_fp32_unpruned"] = round(ref[r["format"]] / ms, 2) if ms and r["format"] in ref else None
                print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
