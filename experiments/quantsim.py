"""Why int8 breaks a pruned ViT, and which int8 scheme survives it: simulated
int8 (fake quantization in eager PyTorch) of the unpruned and the pruned
DINOv2-S of one Fashion-MNIST user, many schemes side by side.

    python -m experiments.quantsim --users A,B --seeds 5 --out docs/int8.jsonl   # ~3 min per (user, seed)

Simulation, not the runtimes: each Linear/Conv gets per-channel symmetric int8
weights, and its activations quantized as the scheme says. It is checked against
the real artifacts: on user B, seed 0, pruned, `static` gives 68.6% / SNR 12.9 dB
here and 68.6% / 11.8 dB as an ExecuTorch .pte (experiments.int8). Judged on the
validation split, reported on held-out: one JSON row per (user, seed, model, scheme),
with diagnostics of the model itself (how spread the classifier's input features
are, the head's weight norm, how far the largest residual channel stands out).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

SCHEMES = ("weights-only", "static", "static-in", "dyn-token", "dyn-tensor", "static+logit-shift")


def affine(x: torch.Tensor, lo, hi) -> torch.Tensor:
    """Asymmetric int8 of ``x`` over [lo, hi] (always containing 0), dequantized."""
    lo, hi = torch.as_tensor(lo).clamp(max=0), torch.as_tensor(hi).clamp(min=0)
    s = ((hi - lo) / 255.0).clamp_min(1e-8)
    zp = torch.round(-128 - lo / s)
    return (torch.clamp(torch.round(x / s) + zp, -128, 127) - zp) * s


def weight_int8(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel, dequantized."""
    flat = w.reshape(w.shape[0], -1)
    s = (flat.abs().amax(1, keepdim=True) / 127.0).clamp_min(1e-12)
    return (torch.round(flat / s).clamp(-127, 127) * s).reshape(w.shape)


def per_token(x: torch.Tensor) -> torch.Tensor:  # XNNPACK's dynamic linear: one scale per row
    return affine(x, x.amin(-1, keepdim=True), x.amax(-1, keepdim=True))


def per_tensor(x: torch.Tensor) -> torch.Tensor:  # ONNX Runtime's dynamic MatMul: one per input
    dims = tuple(range(1, x.dim()))
    return affine(x, x.amin(dims, keepdim=True), x.amax(dims, keepdim=True))


def _layers(model) -> dict[str, torch.nn.Module]:
    """What the exporters quantize (Linear and Conv), the classifier left out."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and n != "classifier"}


@torch.no_grad()
def _ranges(model, calib: torch.Tensor) -> dict[str, list[float]]:
    """Min/max of every quantized layer's input and output over the calibration images."""
    rng = {n: [math.inf, -math.inf, math.inf, -math.inf] for n in _layers(model)}

    def watch(n):
        def hook(_, i, o):
            r = rng[n]
            r[:] = [min(r[0], i[0].min().item()), max(r[1], i[0].max().item()),
                    min(r[2], o.min().item()), max(r[3], o.max().item())]
        return hook

    hooks = [m.register_forward_hook(watch(n)) for n, m in _layers(model).items()]
    for s in range(0, len(calib), 16):
        model(pixel_values=calib[s:s + 16])
    for h in hooks:
        h.remove()
    return rng


def simulated(model, calib: torch.Tensor, scheme: str):
    """An int8-simulated copy of ``model``."""
    q = copy.deepcopy(model).eval()
    rng = _ranges(q, calib) if scheme.startswith("static") else {}
    for n, m in _layers(q).items():
        with torch.no_grad():
            m.weight.copy_(weight_int8(m.weight))
        if scheme.startswith("static"):
            lo_in, hi_in, lo_out, hi_out = rng[n]
            m.register_forward_pre_hook(lambda _, i, a=lo_in, b=hi_in: (affine(i[0], a, b),))
            if scheme != "static-in":
                m.register_forward_hook(lambda _, i, o, a=lo_out, b=hi_out: affine(o, a, b))
        elif scheme in ("dyn-token", "dyn-tensor"):
            fn: Callable = per_token if scheme == "dyn-token" else per_tensor
            m.register_forward_pre_hook(lambda _, i, f=fn: (f(i[0]),))
    return q


@torch.no_grad()
def outputs(model, x: torch.Tensor, batch: int = 70) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the classifier's input features)."""
    got: dict = {}
    hook = model.classifier.register_forward_hook(lambda _, i, o: got.__setitem__("f", i[0]))
    logits, feats = [], []
    for s in range(0, len(x), batch):
        logits.append(model(pixel_values=x[s:s + batch]).logits)
        feats.append(got["f"])
    hook.remove()
    return torch.cat(logits), torch.cat(feats)


def snr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    return 10 * math.log10(ref.pow(2).sum().item() / (ref - got).pow(2).sum().clamp_min(1e-20).item())


@torch.no_grad()
def diagnostics(model, x: torch.Tensor) -> dict:
    """How the model's features look: the spread of the classifier's input across
    images (per feature), the head's weight norm, and the last block's largest
    residual channel against the median channel (massive activations)."""
    seen: dict = {}
    last = model.dinov2.encoder.layer[-1]
    hook = last.register_forward_hook(lambda _, i, o: seen.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    _, feats = outputs(model, x)
    hook.remove()
    mag = seen["h"].abs().mean((0, 1))
    return {"feature_spread": round(feats.std(0).mean().item(), 3),
            "head_norm": round(model.classifier.weight.norm().item(), 2),
            "top_channel_ratio": round((mag.max() / mag.median()).item(), 1)}


def rows_for(user: str, seed: int, cmd: str) -> list[dict]:
    from experiments.common import host, weights_sha256
    from experiments.int8 import _models

    models, data = _models(user, seed)
    calib = data.train.spread(32).normalized()
    splits = {"val": (data.val.normalized(), data.val.y), "test": (data.test.normalized(), data.test.y)}
    rows = []
    for name, loaded in models.items():
        model = loaded.model.eval()
        ref = {k: outputs(model, x)[0] for k, (x, _) in splits.items()}
        acc = {k: lambda lo, y=y: round(100 * (lo.argmax(1) == y).float().mean().item(), 2)
               for k, (_, y) in splits.items()}
        base = {"user": user, "seed": seed, "model": name, "fp32_val": acc["val"](ref["val"]),
                "fp32_test": acc["test"](ref["test"]), **diagnostics(model, splits["test"][0]),
                "host": host("cpu"), "weights_sha256": weights_sha256(model), "cmd": cmd}
        sims: dict = {}  # a "+logit-shift" scheme reuses its base scheme's model and outputs
        for scheme in SCHEMES:
            t = time.time()
            kind = scheme.replace("+logit-shift", "")
            if kind not in sims:
                q = simulated(model, calib, kind)
                sims[kind] = q, {k: outputs(q, x)[0] for k, (x, _) in splits.items()}
            q, got = sims[kind]
            if scheme.endswith("+logit-shift"):  # the mean logit error on the calibration images, taken off
                shift = (outputs(q, calib)[0] - outputs(model, calib)[0]).mean(0)
                got = {k: v - shift for k, v in got.items()}
            rows.append({**base, "scheme": scheme, "val": acc["val"](got["val"]), "test": acc["test"](got["test"]),
                         "snr_test_db": round(snr_db(ref["test"], got["test"]), 2), "seconds": round(time.time() - t)})
            shown = ("user", "seed", "model", "scheme", "val", "test", "snr_test_db")
            print(json.dumps({k: rows[-1][k] for k in shown}), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Per model and scheme: mean held-out accuracy and SNR, and the paired
    difference to `static` (today's scheme) on validation and held-out, 95% t interval."""
    from experiments.common import t_interval, verdict

    lines = ["| model | scheme | n | val | held-out | SNR dB | val - static [95% CI] | held-out - static [95% CI] |",
             "|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["user"], r["seed"])  # noqa: E731
    for model in ("unpruned", "pruned"):
        mine = [r for r in rows if r["model"] == model]
        static = {key(r): r for r in mine if r["scheme"] == "static"}
        if static:
            n = len(static)
            lines.append(f"| {model} | fp32 | {n} | {sum(r['fp32_val'] for r in static.values()) / n:.1f} | "
                         f"{sum(r['fp32_test'] for r in static.values()) / n:.1f} | | | |")
        for scheme in SCHEMES:
            rs = [r for r in mine if r["scheme"] == scheme]
            if not rs:
                continue
            cells = []
            for split in ("val", "test"):
                diffs = [r[split] - static[key(r)][split] for r in rs if key(r) in static]
                ci = t_interval(diffs)
                cells.append("" if scheme == "static" or ci is None else
                             f"{ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}] {verdict(ci, len(diffs))}")
            n = len(rs)
            lines.append(f"| {model} | {scheme} | {n} | {sum(r['val'] for r in rs) / n:.1f} | "
                         f"{sum(r['test'] for r in rs) / n:.1f} | {sum(r['snr_test_db'] for r in rs) / n:.1f} | "
                         f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="A,B", help="comma list of experiments.methods.SUBSETS initials")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, help="append rows to this .jsonl (pairs already there are skipped)")
    p.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = p.parse_args(argv)
    old = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out and args.out.exists() else []
    if not args.table:
        done = {(r["user"], r["seed"]) for r in old}
        cmd = "python -m experiments.quantsim " + " ".join(argv if argv is not None else sys.argv[1:])
        for user in args.users.split(","):
            for seed in range(args.seeds):
                if (user, seed) in done:
                    continue
                new = rows_for(user, seed, cmd)
                old += new
                if args.out:
                    with args.out.open("a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in new)
    print(table(old))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
