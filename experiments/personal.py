"""Does the user's data change the plan, and does that pay? The controls of personalization.

    python -m experiments.personal --stage plans --out docs/personalization.md     # plan distances (cheap)
    python -m experiments.personal --out docs/personalization.md                   # plans + controls
    python -m experiments.personal --quick --out /tmp/personal.md                  # minutes: what CI runs

Users come from several image domains (experiments/domains.py). Two stages:

* ``plans``: hei's one-shot plan (no recovery) for every user and seed; the
  table compares the distance between plans of users of different domains
  with the distance between two seeds of one user. A personal allocation must
  move more between users than between seeds.
* ``controls``: for every user, seed and ratio, hei with its *own* plan against
  the same model pruned with a *transplanted* plan (hei's plan of a user of
  another domain, same seed and ratio, applied with ``--plan``) and with a
  *depth prior* (the mean plan of all other users), same budget, same size.
  The paired per-seed differences carry a 95% t interval; "better" is written
  only where it excludes 0.

``--baselines activation,taylor,...`` runs the other pruning methods on the same
users, seeds, ratios and budget; the table puts hei's own plan (the default
strength) beside them, with the paired gap to the best of them.

Rows go to OUT.jsonl beside OUT (``--resume`` keeps them); OUT is re-rendered
from the rows alone (``--render-only``).
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

from experiments.common import each_row, host, provenance, t_interval, verdict, weights_sha256
from experiments.domains import USERS, donors, user_folder

VARIANTS = ("own", "transplant", "depth-prior", "donor-units")
_CACHE: dict = {}


# --- one prune --------------------------------------------------------------------

def _data_root() -> Path:
    from pocketsize.zoo import cache_dir

    return cache_dir().parent / "data"


def _personalized(user: str, seed: int, per_class: int, base, round_to: str | None):
    """The (user, seed) personalized model and data, built once per process."""
    key = (user, seed, per_class)
    if key not in _CACHE:
        from experiments.methods import _zoo_model
        from pocketsize.compress.pruning import personalize, resolve_device
        from pocketsize.data import load_image_data

        loaded = _zoo_model(round_to)
        _CACHE.setdefault("sha256", weights_sha256(loaded.model))
        folder = user_folder(USERS[user], per_class, _data_root())
        data = load_image_data(folder, loaded.meta["preprocessing"], seed=seed)
        loaded.model.to(resolve_device(base.device))
        personalize(loaded, data, replace(base, seed=seed))
        loaded.model.to("cpu")
        loaded.refresh_meta()
        _CACHE[key] = (loaded, data)
    return _CACHE[key]


def _config(job: dict):
    from pocketsize import compress

    base = compress.PruneConfig(**job["base"])
    cfg = replace(base, method=job.get("method", "hei"), ratio=job["ratio"], seed=job["seed"],
                  allocation=job.get("allocation"))
    return base, replace(cfg, hei=replace(cfg.hei, beta=job["beta"])) if job.get("beta") is not None else cfg


def prune_row(job: dict) -> dict:
    """One prune of ``job['user']`` with ``job['variant']``'s allocation."""
    import torch

    from pocketsize import compress
    from pocketsize.compress.transplant import Allocation

    torch.set_num_threads(job["threads"])
    if job["variant"] == "donor-units":
        return units_row(job)
    base, cfg = _config(job)
    loaded, data = _personalized(job["user"], job["seed"], job["per_class"], base, job.get("round"))
    t = time.time()
    pruned = compress.prune(copy.deepcopy(loaded), data, cfg)
    r = pruned.report
    return _row(job, cfg, t, **{k: r[k] for k in ("before", "after", "val_before", "val_after", "params_ratio")},
                allocation=Allocation.from_plan(pruned.plan, "row").to_dict())


def _row(job: dict, cfg, started: float, **measured) -> dict:
    """One row: who and how (user, control, budget, hei options), what was measured,
    and where it ran (host, exact weights, command)."""
    return {"stage": job["stage"], "user": job["user"], "domain": USERS[job["user"]].domain,
            "method": job["variant"], "donor": job.get("donor"), "ratio": cfg.ratio, "seed": cfg.seed,
            "buffer": cfg.buffer, "recovery_steps": cfg.recovery_steps, **measured,
            "seconds": round(time.time() - started, 1), "hei": {"beta": cfg.hei.beta, "score": cfg.hei.score},
            "weights": job.get("round") or "fp32", "weights_sha256": _CACHE["sha256"], "host": host(cfg.device),
            "cmd": job.get("cmd", "")}


def units_row(job: dict) -> dict:
    """The donor's whole one-shot plan, unit for unit (its allocation *and* the
    heads and channels its data chose), cut from this user's model; then this
    user's head re-fit, as a one-shot prune at the cut does. Own minus this
    measures what the user's data adds by choosing the units inside blocks."""
    from pocketsize import compress
    from pocketsize.compress import train
    from pocketsize.compress.plan import Plan, apply_plan, count_params

    base, cfg = _config(job)
    if cfg.buffer or cfg.recovery_steps:
        raise SystemExit("donor-units is a control at the cut: run it with --no-buffer --recovery-steps 0")
    key = ("donor-plan", job["donor"], job["seed"], job["ratio"], cfg.hei.beta)
    if key not in _CACHE:
        d_loaded, d_data = _personalized(job["donor"], job["seed"], job["per_class"], base, job.get("round"))
        _CACHE[key] = Plan.from_dict(compress.prune(copy.deepcopy(d_loaded), d_data, cfg).plan["keep"])
    loaded, data = _personalized(job["user"], job["seed"], job["per_class"], base, job.get("round"))
    t = time.time()
    m = copy.deepcopy(loaded)
    apply_plan(m, _CACHE[key])
    train.fit_head(m, data.train, data.val, data.labels, epochs=cfg.probe_epochs, seed=cfg.seed)
    return _row(job, cfg, t, before=train.accuracy(loaded, data.test), after=train.accuracy(m, data.test),
                val_before=train.accuracy(loaded, data.val), val_after=train.accuracy(m, data.val),
                params_ratio=count_params(m.model) / count_params(loaded.model), allocation=None)


# --- plan distance -----------------------------------------------------------------

def distance(a: dict, b: dict) -> float:
    """Mean |kept fraction difference| per unit (each block's attention and MLP)."""
    fa = [k / t for k, t in a["heads"] + a["channels"]]
    fb = [k / t for k, t in b["heads"] + b["channels"]]
    return statistics.mean(abs(x - y) for x, y in zip(fa, fb))


# --- jobs ---------------------------------------------------------------------------

def _job(args, base: dict, stage: str, user: str, seed: int, ratio: float, variant: str, **kw) -> dict:
    return {"stage": stage, "user": user, "seed": seed, "ratio": ratio, "variant": variant, "base": base,
            "per_class": args.per_class, "threads": args.threads, "round": args.round_weights,
            "cmd": " ".join(args.argv), **{"beta": args.betas[0], **kw}}


def control_stage(recovery_steps: int, buffer: bool) -> str:
    """``cut``: plans judged right after the cut and the head re-fit (no recovery);
    ``controls``: after buffered steps and recovery."""
    return "controls" if recovery_steps or buffer else "cut"


def plan_jobs(args, base: dict) -> list[dict]:
    """One-shot hei plans, no recovery: what the score alone allocates."""
    cheap = {**base, "buffer": False, "recovery_steps": 0}
    return [_job(args, cheap, "plans", u, s, q, "own") for s in range(args.seeds) for u in args.users
            for q in args.ratios]


def own_jobs(args, base: dict) -> list[dict]:
    stage = control_stage(base["recovery_steps"], base["buffer"])
    return [_job(args, base, stage, u, s, q, "own", beta=b) for s in range(args.seeds) for u in args.users
            for q in args.ratios for b in args.betas]


def baseline_jobs(args, base: dict) -> list[dict]:
    """The other pruning methods on the same users, seeds, ratios and budget (seed-major:
    a run that is stopped early has every method on the same seeds)."""
    stage = control_stage(base["recovery_steps"], base["buffer"])
    return [_job(args, base, stage, u, s, q, m, method=m) for s in range(args.seeds) for u in args.users
            for q in args.ratios for m in args.baselines]


def control_jobs(args, base: dict, rows: list[dict]) -> list[dict]:
    """Transplant and depth prior for every (user, seed, ratio) whose plans exist."""
    from pocketsize.compress.transplant import Allocation

    stage = control_stage(base["recovery_steps"], base["buffer"])
    own = {(r["user"], r["seed"], r["ratio"]): r for r in rows
           if r["stage"] == stage and r["method"] == "own" and _beta(r) == args.betas[0]}
    jobs = []
    for (u, s, q), _ in sorted(own.items()):
        give = [d for d in donors(args.users, u) if (d, s, q) in own]
        if give and "transplant" in args.variants:
            d = give[0]
            jobs.append(_job(args, base, stage, u, s, q, "transplant", donor=d,
                             allocation=own[(d, s, q)]["allocation"]))
        others = [own[(o, s, q)]["allocation"] for o in args.users if o != u and (o, s, q) in own]
        if others and "depth-prior" in args.variants:
            prior = Allocation.average([Allocation.from_dict(a) for a in others], "depth prior")
            jobs.append(_job(args, base, stage, u, s, q, "depth-prior", donor="others",
                             allocation=prior.to_dict()))
        if give and stage == "cut" and "donor-units" in args.variants:
            jobs.append(_job(args, base, stage, u, s, q, "donor-units", donor=give[0]))
    return jobs


def render_strengths(rows: list[dict], stage: str = "cut") -> list[str]:
    """hei's own plan at each allocation strength, paired by seed against beta 0
    (uniform allocation: exactly the ``activation`` baseline's plan)."""
    own = [r for r in rows if r["stage"] == stage and r["method"] == "own"]
    betas = sorted({_beta(r) for r in own}, key=lambda b: (isinstance(b, str), b if not isinstance(b, str) else 0))
    if len(betas) < 2 or 0.0 not in betas:
        return []
    others = [b for b in betas if b != 0.0]
    lines = ["## Allocation strength (hei's own plan, judged at the cut)", "",
             "beta 0 spreads the cut uniformly by activation importance (the `activation` baseline's plan); "
             "`auto` picks the strength per step from (0.3, 0, 1) on the validation split. Held-out accuracy, "
             "% mean (n seeds); gap = beta minus beta 0 on the same seed, 95% t interval.", "",
             "| user | keep | " + " | ".join(f"beta {b}" for b in betas) + " | "
             + " | ".join(f"{b} - 0" for b in others) + " |",
             "|---|---|" + "---|" * (len(betas) + len(others))]
    for u in sorted({r["user"] for r in own}):
        for q in sorted({r["ratio"] for r in own if r["user"] == u}, reverse=True):
            cell = {b: {r["seed"]: r["after"] for r in own if r["user"] == u and r["ratio"] == q and _beta(r) == b}
                    for b in betas}

            def gap(b) -> str:
                d = [cell[b][s] - cell[0.0][s] for s in sorted(set(cell[b]) & set(cell[0.0]))]
                ci = t_interval(d)
                return "-" if ci is None else (f"{ci[0] * 100:+.1f} [{ci[1] * 100:+.1f}, {ci[2] * 100:+.1f}] "
                                               f"{verdict(ci, len(d))}")

            means = [f"{statistics.mean(cell[b].values()) * 100:.1f} (n={len(cell[b])})" if cell[b] else "-"
                     for b in betas]
            lines.append(f"| {u} ({USERS[u].domain}) | {q:.2f} | " + " | ".join(means) + " | "
                         + " | ".join(gap(b) for b in others) + " |")
    return lines + [""]


def render_baselines(rows: list[dict], stage: str = "cut") -> list[str]:
    """hei's own plan at the CLI's default strength against every other method on the
    same users, seeds, ratios and budget; the paired gap is taken against the baseline
    with the best mean in each cell (chosen after the fact, which favours the baselines)."""
    from pocketsize.compress.config import HeiOptions

    at = [r for r in rows if r["stage"] == stage]
    names = sorted({r["method"] for r in at} - set(VARIANTS))
    if not names:
        return []
    lines = [f"## hei against the other methods ({'judged at the cut' if stage == 'cut' else 'after recovery'})",
             "", f"hei = its own plan at the default strength (beta {HeiOptions.beta}). Held-out accuracy, % mean "
             "(n seeds). Gap = hei minus the baseline with the best mean in that cell, paired by seed, 95% t "
             "interval; \"worse\" only where the whole interval is below 0.", "",
             "| user | keep | hei | " + " | ".join(names) + " | best baseline | hei - best |",
             "|---|---|---|" + "---|" * (len(names) + 2)]
    tally: dict[str, int] = {}
    for u in sorted({r["user"] for r in at}):
        for q in sorted({r["ratio"] for r in at if r["user"] == u}, reverse=True):
            def cell(m: str, beta=None) -> dict:
                return {r["seed"]: r["after"] for r in at if r["user"] == u and r["ratio"] == q and r["method"] == m
                        and (beta is None or _beta(r) == beta)}

            hei, base = cell("own", HeiOptions.beta), {m: cell(m) for m in names}
            base = {m: v for m, v in base.items() if v}
            if not hei or not base:
                continue
            best = max(base, key=lambda m: statistics.mean(base[m].values()))
            d = [hei[s] - base[best][s] for s in sorted(set(hei) & set(base[best]))]
            ci = t_interval(d)
            word = verdict(ci, len(d))
            tally[word] = tally.get(word, 0) + 1
            gap = "-" if ci is None else f"{ci[0] * 100:+.1f} [{ci[1] * 100:+.1f}, {ci[2] * 100:+.1f}] {word}"
            mean = lambda v: f"{statistics.mean(v.values()) * 100:.1f} (n={len(v)})" if v else "-"  # noqa: E731
            lines.append(f"| {u} ({USERS[u].domain}) | {q:.2f} | {mean(hei)} | "
                         + " | ".join(mean(base.get(m, {})) for m in names) + f" | {best} | {gap} |")
    return lines + ["", "Cells: " + ", ".join(f"{n} {w}" for w, n in sorted(tally.items())), ""]


# --- rendering ----------------------------------------------------------------------

def _pct(v: list[float]) -> str:
    if not v:
        return "-"
    return f"{statistics.mean(v) * 100:.1f} [{min(v) * 100:.1f}-{max(v) * 100:.1f}] (n={len(v)})"


def render_plans(rows: list[dict]) -> list[str]:
    plans = [r for r in rows if r["stage"] == "plans"]
    if not plans:
        return []
    lines = ["## Plan distances (hei, one-shot, no recovery)", "",
             "Mean |kept fraction difference| per unit (attention and MLP of every block), in points of the "
             "unit's width. Same seed for the user pairs; same user for the seed pairs.", "",
             "| keep | pair | kind | distance |", "|---|---|---|---|"]
    for q in sorted({r["ratio"] for r in plans}, reverse=True):
        at = {(r["user"], r["seed"]): r["allocation"] for r in plans if r["ratio"] == q}
        users = sorted({u for u, _ in at})
        for i, u in enumerate(users):
            for v in users[i + 1:]:
                d = [distance(at[(u, s)], at[(v, s)]) for (w, s) in at if w == u and (v, s) in at]
                kind = "same domain" if USERS[u].domain == USERS[v].domain else "different domains"
                if d:
                    lines.append(f"| {q:.2f} | {u} vs {v} | {kind} | {statistics.mean(d) * 100:.1f} (n={len(d)}) |")
            seeds = sorted(s for w, s in at if w == u)
            d = [distance(at[(u, a)], at[(u, b)]) for j, a in enumerate(seeds) for b in seeds[j + 1:]]
            if d:
                lines.append(f"| {q:.2f} | {u}: seed vs seed | noise | {statistics.mean(d) * 100:.1f} (n={len(d)}) |")
    return lines + [""]


def render_controls(rows: list[dict], stage: str = "controls") -> list[str]:
    lines: list[str] = []
    for beta in sorted({_beta(r) for r in rows if r["stage"] == stage}, key=str):
        ctl = [r for r in rows if r["stage"] == stage and _beta(r) == beta]
        if any(r["method"] in VARIANTS[1:] for r in ctl):
            lines += _render_controls(ctl, stage, beta)
    return lines


_NAMES = {"transplant": "transplant", "depth-prior": "depth prior", "donor-units": "donor's units"}


def _render_controls(ctl: list[dict], stage: str, beta: float | str) -> list[str]:
    budget = sorted({(r["recovery_steps"], r["buffer"]) for r in ctl if "recovery_steps" in r})
    how = "; ".join(f"{n} recovery steps, buffer {'on' if b else 'off'}" + (" (judged at the cut, after the head "
                    "re-fit)" if n == 0 else "") for n, b in budget)
    title = "judged at the cut" if stage == "cut" else "after step buffering and recovery"
    controls = [v for v in VARIANTS[1:] if any(r["method"] == v for r in ctl)]
    lines = [f"## Own plan against its controls: {title} (hei beta {beta})", "",
             f"Budget: {how or 'as recorded'}. Held-out accuracy, % mean [min-max] (n seeds); same model, data, "
             "size and budget for every column. Paired gap = own minus control on the same seed, 95% t interval.", "",
             "| user | keep | own | " + " | ".join(_NAMES[v] for v in controls) + " | "
             + " | ".join(f"own - {_NAMES[v]}" for v in controls) + " |",
             "|---|---|---|" + "---|" * (2 * len(controls))]
    for u in sorted({r["user"] for r in ctl}):
        for q in sorted({r["ratio"] for r in ctl if r["user"] == u}, reverse=True):
            cell = lambda m: {r["seed"]: r["after"] for r in ctl if r["user"] == u and r["ratio"] == q  # noqa: E731
                              and r["method"] == m}
            own = cell("own")

            def gap(other: dict) -> str:
                d = [own[s] - other[s] for s in sorted(set(own) & set(other))]
                ci = t_interval(d)
                if ci is None:
                    return "-"
                return f"{ci[0] * 100:+.1f} [{ci[1] * 100:+.1f}, {ci[2] * 100:+.1f}] {verdict(ci, len(d))}"

            cells = [cell(v) for v in controls]
            lines.append(f"| {u} ({USERS[u].domain}) | {q:.2f} | {_pct(list(own.values()))} | "
                         + " | ".join(_pct(list(c.values())) for c in cells) + " | "
                         + " | ".join(gap(c) for c in cells) + " |")
    return lines + [""]


def render(rows: list[dict]) -> str:
    users = sorted({r["user"] for r in rows})
    lines = ["# Personalization controls", "",
             "Model: zoo:dinov2-small (DINOv2 ViT-S/14, 112 px). Users: "
             + "; ".join(f"{u} = {USERS[u].domain} ({USERS[u].label})" for u in users) + ".",
             "Split 50/15/35 train/val/held-out per seed; accuracies are held-out.", "",
             "Where the rows come from (`python -m experiments.personal ARGS`, rows in the .jsonl beside this file):",
             ""]
    lines += provenance(rows) + [""]
    lines += (render_plans(rows) + render_controls(rows, "cut") + render_strengths(rows, "cut")
              + render_baselines(rows, "cut") + render_controls(rows, "controls") + render_baselines(rows, "controls"))
    return "\n".join(lines) + "\n"


# --- driver -------------------------------------------------------------------------

def _beta(r: dict) -> float | str:
    """hei's beta of a row or job (rows before it was recorded ran the default)."""
    from pocketsize.compress.config import HeiOptions

    b = r["hei"].get("beta") if "hei" in r else r.get("beta")
    return HeiOptions.beta if b is None else b


def _key(r: dict) -> tuple:
    return (r["stage"], r["user"], r["seed"], r["ratio"], r.get("method", r.get("variant")), _beta(r))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="markdown file to write (rows go to OUT.jsonl beside it)")
    p.add_argument("--stage", choices=("plans", "controls", "all"), default="all")
    p.add_argument("--users", default="A,B,D,F", help=f"comma-separated, of {','.join(USERS)}")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--ratios", default="0.5,0.35")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--recovery-steps", type=int, default=60)
    p.add_argument("--no-buffer", action="store_true", help="one-shot pruning (with --recovery-steps 0: the plans "
                   "judged at the cut, after the head re-fit, before any recovery)")
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (each builds its own users)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores / jobs)")
    p.add_argument("--variants", default=",".join(VARIANTS[1:]),
                   help="controls to run beside own (donor-units only with --no-buffer --recovery-steps 0)")
    p.add_argument("--baselines", default="", help="other methods to run on the same users, seeds and budget "
                   "(comma-separated, e.g. activation,taylor,magnitude,random,block-influence)")
    p.add_argument("--beta", default=None, help="hei's allocation strengths, comma-separated numbers or auto "
                   "(default: the CLI's); own plans run at each, the controls at the first")
    p.add_argument("--round-weights", choices=("fp16", "bf16"), default=None)
    p.add_argument("--quick", action="store_true", help="2 users, 1 seed, keep 0.5, tiny budget (CI: the plumbing, not a result)")
    p.add_argument("--resume", action="store_true", help="keep rows already in OUT.jsonl")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.users, args.seeds, args.ratios, args.per_class = "A,D", 1, "0.5", 16
        args.recovery_steps = min(args.recovery_steps, 2)
    args.users = [u for u in args.users.split(",") if u]
    bad = [u for u in args.users if u not in USERS]
    if bad:
        raise SystemExit(f"unknown user(s) {bad}; valid: {', '.join(USERS)}")
    args.ratios = [float(q) for q in args.ratios.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    if [v for v in args.variants if v not in VARIANTS[1:]]:
        raise SystemExit(f"--variants: valid controls are {', '.join(VARIANTS[1:])}")
    from pocketsize.compress.config import HeiOptions
    from pocketsize.compress.methods import METHODS

    args.baselines = [m for m in args.baselines.split(",") if m]
    if [m for m in args.baselines if m not in METHODS or m == "hei"]:
        raise SystemExit(f"--baselines: valid methods are {', '.join(m for m in METHODS if m != 'hei')}")
    args.betas = ([HeiOptions.beta] if args.beta is None else
                  [b if b == "auto" else float(b) for b in args.beta.split(",") if b])

    import os

    from pocketsize import compress

    args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_file = out.with_suffix(".jsonl")
    rows = ([json.loads(l) for l in rows_file.read_text().splitlines()]
            if (args.resume or args.render_only) and rows_file.exists() else [])
    if args.render_only:
        out.write_text(render(rows))
        return 0
    base = compress.PruneConfig(recovery_steps=args.recovery_steps, device=args.torch_device, finetuned_reference=False,
                                buffer=not args.no_buffer)
    if args.quick:
        base = replace(base, calib_samples=8, probe_epochs=3, steps=2)
    base_d = {k: v for k, v in base.to_dict().items() if k != "version"}
    for u in args.users:  # build every user's data before the first prune (fails early)
        user_folder(USERS[u], args.per_class, _data_root())

    def run(jobs: list[dict]) -> None:
        done = {_key(r) for r in rows}
        todo = [j for j in jobs if _key(j) not in done]
        from experiments.personal import prune_row as job_fn  # by module name: spawn workers import it

        for row in each_row(job_fn, todo, args.jobs):  # a GPU: --torch-device cuda --jobs 12
            finished(row)

    def finished(row: dict) -> None:
        rows.append(row)
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['stage']} {row['user']} seed {row['seed']} {row['method']:<11} keep {row['ratio']:.2f}: "
              f"{row['before']:.4f} -> {row['after']:.4f} ({row['seconds']} s)", file=sys.stderr, flush=True)
        out.write_text(render(rows))

    if args.stage in ("plans", "all"):
        run(plan_jobs(args, base_d))
    if args.stage in ("controls", "all"):
        run(control_jobs(args, base_d, rows))  # controls of own plans already measured come first
        run(own_jobs(args, base_d))
        run(control_jobs(args, base_d, rows))
        run(baseline_jobs(args, base_d))
    out.write_text(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
