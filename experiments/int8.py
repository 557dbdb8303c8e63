"""int8 of an unpruned and a pruned DINOv2-S for one Fashion-MNIST user, side by side.

    python -m experiments.int8 --user B --seed 0          # about 15 min on 2 cores

The pruned model is hei at keep 0.5, judged at the cut (one shot, head re-fitted,
no recovery). Each model is exported to int8 .pte and .onnx three ways: calibrated
on the first 32 training images (what export did before its subsets took every
class: all 32 of one class), on 32 taken from every class (today's default), and on
128 from every class. Parity runs on every held-out image; one JSON line per artifact.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

CALIBRATIONS = (("first-32", 32), ("spread-32", 32), ("spread-128", 128))


def _models(user: str, seed: int):
    from experiments import methods
    from pocketsize import compress

    base = compress.PruneConfig(finetuned_reference=False)
    loaded, data = methods._personalized(next(k for k in methods.SUBSETS if k.startswith(user)), seed, 200, base, "cpu")
    cut = replace(base, ratio=0.5, seed=seed, buffer=False, recovery_steps=0)
    return {"unpruned": loaded, "pruned": compress.prune(copy.deepcopy(loaded), data, cut).loaded}, data


def _export(model, data, calib: str, n: int) -> dict:
    """The manifest of an int8 export; a parity failure still wrote it."""
    import torch

    from pocketsize import export
    from pocketsize.data import Split
    from pocketsize.errors import ParityError

    spread = Split.spread
    if calib.startswith("first"):  # the old subsets: the first n, class by class
        Split.spread = lambda self, k: self.subset(torch.arange(min(k, len(self))))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = export.ExportConfig(targets=("executorch", "onnx"), quantize="int8", parity_samples=len(data.test),
                                      calib_samples=n)
            try:
                return export.export(model, Path(tmp) / "e", cfg, data=data)
            except ParityError:
                return json.loads((Path(tmp) / "e" / "manifest.json").read_text())
    finally:
        Split.spread = spread


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", default="B", help="A or B (experiments.methods.SUBSETS)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    models, data = _models(args.user, args.seed)
    for name, model in models.items():
        for calib, n in CALIBRATIONS:
            t = time.time()
            for a in _export(model, data, calib, n)["artifacts"]:
                par = a.get("parity") or {}
                print(json.dumps({"user": args.user, "seed": args.seed, "model": name, "calibration": calib,
                                  "format": a["format"], "snr_db": par.get("snr_db"), "accuracy": par.get("accuracy"),
                                  "top1_agreement": par.get("top1_agreement"), "seconds": round(time.time() - t)}),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
