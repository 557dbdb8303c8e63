"""The language-model rows of the methods suite (``--task llm``).

zoo:smollm2-135m pruned for two "users", each a category of Debian's
``fortunes`` package (one person's quotes file), by hei and the baselines
of the LLM issue, at the same recovery budget. The metric is held-out
perplexity on the user's own text; decode tokens/s is measured on the
exported artifact (ONNX by default, see DECODE_FORMATS) of every distinct
architecture (``--latency``), one token at a time after a fixed prompt.
"""

from __future__ import annotations

import copy
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
CORPORA = ("computers", "songs-poems")  # two users with different vocabularies
METHODS = ("hei", "block-influence", "magnitude", "activation")
RATIOS = "0.85,0.7,0.5"
MODEL = "zoo:smollm2-135m"
PROMPT_TOKENS, DECODE_TOKENS = 32, 64
# The budget every method gets. On this project's 2-core CPU one recovery step
# of SmolLM2 (8 x 128 tokens, LM loss + KL from the teacher) takes ~10 s and
# one validation perplexity ~10 s, so the 24-prune grid at the CLI's defaults
# (30 steps, 3 pruning steps, 64 calibration chunks: ~7.5 min a prune) does
# not fit a working session; this smaller, equal budget does (165-200 s a
# prune measured with free cores).
BUDGET = {"recovery_steps": 12, "steps": 2, "calib_samples": 32}
# Decode speed is timed on the ONNX export by default: exporting SmolLM2 took
# 151 s to .onnx and 474 s to .pte here (2 busy cores), too long for one
# export per architecture. One `pocketsize run` timed both side by side
# (README, Language models): within 5% of each other, unpruned and pruned.
DECODE_FORMATS = ("onnx",)


def subset_name(corpus: str) -> str:
    return f"fortunes/{corpus}"


def corpus_file(corpus: str) -> Path:
    """The fortunes category as plain text (the ``%`` separators dropped),
    written once under the pocketsize cache."""
    from pocketsize.zoo import cache_dir

    src = FORTUNES / corpus
    if not src.is_file():
        raise SystemExit(f"{src} is missing; the LLM rows need Debian's fortunes package (apt-get install fortunes)")
    out = cache_dir().parent / "data" / "fortunes" / f"{corpus}.txt"
    if not out.exists():
        docs = [d.strip() for d in re.split(r"^%\s*$", src.read_text(encoding="utf-8", errors="replace"), flags=re.M)]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".part")
        tmp.write_text("\n\n".join(d for d in docs if d) + "\n", encoding="utf-8")
        tmp.replace(out)
    return out


_CACHE: dict = {}


def _model():
    if "model" not in _CACHE:
        from pocketsize.loading import load_model

        _CACHE["model"] = load_model(MODEL)
    return _CACHE["model"]


def _data(corpus: str, seed: int, seq_len: int):
    from pocketsize.text import load_text_data

    key = (corpus, seed, seq_len)
    if key not in _CACHE:
        _CACHE[key] = load_text_data(corpus_file(corpus), _model().tokenizer, seed=seed, seq_len=seq_len)
    return _CACHE[key]


def prune_row(job: dict) -> dict:
    import torch

    from pocketsize import compress
    from experiments.common import host, plan_widths
    from pocketsize.compress.pruning import prune

    torch.set_num_threads(job["threads"])
    base = compress.PruneConfig(**job["base"])
    cfg = replace(base, method=job["spec"], ratio=job["ratio"], seed=job["seed"], buffer=job["buffer"])
    t = time.time()
    data = _data(job["corpus"], job["seed"], cfg.lm.seq_len)
    pruned = prune(copy.deepcopy(_model()), data, cfg)
    r = pruned.report
    return {"task": "llm", "subset": job["subset"], "method": job["spec"], "ratio": cfg.ratio, "seed": cfg.seed,
            "buffer": cfg.buffer, "recovery_steps": cfg.recovery_steps, "steps": cfg.steps,
            "calib_samples": cfg.calib_samples, "seq_len": pruned.data.seq_len, "metric": "perplexity",
            "before": r["before"], "after": r["after"], "val_before": r["val_before"], "val_after": r["val_after"],
            "params_ratio": r["params_ratio"], "macs_ratio": r["macs_after"] / r["macs_before"],
            "seconds": round(time.time() - t, 1), "device": cfg.device, "weights": "gguf q4_1 -> fp32",
            "host": host(cfg.device), "cmd": job.get("cmd", ""), "widths": plan_widths(pruned.plan)}


# --- decode speed: one export per distinct architecture ---------------------------

def architecture(flat: list[int] | None):
    """SmolLM2 cut to ``flat`` (see ``methods.plan_widths``); weights do not change timing."""
    from pocketsize.compress.plan import Plan, apply_plan

    loaded = copy.deepcopy(_model())
    if flat is None:
        return loaded
    loaded.adapter.to_linear(loaded.model)
    apply_plan(loaded, Plan.of_widths(flat))
    loaded.adapter.to_stock(loaded.model)
    loaded.refresh_meta()
    return loaded


def decode_speed(flat: list[int] | None, formats=DECODE_FORMATS) -> dict:
    """Decode tokens/s of the fp32 exports on this host (1 thread)."""
    import tempfile

    from pocketsize import benchmarks
    from pocketsize import export

    from pocketsize.errors import ParityError

    loaded = architecture(flat)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            export.export(loaded, Path(tmp) / "a", export.ExportConfig(targets=tuple(formats)))
        except ParityError as e:  # the artifact is written; its speed does not depend on the check: say so
            out["parity_failed"] = str(e).split(";")[0]
        res = benchmarks.run(Path(tmp) / "a", device="local", config=benchmarks.BenchConfig(
            warmup=1, iterations=3, eval_samples=0, prompt_tokens=PROMPT_TOKENS, decode_tokens=DECODE_TOKENS))
        for r in res["results"]:
            if r["status"] == "ok":
                out[r["format"]] = round(r["decode_tokens_per_s"], 2)
    return out


def add_decode_speed(rows: list[dict], subsets, formats=DECODE_FORMATS, save=lambda: None) -> None:
    """``decode_tok_s`` for the seed-0 buffer-on rows of ``subsets`` and the unpruned model;
    ``save()`` after each export (a stopped pass keeps what it timed)."""
    todo = [r for r in rows if r.get("task") == "llm" and r["seed"] == 0 and r["buffer"] and r["subset"] in subsets
            and r["method"] in METHODS]
    # an architecture timed for one user (uniform methods give every user the same) is not timed again
    seen = {tuple(r["widths"]): r["decode_tok_s"] for r in rows
            if r.get("task") == "llm" and r.get("widths") and r.get("decode_tok_s")}
    for r in todo:
        key = tuple(r["widths"])
        new = key not in seen
        if new:
            print(f"decode speed: {r['subset']} {r['method']} keep {r['ratio']:.2f} ...", file=sys.stderr, flush=True)
            seen[key] = decode_speed(r["widths"], formats)
        r["decode_tok_s"] = seen[key]
        if new:
            save()
    if seen and not any(r.get("task") == "llm" and r["method"] == "unpruned" for r in rows):
        print("decode speed: unpruned ...", file=sys.stderr, flush=True)
        rows.append({"task": "llm", "subset": "-", "method": "unpruned", "ratio": 1.0, "seed": 0, "buffer": True,
                     "params_ratio": 1.0, "widths": None, "decode_tok_s": decode_speed(None, formats)})
        save()


# --- rendering --------------------------------------------------------------------

def _ppl(vals: list[float]) -> str:
    if not vals:
        return "-"
    m = statistics.mean(vals)
    return f"{m:.1f} (n={len(vals)})" if len(vals) == 1 else f"{m:.1f} [{min(vals):.1f}-{max(vals):.1f}] (n={len(vals)})"


def render(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("task") == "llm"]
    if not rows:
        return []
    budget = sorted({(r["recovery_steps"], r.get("steps", 3), r.get("calib_samples", 64), r.get("seq_len", 128))
                     for r in rows if "recovery_steps" in r})
    said = "; ".join(f"{n} optimizer steps over {k} pruning steps, {c} calibration chunks of {t} tokens"
                     for n, k, c, t in budget)
    lines = ["## Language model: SmolLM2-135M-Instruct", "",
             f"Model: {MODEL} (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to fp32). Users: categories of Debian's "
             "fortunes package, one quotes file per user, split into token chunks (train/val/held-out test, "
             f"seeded). Budget, the same for every method: {said} (8 chunks per optimizer step, LM loss + KL "
             "from the unpruned model). Metric: held-out perplexity on the user's own text, "
             "mean [min-max] over seeds (lower is better).", ""]
    from experiments.common import provenance

    lines += ["Where the rows come from (`python -m experiments.methods ARGS`):", ""] + provenance(rows) + [""]
    for subset in sorted({r["subset"] for r in rows if r["subset"] != "-"}):
        sub = [r for r in rows if r["subset"] == subset and r["buffer"]]
        ratios = sorted({r["ratio"] for r in sub}, reverse=True)
        before = {r["seed"]: r["before"] for r in sub}
        lines += [f"### User {subset}", "", f"Unpruned model: perplexity {_ppl(list(before.values()))}", "",
                  "| method | " + " | ".join(f"keep {q:.2f}" for q in ratios) + " |", "|---|" + "---|" * len(ratios)]
        for m in [m for m in METHODS if any(r["method"] == m for r in sub)]:
            lines.append(f"| {m} | " + " | ".join(
                _ppl([r["after"] for r in sub if r["method"] == m and r["ratio"] == q]) for q in ratios) + " |")
        lines += [""] + _verdict(sub, ratios) + [""]
    speed = [r for r in rows if r.get("decode_tok_s")]
    if speed:
        fmts = [f for f in ("onnx", "executorch") if any(f in r["decode_tok_s"] for r in speed)]
        names = {"onnx": "ONNX Runtime", "executorch": "ExecuTorch"}
        lines += ["### Decode speed", "",
                  "`python -m experiments.methods --task llm --resume --latency --out docs/results.md`: "
                  f"measured decode tokens/s of the exported fp32 artifacts ({PROMPT_TOKENS}-token prompt, then "
                  f"{DECODE_TOKENS} tokens one at a time; 1 thread, this host; seed 0, one export per distinct "
                  "architecture). Perplexity is the seed-0 held-out value.", "",
                  "| user | method | keep | params ratio | perplexity | "
                  + " | ".join(f"{names[f]} tok/s" for f in fmts) + " |", "|---|---|---|---|---|" + "---|" * len(fmts)]
        for r in sorted(speed, key=lambda r: (r["subset"], -r["ratio"], r["method"])):
            s = r["decode_tok_s"]
            ppl = f"{r['after']:.1f}" if "after" in r else "-"
            mark = " (parity failed)" if s.get("parity_failed") else ""
            lines.append(f"| {r['subset']} | {r['method']} | {r['ratio']:.2f} | {r['params_ratio']:.3f} | {ppl} | "
                         + " | ".join(f"{s[f]:.1f}{mark}" if f in s else "-" for f in fmts) + " |")
        failed = sorted({r["decode_tok_s"]["parity_failed"] for r in speed if r["decode_tok_s"].get("parity_failed")})
        if failed:
            lines += ["", "(parity failed): the export's own parity check flagged the artifact (" + "; ".join(failed)
                      + "); it was timed all the same, since speed does not depend on it. The architecture is cut "
                      "from the first units of the unpruned weights, not the pruned model's own weights."]
        lines.append("")
    return lines


def _verdict(sub: list[dict], ratios) -> list[str]:
    out = []
    for q in ratios:
        cell = {m: {r["seed"]: r["after"] for r in sub if r["method"] == m and r["ratio"] == q} for m in METHODS}
        if not cell["hei"] or not any(cell[m] for m in METHODS[1:]):
            continue
        base = {m: v for m, v in cell.items() if m != "hei" and v}
        best = min(base, key=lambda m: statistics.mean(base[m].values()))
        hei, b = statistics.mean(cell["hei"].values()), statistics.mean(base[best].values())
        out.append(f"- keep {q:.2f}: hei {hei:.1f} vs best baseline {best} {b:.1f} "
                   f"({'hei lower' if hei <= b else 'baseline lower'}, {100 * (hei / b - 1):+.1f}%)")
    return out
