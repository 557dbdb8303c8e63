"""Recovery that pays for itself: recipes and budget curves.

    python -m experiments.recovery --out docs/recovery.md --users A,B --seeds 3 --ratios 0.5 \\
        --budgets 60 --recipes default,lr=1e-5,lr=3e-5,lr=1e-5+distill=0      # which recipe, at the default budget
    python -m experiments.recovery --out docs/recovery.md --resume --budgets 0,30,60,120 --recipes lr=1e-5
    python -m experiments.recovery --quick --out /tmp/recovery.md                           # the plumbing (CI)

Every row is one real ``compress.prune`` of a Fashion-MNIST user (the methods
suite's users, 200 images a class) with hei, step buffering on, at one kept
ratio, one recovery budget (total optimizer steps) and one *recipe*: fields
of PruneConfig that the recovery reads (``lr``, ``head_lr``, ``distill``,
``final_share``, ``teacher``, ``recovery_loss``, and ``lm_lr`` for language models), written
``lr=1e-5+teacher=finetuned``; ``default`` is the CLI's.
The row with the first ratio of a (user, seed, budget, recipe) also carries
the fine-tuned reference: the unpruned model after the same recipe and budget.

The page shows held-out accuracy against the budget for every recipe, the
linear probe (the unpruned model before any training) and the fine-tuned
reference beside it, and paired per-seed differences (95% t interval) of
each recipe against the default and of each budget against the one before it,
on validation (where choices are made) and held-out (what is reported).
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

from experiments.common import each_row, host, provenance, t_interval, verdict

def flag(text: str) -> bool:
    return bool(int(text))


RECIPE_KEYS = {"lr": float, "head_lr": float, "distill": flag, "final_share": float,
               "teacher": str, "recovery_loss": str, "lm_lr": float,  # lm_lr: LMOptions.lr, the language models' rate
               "lm_distill": float, "reconstruct": flag,  # lm_distill: LMOptions.distill, the KL weight
               "finetune_steps": int,  # fine-tuning of the unpruned model before the cut (and the reference)
               "lm_qat_group": int,  # LMOptions.qat_group: recovery through the int4 .onnx grid (0: off)
               "channel_multiple": int}  # MLP widths in multiples of this (run --quantize int4: the group size)
# keys that change the cut itself: a 0-step row is shared only by equal values
CUT_KEYS = ("reconstruct", "finetune_steps", "channel_multiple")
LM_KEYS = ("lm_lr", "lm_distill", "lm_qat_group")  # LMOptions fields, without their lm_ prefix
DEFAULT = "default"
# the language models' general text: a fortunes category that is neither user's (other people's prose
# quotes), the same held-out chunks for every row
GENERAL_TEXT = "/usr/share/games/fortunes/literature"


def parse_recipe(spec: str) -> dict:
    """``lr=1e-5+distill=0`` -> PruneConfig fields; ``default`` -> {}."""
    if spec == DEFAULT:
        return {}
    out: dict = {}
    for opt in spec.split("+"):
        k, eq, v = opt.partition("=")
        if not eq or k not in RECIPE_KEYS:
            raise SystemExit(f"recipe {spec!r}: write {DEFAULT} or k=v joined by +, k one of {', '.join(RECIPE_KEYS)}")
        try:
            out[k] = RECIPE_KEYS[k](v)
        except ValueError:
            raise SystemExit(f"recipe {spec!r}: {k}={v!r} is not a {RECIPE_KEYS[k].__name__}") from None
    return out


def cut_recipe(spec: str) -> str:
    """The part of a recipe that changes the cut (not the recovery): 0-step rows are shared by equal ones."""
    return "+".join(opt for opt in spec.split("+") if opt.partition("=")[0] in CUT_KEYS) if spec != DEFAULT else ""


def _config(base, job: dict):
    fields = parse_recipe(job["recipe"])
    lm = {k[3:]: fields.pop(k) for k in LM_KEYS if k in fields}
    cfg = replace(base, ratio=job["ratio"], seed=job["seed"], recovery_steps=job["budget"],
                  finetuned_reference=job["reference"], **fields)
    return replace(cfg, lm=replace(cfg.lm, **lm)) if lm else cfg


def _model_and_data(job: dict, base):
    """The personalized ViT (linear probe) and its images, or SmolLM2 and the user's text."""
    if job["task"] == "llm":
        from experiments import llm

        return llm._model(), llm._data(job["subset"], job["seed"], base.lm.seq_len)
    from experiments import methods

    return methods._personalized(job["subset"], job["seed"], job["per_class"], base, base.device)


def run_job(job: dict) -> dict:
    import torch

    from pocketsize import compress

    torch.set_num_threads(job["threads"])
    base = compress.PruneConfig(**job["base"])
    loaded, data = _model_and_data(job, base)
    cfg = _config(base, job)
    t = time.time()
    r = compress.prune(copy.deepcopy(loaded), data, cfg).report
    recipe = recipe_config(cfg)
    return {"task": job["task"], "user": job["subset"], "recipe": job["recipe"], "ratio": cfg.ratio,
            "seed": cfg.seed, "budget": cfg.recovery_steps, "metric": r["metric"], "before": r["before"],
            "val_before": r["val_before"], "after": r["after"], "val_after": r["val_after"],
            "finetuned": r["references"]["finetuned"], "general": r.get("general"), "params_ratio": r["params_ratio"],
            "seconds": round(time.time() - t, 1), "recipe_config": recipe,
            "weights": "gguf q4_1 -> fp32" if job["task"] == "llm" else "fp32", "host": host(cfg.device),
            "cmd": job["cmd"]}


def recipe_config(cfg) -> dict:
    """Every recipe key's value in ``cfg`` (what a row records it ran with)."""
    return ({k: getattr(cfg, k) for k in RECIPE_KEYS if not k.startswith("lm_")}
            | {k: getattr(cfg.lm, k[3:]) for k in LM_KEYS})


def _key(r: dict) -> tuple:
    return r["user"], r["recipe"], r["ratio"], r["budget"], r["seed"]


def jobs(args, base: dict, done: set) -> list[dict]:
    if args.task == "llm":
        subsets = args.users
    else:
        from experiments import methods

        subsets = [next(k for k in methods.SUBSETS if k.startswith(u)) for u in args.users]
    out = []
    for seed in range(args.seeds):  # seed-major: a stopped run has every user at the seeds it reached
        for subset in subsets:
            for recipe in args.recipes:
                for budget in args.budgets:
                    if budget == 0 and recipe != next(r for r in args.recipes if cut_recipe(r) == cut_recipe(recipe)):
                        continue  # no recovery: recipes with the same cut are the same prune (they share that row)
                    for ratio in args.ratios:
                        job = {"subset": subset, "seed": seed, "recipe": recipe, "budget": budget, "ratio": ratio,
                               "reference": args.references and ratio == args.ratios[0] and budget > 0,
                               "task": args.task, "base": base, "per_class": args.per_class,
                               "threads": args.threads, "cmd": args.cmd}
                        if (subset, recipe, ratio, budget, seed) not in done and not (
                                budget == 0 and any(k[2:] == (ratio, 0, seed) and k[0] == subset
                                                    and cut_recipe(k[1]) == cut_recipe(recipe) for k in done)):
                            out.append(job)
    return out


# --- rendering --------------------------------------------------------------------

def _ppl(rows: list[dict]) -> bool:
    return rows[0].get("metric") == "perplexity"


def _cell(vals: list[float], ppl: bool) -> str:
    if not vals:
        return "-"
    k = 1 if ppl else 100
    m = k * statistics.mean(vals)
    return f"{m:.1f} (n=1)" if len(vals) == 1 else f"{m:.1f} [{k * min(vals):.1f}-{k * max(vals):.1f}] (n={len(vals)})"


def _paired(a: dict, b: dict, label: str, ppl: bool) -> str:
    """``a`` against ``b`` over their common seeds, positive when ``a`` is better: accuracy
    points ``a - b``, or for perplexity the percentage by which ``a`` is lower than ``b``."""
    seeds = sorted(set(a) & set(b))
    diffs = [100 * (1 - a[s] / b[s]) if ppl else 100 * (a[s] - b[s]) for s in seeds]
    ci = t_interval(diffs)
    if ci is None:
        return f"{label}: n={len(seeds)}, no interval" + (f" ({diffs[0]:+.1f})" if diffs else "")
    return f"{label}: {ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}] over {len(seeds)} seeds: {verdict(ci, len(seeds))}"


INTRO = {
    "image": "zoo:dinov2-small (112 px) pruned with hei, step buffering on (3 pruning steps, half the budget on the "
             "final architecture), for Fashion-MNIST users of 200 images a class (50/15/35 train/val/held-out, "
             "seeded). Budget: total recovery optimizer steps, batch 32. A recipe names the recovery settings "
             "changed from the CLI's defaults (`default`: backbone lr 1e-6, head lr 1e-4, distillation on). "
             "Accuracy in %, mean [min-max] over seeds. *base*: the unpruned model before any training (a linear "
             "head on frozen features, what pruning starts from); *fine-tuned*: the unpruned model after the same "
             "recipe and budget. Differences are in accuracy points, positive when the first is better.",
    "llm": "zoo:smollm2-135m pruned with hei at the CLI's settings (3 pruning steps, 64 calibration chunks of 128 "
           "tokens, 8 chunks per optimizer step), for users that are categories of Debian's fortunes package. A "
           "recipe names the settings changed from the CLI's defaults (`default`: output reconstruction at every "
           "cut, recovery on the user's text alone at lm lr 3e-4; `distill=0` and `lm_distill=0` both train on the "
           "text alone). Rows measured under the earlier defaults name every setting they ran with "
           "(`lm_lr=2e-5+lm_distill=0.5+reconstruct=0` was the default before). Held-out perplexity on the user's "
           "own text, mean "
           "[min-max] over seeds (lower is better). *base*: the untouched model; *fine-tuned*: the unpruned model "
           "after the same recipe and budget. Differences are the % by which the first's perplexity is lower.",
}


def page(rows: list[dict], source: str = "docs/recovery.jsonl") -> str:
    """docs/recovery.md (or another --out page) as the rows in ``source`` render it."""
    return "\n".join(render(rows, source)).rstrip("\n") + "\n"


def render(rows: list[dict], source: str = "docs/recovery.jsonl") -> list[str]:
    rows = [r for r in rows if not r.get("error")]
    if not rows:
        return []
    lines = ["# Recovery: recipes and budget curves", "",
             f"Generated by `python -m experiments.recovery` from {source}; do not edit by hand.", ""]
    for task, title in (("image", "Vision: DINOv2-S"), ("llm", "Language model: SmolLM2-135M")):
        sub = [r for r in rows if r.get("task", "image") == task]
        if sub:
            lines += [f"## {title}", "", INTRO[task], "", "Where the rows come from "
                      "(`python -m experiments.recovery ARGS`):", ""]
            lines += provenance([{**r, "method": "hei"} for r in sub]) + [""]
            for user in sorted({r["user"] for r in sub}):
                lines += _render_user([r for r in sub if r["user"] == user], user)
    return lines


def reference_recipe(spec: str) -> str:
    """The recipe that trains ``spec``'s fine-tuned reference: the teacher option only says
    who teaches the *pruned* model, so ``lr=1e-5+teacher=finetuned`` shares ``lr=1e-5``'s."""
    kept = [opt for opt in spec.split("+") if not opt.startswith("teacher=")] if spec != DEFAULT else []
    return "+".join(kept) or DEFAULT


def _render_user(rows: list[dict], user: str) -> list[str]:
    ppl = _ppl(rows)
    base = {r["seed"]: r["before"] for r in rows}
    recipes = sorted({r["recipe"] for r in rows}, key=lambda s: (s != DEFAULT, s))
    # the fine-tuned reference depends neither on the ratio nor on the teacher option: one
    # value per (reference recipe, budget, seed), from whichever row measured it
    fine = {(reference_recipe(r["recipe"]), r["budget"], r["seed"]): r["finetuned"] for r in rows
            if r.get("finetuned") is not None}
    # without recovery only the cut's options matter: a 0-step prune stands for every recipe with its cut
    rows = [r for r in rows if r["budget"]] + [{**r, "recipe": rec} for r in rows if not r["budget"]
                                                for rec in recipes if cut_recipe(rec) == cut_recipe(r["recipe"])]
    budgets = sorted({r["budget"] for r in rows})
    metric = "perplexity" if ppl else "accuracy"
    lines = [f"### User {user}", "", f"Base (unpruned, held-out {metric}): {_cell(list(base.values()), ppl)}", ""]
    refs = [(rec, bud, [v for (rc, b, _), v in fine.items() if rc == rec and b == bud])
            for rec in sorted({reference_recipe(r) for r in recipes}) for bud in budgets]
    if any(v for _, _, v in refs):
        lines += ["Fine-tuned unpruned reference (held-out), by the recipe that trains it (the teacher option "
                  "does not change it) and budget:", ""]
        lines += [f"- {rec}, {bud} steps: {_cell(v, ppl)}" for rec, bud, v in refs if v] + [""]
    general = [r["general"] for r in rows if r.get("general")]
    tables = [("validation", lambda r: r["val_after"]), ("held-out", lambda r: r["after"])]
    if general:  # forgetting: the same metric on text that is not the user's
        gbase = {r["seed"]: r["general"]["base"] for r in rows if r.get("general")}
        gfine = {b: [r["general"]["finetuned"] for r in rows if r["budget"] == b and r.get("general")
                     and r["general"].get("finetuned") is not None] for b in budgets if b}
        lines += [f"General text (not the user's: {general[0]['text']}), untouched model: "
                  f"{_cell(list(gbase.values()), ppl)}" + "".join(
                      f"; fine-tuned reference, {b} steps: {_cell(v, ppl)}" for b, v in gfine.items() if v), ""]
        tables.append(("general-text", lambda r: (r.get("general") or {}).get("after")))
    for ratio in sorted({r["ratio"] for r in rows}, reverse=True):
        at = {(r["recipe"], r["budget"], r["seed"]): r for r in rows if r["ratio"] == ratio}
        for split, get in tables:
            lines += [f"#### keep {ratio:.2f}, {split} {metric}", "",
                      "| recipe | " + " | ".join(f"{b} steps" for b in budgets) + " |",
                      "|---|" + "---|" * len(budgets)]
            for rec in recipes:
                cells = [_cell([v for (rc, b, _), r in at.items() if rc == rec and b == bud
                                and (v := get(r)) is not None], ppl) for bud in budgets]
                lines.append(f"| {rec} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += _comparisons(at, recipes, budgets, base, fine, ppl)
    return lines


def _comparisons(at: dict, recipes: list[str], budgets: list[int], base: dict, fine: dict, ppl: bool) -> list[str]:
    def series(rec, bud, key):
        return {s: r[key] for (rc, b, s), r in at.items() if rc == rec and b == bud}

    def both(a_rec, a_bud, b_rec, b_bud) -> str:
        return "; ".join(_paired(series(a_rec, a_bud, k), series(b_rec, b_bud, k), split, ppl)
                         for split, k in (("validation", "val_after"), ("held-out", "after")))

    out = [f"- {bud} steps, {rec} against default: " + both(rec, bud, DEFAULT, bud)
           for bud in budgets if bud for rec in recipes if rec != DEFAULT and series(DEFAULT, bud, "after")
           and series(rec, bud, "after")]
    for rec in recipes:
        out += [f"- {rec}, {bud} against {prev} steps: " + both(rec, bud, rec, prev)
                for prev, bud in zip(budgets, budgets[1:]) if series(rec, bud, "after") and series(rec, prev, "after")]
        for bud in budgets:
            s = series(rec, bud, "after")
            if not s or not bud:
                continue
            ok = sum((s[x] <= base[x]) if ppl else (s[x] >= base[x]) for x in s)
            line = f"- {rec}, {bud} steps: at least as good as the base on {ok} of {len(s)} seeds; " + _paired(
                s, base, "against base (held-out)", ppl)
            ref = {x: v for (rc, b, x), v in fine.items() if rc == reference_recipe(rec) and b == bud}
            if ref:
                line += "; " + _paired(s, ref, "against fine-tuned (held-out)", ppl)
            out.append(line)
    head = "Paired per-seed differences, " + ("% lower perplexity" if ppl else "accuracy points") + \
        " (95% t interval; validation is where choices are made):"
    return ([head, ""] + out + [""]) if out else []


# --- driver -------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="markdown file to write (rows go to OUT.jsonl beside it)")
    p.add_argument("--task", choices=("image", "llm"), default="image")
    p.add_argument("--users", default=None, help="image: methods-suite users by letter (default A,B; A easy, B hard); "
                   "llm: fortunes categories (default computers,songs-poems)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ratios", default=None, help="kept fractions (default image 0.5,0.35; llm 0.85,0.7)")
    p.add_argument("--budgets", default="0,30,60,120", help="total recovery optimizer steps, comma-separated")
    p.add_argument("--recipes", default=DEFAULT, help=f"comma-separated: {DEFAULT} or k=v+k=v "
                   f"(k one of {', '.join(RECIPE_KEYS)})")
    p.add_argument("--general-text", default=GENERAL_TEXT, help="llm: text that is not the user's, for the "
                   f"forgetting column (--lm-general-text; default {GENERAL_TEXT}; '' to skip)")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--no-references", dest="references", action="store_false",
                   help="skip the fine-tuned unpruned reference (it costs one more recovery per cell)")
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores / jobs)")
    p.add_argument("--quick", action="store_true", help="1 user, 1 seed, tiny data and budgets (CI: the plumbing)")
    p.add_argument("--resume", action="store_true", help="keep rows already in OUT.jsonl")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    args.cmd = " ".join(sys.argv[1:] if argv is None else argv)
    llm_task = args.task == "llm"
    if args.quick:
        args.users, args.seeds, args.per_class, args.budgets = "computers" if llm_task else "A", 1, 16, "0,2"
        args.ratios = "0.7" if llm_task else "0.5"
    args.users = [u for u in (args.users or ("computers,songs-poems" if llm_task else "A,B")).split(",") if u]
    args.ratios = args.ratios or ("0.85,0.7" if llm_task else "0.5,0.35")
    args.ratios = [float(q) for q in args.ratios.split(",")]
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.recipes = [s for s in args.recipes.split(",") if s]
    from pocketsize import compress
    from pocketsize.errors import BadInput

    for spec in args.recipes:  # a bad value is refused here, not in a worker an hour in
        try:
            _config(compress.PruneConfig(), {"recipe": spec, "ratio": 0.5, "seed": 0, "budget": 1, "reference": False})
        except BadInput as e:
            raise SystemExit(f"recipe {spec!r}: {e}") from None
    if llm_task:
        from experiments import llm

        for u in args.users:
            llm.corpus_file(u)  # exits naming the fortunes package when a category is missing
    else:
        from experiments import methods

        bad = [u for u in args.users if not any(k.startswith(u) for k in methods.SUBSETS)]
        if bad:
            raise SystemExit(f"unknown user(s) {bad}; valid: {', '.join(k[0] for k in methods.SUBSETS)}")
    import os

    args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_file = out.with_suffix(".jsonl")
    rows = ([json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
            if (args.resume or args.render_only) and rows_file.exists() else [])
    if not args.render_only:
        base = compress.PruneConfig(device=args.torch_device)
        if args.quick:  # the plumbing, not a result (short text chunks make every LM pass 4x cheaper)
            base = replace(base, calib_samples=8 if llm_task else 16, probe_epochs=5, steps=2,
                           lm=replace(base.lm, seq_len=32, batch_size=4))
        if llm_task and args.general_text:
            base = replace(base, lm=replace(base.lm, general_text=args.general_text))
        base = {k: v for k, v in base.to_dict().items() if k != "version"}
        todo = jobs(args, base, {_key(r) for r in rows if not r.get("error")})
        print(f"{len(todo)} prunes to run", file=sys.stderr, flush=True)
        with rows_file.open("a" if args.resume else "w") as f:
            for row in each_row(run_job, todo, args.jobs):
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"{row['user']} {row['recipe']} keep {row['ratio']} {row['budget']} steps seed {row['seed']}: "
                      f"held-out {row['after']:.3f} (base {row['before']:.3f}, fine-tuned {row['finetuned']}) "
                      f"{row['seconds']} s", file=sys.stderr, flush=True)
    out.write_text(page(rows, rows_file.as_posix()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
