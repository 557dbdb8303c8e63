"""hei against the baselines (docs/method.md), same model, data, size and budget.

    python -m experiments.methods --out docs/results.md            # the full tables
    python -m experiments.methods --quick --out /tmp/results.md    # minutes, what CI runs
    python -m experiments.methods --task llm --out docs/results.md # only the language-model rows

Each (user, seed) personalizes the model once; every method then prunes a
copy of that same personalized model with the same recovery budget. Rows are
appended to a JSON-lines file as they finish (a long run that is stopped
keeps what it measured, and ``--resume`` skips them) and the markdown is
rendered from all rows.

A method may carry hei options, for measuring variants side by side:
``hei@beta=0.6``, ``hei@score=cond``, ``hei@score=pred+generic`` (``generic``:
other Fashion-MNIST classes as the generic reference data). ``--torch-device
cuda --jobs 8`` runs the prunes in parallel worker processes on a GPU;
``--latency`` then exports one artifact per distinct architecture and times
it on this host (a separate pass, so parallel pruning never disturbs timing).
The language-model rows (SmolLM2-135M on two users' text) are in
``experiments.llm``; they share this driver, its rows file and its output.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from experiments import llm
from experiments.common import each_row, host, plan_widths, provenance, t_interval, verdict

SUBSETS = {  # Fashion-MNIST classes: two different "users"
    "A (T-shirt/Trouser/Sandal/Boot)": (0, 1, 5, 9),
    "B (Pullover/Dress/Coat/Shirt)": (2, 3, 4, 6),
}
GENERIC_PER_CLASS = 40
METHODS = ("hei", "activation", "random", "magnitude", "taylor", "block-influence")
SPEC_KEYS = {"beta": float, "score": str}  # fields of PruneConfig.hei (HeiOptions)


def parse_spec(spec: str) -> tuple[str, dict, bool]:
    """``name@k=v+k=v+generic`` -> (method, HeiOptions fields, use generic data)."""
    name, _, opts = spec.partition("@")
    hei, generic = {}, False
    for opt in filter(None, opts.split("+")):
        if opt == "generic":
            generic = True
            continue
        k, eq, v = opt.partition("=")
        if not eq or k not in SPEC_KEYS:
            raise SystemExit(f"method spec {spec!r}: options are generic, {', '.join(k + '=V' for k in SPEC_KEYS)}")
        hei[k] = SPEC_KEYS[k](v)
    if hei:
        from pocketsize.compress.config import HeiOptions
        from pocketsize.errors import BadInput

        try:
            HeiOptions(**hei)
        except BadInput as e:
            raise SystemExit(f"method spec {spec!r}: {e}") from None
    return name, hei, generic


def _user_folder(classes, per_class: int) -> Path:
    from pocketsize.zoo import cache_dir
    from pocketsize.datasets import make_fashion_subset

    return make_fashion_subset(cache_dir().parent / "data" / f"fashion-{''.join(map(str, classes))}-{per_class}",
                               classes, per_class)


def _generic_classes(classes) -> tuple[int, ...]:
    return tuple(c for c in range(10) if c not in classes)


# --- one prune (runs in the main process or a worker) ---------------------------

_CACHE: dict = {}


def _zoo_model(round_to: str | None):
    """zoo:dinov2-small, its weights optionally rounded through a lower precision
    (``fp16``): runs on machines that could only receive an fp16 copy of the
    weights then use exactly the same model as runs here."""
    import torch

    from pocketsize.loading import load_model

    loaded = load_model("zoo:dinov2-small")
    if round_to:
        with torch.no_grad():
            for p in loaded.model.parameters():
                p.copy_(p.to(getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[round_to])).float())
    return loaded


def _personalized(subset: str, seed: int, per_class: int, base, device: str, round_to: str | None = None):
    """The (subset, seed) personalized model and data, built once per process."""
    key = (subset, seed)
    if key not in _CACHE:
        from pocketsize.data import load_image_data
        from pocketsize.compress.pruning import personalize, resolve_device

        loaded = _zoo_model(round_to)
        data = load_image_data(_user_folder(SUBSETS[subset], per_class), loaded.meta["preprocessing"], seed=seed)
        loaded.model.to(resolve_device(device))
        personalize(loaded, data, replace(base, seed=seed))
        loaded.model.to("cpu")
        loaded.refresh_meta()
        _CACHE[key] = (loaded, data)
    return _CACHE[key]


def _generic(subset: str, seed: int, pp):
    from pocketsize.data import load_image_data

    key = ("generic", subset, seed)
    if key not in _CACHE:
        _CACHE[key] = load_image_data(_user_folder(_generic_classes(SUBSETS[subset]), GENERIC_PER_CLASS), pp, seed=seed)
    return _CACHE[key]


def run_job(job: dict) -> dict:
    """One prune; a failure comes back as a row with ``error`` (a long parallel
    run reports it and goes on with the other jobs)."""
    import traceback

    try:
        return llm.prune_row(job) if job.get("task") == "llm" else _prune_row(job)
    except Exception as e:  # noqa: BLE001 - reported by the driver, never rendered as a result
        return {**{k: job[k] for k in ("subset", "seed", "ratio", "buffer")}, "method": job["spec"],
                "task": job.get("task"), "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def _prune_row(job: dict) -> dict:
    import torch

    from pocketsize import compress

    torch.set_num_threads(job["threads"])
    base = compress.PruneConfig(**job["base"])
    loaded, data = _personalized(job["subset"], job["seed"], job["per_class"], base, base.device, job.get("round"))
    name, hei, use_generic = parse_spec(job["spec"])
    generic = _generic(job["subset"], job["seed"], loaded.meta["preprocessing"]) if use_generic else None
    cfg = replace(base, method=name, ratio=job["ratio"], seed=job["seed"], buffer=job["buffer"],
                  hei=replace(base.hei, **hei))
    t = time.time()
    pruned = compress.prune(copy.deepcopy(loaded), data, cfg, generic=generic)
    r = pruned.report
    return {"subset": job["subset"], "method": job["spec"], "ratio": cfg.ratio, "seed": cfg.seed,
            "buffer": cfg.buffer, "recovery_steps": cfg.recovery_steps, "before": r["before"], "after": r["after"],
            "val_before": r["val_before"], "val_after": r["val_after"],
            "params_ratio": r["params_ratio"], "macs_ratio": r["macs_after"] / r["macs_before"],
            "seconds": round(time.time() - t, 1), "device": cfg.device, "weights": job.get("round") or "fp32",
            "host": host(cfg.device), "cmd": job.get("cmd", ""),
            "kinds": {k: sum(u["kind"] == k for u in pruned.plan["units"]) for k in ("personalized", "common")},
            "widths": plan_widths(pruned.plan)}


def _architecture(widths: list[int] | None, labels: int):
    """The zoo model cut to ``widths`` (kept heads, channels per block; None:
    unpruned), with a ``labels``-way head; weights do not matter for timing."""
    from pocketsize.compress.plan import Plan, apply_plan

    loaded = _zoo_model(None)
    names = [f"c{i}" for i in range(labels)]
    new = loaded.adapter.set_num_classes(loaded.model, names)
    loaded.model = new if new is not None else loaded.model
    loaded.meta["labels"] = names
    if widths is None:
        return loaded
    apply_plan(loaded, Plan.of_widths(widths))
    return loaded


def _latency(widths: list[int] | None, labels: int) -> dict:
    """p50 of the exported ONNX and ExecuTorch artifacts on this host (1 thread)."""
    import tempfile

    from pocketsize import benchmarks
    from pocketsize import export

    loaded = _architecture(widths, labels)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        export.export(loaded, Path(tmp) / "a", export.ExportConfig(targets=("onnx", "executorch"), parity_samples=4))
        res = benchmarks.run(Path(tmp) / "a", device="local",
                             config=benchmarks.BenchConfig(warmup=5, iterations=30, eval_samples=0))
        for r in res["results"]:
            if r["status"] == "ok":
                out[r["format"]] = r["latency_ms"]["p50"]
    return out


def add_latency(rows: list[dict], subsets) -> None:
    """Fill ``p50_ms`` for every distinct architecture among the seed-0,
    buffer-on rows of the main methods of ``subsets``, and for the unpruned
    model (a row of method ``unpruned``)."""
    todo = [r for r in rows if r.get("task") != "llm" and r["seed"] == 0 and r["method"] in METHODS and r["buffer"]
            and r["subset"] in subsets]
    seen = {tuple(r["widths"]): r["p50_ms"] for r in todo if r.get("p50_ms")}
    for r in todo:
        key = tuple(r["widths"])
        if key not in seen:
            print(f"latency: {r['method']} keep {r['ratio']:.2f} ...", file=sys.stderr, flush=True)
            seen[key] = _latency(r["widths"], 4)
        r["p50_ms"] = seen[key]
    if seen and not any(r["method"] == "unpruned" and r.get("task") != "llm" for r in rows):
        rows.append({"subset": "-", "method": "unpruned", "ratio": 1.0, "seed": 0, "buffer": True,
                     "params_ratio": 1.0, "macs_ratio": 1.0, "widths": None, "p50_ms": _latency(None, 4)})


# --- rendering --------------------------------------------------------------------

def _agg(vals):
    if not vals:
        return "-"
    m = statistics.mean(vals) * 100
    return f"{m:.1f} [{min(vals) * 100:.1f}-{max(vals) * 100:.1f}] (n={len(vals)})"


def _table(sub: list[dict], methods, ratios, key: str, buffers=(True, False)) -> list[str]:
    lines = ["| method | buffer | " + " | ".join(f"keep {q:.2f}" for q in ratios) + " |",
             "|---|---|" + "---|" * len(ratios)]
    for m in methods:
        for buf in buffers:
            cells = [_agg([r[key] for r in sub if r["method"] == m and r["ratio"] == q and r["buffer"] == buf])
                     for q in ratios]
            if any(c != "-" for c in cells):
                lines.append(f"| {m} | {'on' if buf else 'off'} | " + " | ".join(cells) + " |")
    return lines


def _verdict(sub: list[dict], ratios) -> list[str]:
    """hei against the baseline with the best mean, per ratio: the paired (same seed)
    gap with its 95% t interval; better or worse only at 5+ paired seeds."""
    out = []
    for q in ratios:
        cell = lambda m: {r["seed"]: r["after"] for r in sub if r["method"] == m and r["ratio"] == q and r["buffer"]}  # noqa: E731
        hei = cell("hei")
        base = {m: cell(m) for m in METHODS[1:] if cell(m)}
        if not hei or not base:
            continue
        best = max(base, key=lambda m: statistics.mean(base[m].values()))
        gap = [hei[s] - base[best][s] for s in sorted(set(hei) & set(base[best]))]
        ci = t_interval(gap)
        shown = "" if ci is None else f" [{ci[1] * 100:+.1f}, {ci[2] * 100:+.1f}]"
        out.append(f"- keep {q:.2f}: hei {statistics.mean(hei.values()) * 100:.1f} vs best baseline {best} "
                   f"{statistics.mean(base[best].values()) * 100:.1f}; paired gap "
                   f"{statistics.mean(gap) * 100 if gap else float('nan'):+.1f} points{shown} over {len(gap)} seeds: "
                   f"**{verdict(ci, len(gap))}**")
    return out


def render(rows: list[dict], args) -> str:
    lm_rows = [r for r in rows if r.get("task") == "llm"]
    rows = [r for r in rows if r.get("task") != "llm"]
    lines = ["# Results", "",
             "Model: zoo:dinov2-small (DINOv2 ViT-S/14, 112 px). Data: Fashion-MNIST subsets as two users;",
             f"{args.per_class} images per class, split 50/15/35 train/val/held-out test (seeded per seed).",
             f"Recovery budget: {args.recovery_steps} optimizer steps (batch 32) for every method. "
             "Accuracy: held-out top-1, mean [min-max] over seeds, in %.", "",
             "Where the rows come from (`python -m experiments.methods ARGS`, rows in results.jsonl):", ""]
    lines += provenance(rows) + [""]
    for subset in sorted({r["subset"] for r in rows if r["subset"] != "-"}):
        sub = [r for r in rows if r["subset"] == subset]
        before = {r["seed"]: r["before"] for r in sub}
        lines += [f"## User {subset}", "", f"Unpruned personalized model: {_agg(list(before.values()))}", ""]
        ratios = sorted({r["ratio"] for r in sub}, reverse=True)
        specs = {r["method"] for r in sub}
        main = [m for m in METHODS if m in specs]
        lines += _table(sub, main, ratios, "after")
        variants = sorted(specs - set(main))
        if variants:
            lines += ["", "hei variants measured side by side (exploration; a variant becomes the default only if it "
                      "wins on the *validation* split, so the held-out numbers below stay unbiased). "
                      "Validation accuracy:", ""]
            lines += _table(sub, ["hei"] + variants, ratios, "val_after", buffers=(True,))
            lines += ["", "Held-out accuracy:", ""] + _table(sub, ["hei"] + variants, ratios, "after", buffers=(True,))
        lines += ["", "hei against the baselines (buffer on):", ""] + (_verdict(sub, ratios) or ["- no hei rows"]) + [""]
    lat = [r for r in rows if r.get("p50_ms") and (r["seed"] == 0)]
    if lat:
        lines += ["## Latency", "", "Measured p50 of the exported artifacts (ms, 1 thread, this host; one artifact per "
                  "distinct architecture, weights do not change timing):", "",
                  "| user | method | keep | params ratio | MACs ratio | ONNX Runtime | ExecuTorch |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(lat, key=lambda r: (r["subset"], -r["ratio"], r["method"])):
            if not r["buffer"]:
                continue
            p = r["p50_ms"]
            lines.append(f"| {r['subset'][:1]} | {r['method']} | {r['ratio']:.2f} | {r['params_ratio']:.3f} | "
                         f"{r['macs_ratio']:.3f} | {p.get('onnx', float('nan')):.2f} | {p.get('executorch', float('nan')):.2f} |")
        lines.append("")
    lines += llm.render(lm_rows)
    return "\n".join(lines) + "\n"


# --- driver -----------------------------------------------------------------------

def _llm_jobs(args, base) -> list[dict]:
    specs = [m for m in args.llm_methods.split(",") if m]
    return [{"task": "llm", "corpus": c, "subset": llm.subset_name(c), "seed": seed, "spec": spec, "ratio": ratio, "buffer": True,
             "threads": args.threads, "base": base, "cmd": " ".join(args.argv)}
            for seed in range(args.llm_seeds) for c in llm.CORPORA[: args.llm_corpora]
            for ratio in (float(x) for x in args.llm_ratios.split(",")) for spec in specs]


def _jobs(args, base) -> list[dict]:
    if args.task == "llm":
        return []
    specs = [m for m in args.methods.split(",") if m]
    for s in specs:
        parse_spec(s)  # fail early on a bad spec
    jobs = []
    # seed-major order: a run that is stopped early has every method on the same seeds
    for seed in range(args.seeds):
        for subset in list(SUBSETS)[: args.subsets]:
            for ratio in (float(x) for x in args.ratios.split(",")):
                for spec in specs:
                    for buf in ((True, False) if args.buffer_ablation else (True,)):
                        jobs.append({"subset": subset, "seed": seed, "spec": spec, "ratio": ratio, "buffer": buf,
                                     "per_class": args.per_class, "threads": args.threads, "base": base,
                                     "round": args.round_weights, "cmd": " ".join(args.argv)})
    return jobs


def _who(row: dict) -> str:
    return row["subset"] if row.get("task") == "llm" else row["subset"][:1]


def _key(r: dict) -> tuple:
    return (r["subset"], r["seed"], r["method"], r["ratio"], r["buffer"])


def parse_args(argv=None) -> argparse.Namespace:
    """The suite's arguments (``--quick`` applied); ``main`` runs them."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="markdown file to write (rows go to OUT.jsonl beside it)")
    p.add_argument("--quick", action="store_true", help="1 subset, 1 seed, 3 methods, ratio 0.5, short recovery")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ratios", default="0.75,0.5,0.35")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated method specs (see above)")
    p.add_argument("--subsets", type=int, default=2, help="how many of the user subsets to run")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--recovery-steps", type=int, default=60)
    p.add_argument("--buffer-ablation", action="store_true", help="also run every method with --no-buffer")
    p.add_argument("--latency", action="store_true", help="export and time every distinct architecture (slow)")
    p.add_argument("--resume", action="store_true", help="keep rows already in OUT.jsonl")
    p.add_argument("--render-only", action="store_true", help="only re-render OUT from the rows in OUT.jsonl")
    p.add_argument("--torch-device", default="cpu", help="where pruning runs: cpu, cuda, auto")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes for the prunes")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores / jobs)")
    p.add_argument("--round-weights", choices=("fp16", "bf16"), default=None,
                   help="round the pretrained weights through this precision first (same model on every machine)")
    lm = p.add_argument_group("language-model rows (experiments.llm)")
    lm.add_argument("--task", choices=("all", "image", "llm"), default=None,
                    help="which rows to run (default: all; image with --quick)")
    lm.add_argument("--llm-methods", default=",".join(llm.METHODS))
    lm.add_argument("--llm-ratios", default=llm.RATIOS)
    lm.add_argument("--llm-seeds", type=int, default=1)
    lm.add_argument("--llm-corpora", type=int, default=2, help="how many of the users' text corpora to run")
    lm.add_argument("--llm-recovery-steps", type=int, default=llm.BUDGET["recovery_steps"])
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.task = args.task or ("image" if args.quick else "all")
    if args.quick:
        args.seeds, args.ratios, args.subsets, args.per_class = 1, "0.5", 1, 40
        args.methods, args.recovery_steps = "hei,activation,random", 4
        args.llm_seeds, args.llm_ratios, args.llm_corpora, args.llm_recovery_steps = 1, "0.7", 1, 2
        args.llm_methods = "hei,activation"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import os

    from pocketsize import compress

    args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    out = Path(args.out)
    rows_file = out.with_suffix(".jsonl")
    rows = [json.loads(l) for l in rows_file.read_text().splitlines()] if ((args.resume or args.render_only) and rows_file.exists()) else []
    done = {_key(r) for r in rows}
    base = compress.PruneConfig(recovery_steps=args.recovery_steps, device=args.torch_device,
                                finetuned_reference=False)  # the suites compare methods, not the reference
    if args.quick:
        base = replace(base, calib_samples=16, probe_epochs=5, steps=2)
    base_d = {k: v for k, v in base.to_dict().items() if k != "version"}
    if args.render_only:
        out.write_text(render(rows, args))
        return 0
    lm_base = {**base_d, **llm.BUDGET, "recovery_steps": args.llm_recovery_steps}
    if args.quick:  # minutes on 2 cores: short chunks make every forward pass 4x cheaper
        lm_base.update(calib_samples=8, lm={**lm_base["lm"], "seq_len": 32, "batch_size": 4})
    jobs = [j for j in _jobs(args, base_d) + (_llm_jobs(args, lm_base) if args.task != "image" else [])
            if (j["subset"], j["seed"], j["spec"], j["ratio"], j["buffer"]) not in done]
    for c in {j["corpus"] for j in jobs if j.get("task") == "llm"}:  # the users' text, before any worker
        llm.corpus_file(c)                                           # starts (fails early without fortunes)
    for subset in list(SUBSETS)[: args.subsets] if args.task != "llm" else []:  # the image sets, likewise
        _user_folder(SUBSETS[subset], args.per_class)
        if any("generic" in j["spec"] for j in jobs):
            _user_folder(_generic_classes(SUBSETS[subset]), GENERIC_PER_CLASS)

    failed = []

    def finished(row: dict) -> None:
        if "error" in row:
            failed.append(row)
            print(f"FAILED {_who(row)} seed {row['seed']} {row['method']} keep {row['ratio']:.2f}: "
                  f"{row['error']}\n{row['traceback']}", file=sys.stderr, flush=True)
            return
        rows.append(row)
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{_who(row)} seed {row['seed']} {row['method']:<24} keep {row['ratio']:.2f} "
              f"buffer {row['buffer']}: {row['before']:.4f} -> {row['after']:.4f} ({row['seconds']} s)",
              file=sys.stderr, flush=True)
        out.write_text(render(rows, args))

    from experiments.methods import run_job as job_fn  # by module name: spawn workers import it

    for row in each_row(job_fn, jobs, args.jobs):
        finished(row)
    if args.latency:
        def save() -> None:
            tmp = rows_file.with_suffix(".part")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            tmp.replace(rows_file)

        if args.task != "llm":
            add_latency(rows, list(SUBSETS)[: args.subsets])
        if args.task != "image":
            llm.add_decode_speed(rows, [llm.subset_name(c) for c in llm.CORPORA[: args.llm_corpora]], save=save)
        save()
    out.write_text(render(rows, args))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
