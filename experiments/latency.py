"""The latency suite: how well the latency model predicts, whether hei's plans
pay a runtime tax at equal MACs, and whether --target-latency lands on its target.

    python -m experiments.latency --stage model       # grid + 10 held-out architectures per runtime
    python -m experiments.latency --stage equal-macs  # hei plans vs uniform plans of the same MACs
    python -m experiments.latency --stage target      # pocketsize demo --target-latency, 3 seeds, + --ratio runs
    python -m experiments.latency --render-only       # docs/results.md's latency section from docs/latency.jsonl

Every stage appends rows to docs/latency.jsonl (with host and command); the
page and the latency section of docs/results.md are rendered from the rows
(``python -m experiments.docs``). Timings are medians of the harness's runner
on this host at 1 thread, measured side by side in one process run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments.common import host

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROWS = DOCS / "latency.jsonl"
MODEL = "zoo:dinov2-small"

log = logging.getLogger("experiments.latency")


def _append(row: dict[str, Any], cmd: str) -> None:
    row = {**row, "host": host("cpu"), "cmd": cmd, "date": time.strftime("%Y-%m-%d")}
    with ROWS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row)[:300], flush=True)


def _loaded():
    from pocketsize.latency_grid import with_head
    from pocketsize.loading import load_model

    return with_head(load_model(MODEL))


def held_out_architectures(sig, n: int, seed: int = 1234) -> list[list[tuple[int, int]]]:
    """Random per-block widths, drawn as the calibration models are but with another seed: held out."""
    from pocketsize.latency_grid import CALIBRATION_SEED, random_architectures

    assert seed != CALIBRATION_SEED
    return random_architectures(sig, n, seed)


def stage_model(args, cmd: str) -> None:
    from pocketsize import latency_grid

    loaded = _loaded()
    for runtime in args.runtimes:
        t0 = time.time()
        lm = latency_grid.profile(loaded, "local", runtime, 1, use_cache=False)
        grid_s = time.time() - t0
        _append({"stage": "grid", "runtime": runtime, "seconds": round(grid_s, 1), "model": lm.to_dict()}, cmd)
        archs = held_out_architectures(lm.signature, args.archs)
        measured = [t[0] for t in latency_grid.time_counts(loaded, archs, "local", runtime, 1)]
        for counts, ms in zip(archs, measured):
            pred = lm.predict(counts)
            _append({"stage": "model", "runtime": runtime, "counts": counts, "predicted_ms": round(pred, 3),
                     "measured_ms": round(ms, 3), "error": round(pred / ms - 1, 4)}, cmd)


def block_macs(sig, tokens: int, h: int, c: int) -> int:
    """Multiply-accumulates of one block: q/k/v/o projections, attention, MLP."""
    hd = sig.dim // sig.heads
    return tokens * 4 * sig.dim * hd * h + 2 * tokens * tokens * hd * h + 2 * tokens * sig.dim * c


def uniform_at(sig, tokens: int, macs: int, heads: int) -> list[tuple[int, int]]:
    """Every block with ``heads`` heads and the multiple-of-8 width that comes closest to ``macs`` in all."""
    per = macs / sig.blocks - block_macs(sig, tokens, heads, 0)
    c = max(8, min(sig.mlp_hidden, 8 * round(per / (2 * tokens * sig.dim) / 8)))
    return [(heads, c)] * sig.blocks


def rounded(counts, m: int, sig, tokens: int) -> list[tuple[int, int]]:
    """``counts`` with every width on a multiple of m and total MACs not above the original's."""
    budget = sum(block_macs(sig, tokens, h, c) for h, c in counts)
    out = [(h, max(m, (c // m) * m)) for h, c in counts]
    lost = sorted(range(len(counts)), key=lambda i: out[i][1] - counts[i][1])  # most rounded-down first
    for i in lost:
        h, c = out[i]
        if c + m <= sig.mlp_hidden and sum(block_macs(sig, tokens, *hc) for hc in out) + 2 * tokens * sig.dim * m <= budget:
            out[i] = (h, c + m)
    return out


def hei_plans(ratio: float) -> list[tuple[str, list[tuple[int, int]]]]:
    """hei's own plans recorded by the personalization suite (seed 0 of each user)."""
    seen, out = set(), []
    for line in (DOCS / "personalization.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["method"] == "own" and r["ratio"] == ratio and r["seed"] == 0 and r["user"] not in seen:
            a = r["allocation"]
            out.append((r["user"], [(h[0], c[0]) for h, c in zip(a["heads"], a["channels"])]))
            seen.add(r["user"])
    return out


def stage_equal_macs(args, cmd: str) -> None:
    from pocketsize import latency_grid

    loaded = _loaded()
    shape = (1, *loaded.adapter.preprocessing(loaded.model)["input_size"])
    sig = latency_grid.signature_of(loaded, shape)
    tokens = int(latency_grid.block_input(loaded, shape)[0].shape[1])
    for ratio in args.ratios:
        for user, hei in hei_plans(ratio):
            macs = sum(block_macs(sig, tokens, h, c) for h, c in hei)
            heads = round(sum(h for h, _ in hei) / len(hei))
            variants = {"hei": hei, "uniform": uniform_at(sig, tokens, macs, heads)}
            for m in args.multiples:
                variants[f"hei-x{m}"] = rounded(hei, m, sig, tokens)
            names = list(variants)
            for runtime in args.runtimes:
                timed = latency_grid.time_counts(loaded, [variants[k] for k in names], "local", runtime, 1,
                                                 rounds=args.rounds, input_shape=shape, interleave=args.interleave)
                for k, rounds in zip(names, timed):
                    ms = statistics.median(rounds)
                    _append({"stage": "equal-macs", "runtime": runtime, "user": user, "ratio": ratio, "variant": k,
                             "counts": variants[k], "timing": _timing(args),
                             "macs": sum(block_macs(sig, tokens, h, c) for h, c in variants[k]),
                             "measured_ms": round(ms, 3), "runs_ms": [round(t, 3) for t in rounds]}, cmd)


def _timing(args) -> str:
    if args.interleave:
        return f"interleaved: one process, {args.interleave} inferences of each variant in turn per round"
    return "processes: one runner process per variant and round"


def stage_target(args, cmd: str) -> None:
    """pocketsize demo --target-latency (60% of the unpruned p50) and a --ratio run
    at the parameter ratio the latency run reached, per seed."""
    from pocketsize import latency_grid

    lm = latency_grid.profile(_loaded(), "local", "onnx", 1)  # the cached one the runs will use
    target = round(args.fraction * lm.measured_p50_ms, 2)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    for seed in range(args.seeds):
        runs = {}
        for kind in ("target", "ratio"):
            out = Path(args.work) / f"{kind}-{seed}"
            flag = ["--target-latency", str(target)] if kind == "target" else \
                ["--ratio", f"{runs['target']['params_ratio']:.3f}"]
            argv = ["pocketsize", "demo", "--out", str(out), "--to", "onnx", "--seed", str(seed),
                    "--no-finetuned-reference", *flag]
            t0 = time.time()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            s = json.loads((out / "summary.json").read_text())
            runs[kind] = s
            _append({"stage": "target", "kind": kind, "seed": seed, "target_ms": target,
                     "unpruned_model_ms": lm.measured_p50_ms, "argv": argv[1:],
                     "params_ratio": s["params_ratio"], "before": s["before"], "after": s["after"],
                     "p50_ms": s["p50_ms"], "latency": s.get("latency"), "seconds": round(time.time() - t0, 1)},
                    cmd)


# --- rendering ------------------------------------------------------------------


def render(rows: list[dict]) -> list[str]:
    lines = ["## Latency: the latency model and `--target-latency`", "",
             "Generated from docs/latency.jsonl by `python -m experiments.docs`; the rows come from "
             "`python -m experiments.latency` on the host named in each row (local device, 1 thread).", ""]
    lines += _render_model(rows) + _render_equal(rows) + _render_target(rows)
    return lines


def _render_model(rows: list[dict]) -> list[str]:
    out = []
    for runtime in sorted({r["runtime"] for r in rows if r["stage"] == "model"}):
        errs = [r for r in rows if r["stage"] == "model" and r["runtime"] == runtime]
        grid = [r for r in rows if r["stage"] == "grid" and r["runtime"] == runtime][-1:]
        out += [f"### Prediction error, {runtime}, {len(errs)} held-out architectures", ""]
        if grid:
            g = grid[0]["model"]
            whole = next((n.count("/") for n in g["notes"] if n.startswith("calibration models")), 2)
            out += [f"Grid: {len(g['attn'])} head counts + {len(g['mlp'])} MLP widths + {whole} whole models, "
                    f"measured in {grid[0]['seconds']:.0f} s; unpruned p50 {g['measured_p50_ms']:.2f} ms; "
                    f"base {g['base_ms']:.2f} ms, scale {g['scale']:.3f}, width multiple {g['multiple']}.", ""]
        out += ["| # | heads per block | MLP widths per block | predicted ms | measured ms | error |",
                "|---|---|---|---|---|---|"]
        for i, r in enumerate(errs):
            hs = "/".join(str(h) for h, _ in r["counts"])
            cs = "/".join(str(c) for _, c in r["counts"])
            out.append(f"| {i + 1} | {hs} | {cs} | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | "
                       f"{100 * r['error']:+.1f}% |")
        med = statistics.median(abs(r["error"]) for r in errs)
        out += ["", f"Median |error|: **{100 * med:.1f}%** (max {100 * max(abs(r['error']) for r in errs):.1f}%).", ""]
    for runtime in sorted({r["runtime"] for r in rows if r["stage"] == "model-v1"}):
        old = [r for r in rows if r["stage"] == "model-v1" and r["runtime"] == runtime]
        med = statistics.median(abs(r["error"]) for r in old)
        out += [f"Superseded, kept for the record: the first calibration ({old[0]['calibration']}) predicted "
                f"the same kind of held-out architectures ({runtime}, n={len(old)}) with a median |error| of "
                f"{100 * med:.1f}%, every one too slow: one whole-model run carries the host's noise into "
                "every prediction. A least-squares fit over six whole models replaced it.", ""]
    return out


def _render_equal(rows: list[dict]) -> list[str]:
    eq = [r for r in rows if r["stage"] == "equal-macs"]
    inter = [r for r in eq if r.get("timing", "").startswith("interleaved")]
    out = _equal_table(inter, "### hei's plans against uniform plans of the same MACs",
                       "Each variant is exported once; all variants of one user and runtime are loaded in one "
                       "process and run in turn, a block of inferences each, round after round (the order "
                       "reversed every other round), so the host's slow changes of speed hit them alike; "
                       "p50 ms is the median of the per-round medians.")
    out += _equal_table([r for r in eq if r not in inter],
                        "#### The same comparison timed one runner process per variant and round (kept for the record)"
                        if inter else "### hei's plans against uniform plans of the same MACs",
                        "Each variant is exported once and timed in rounds (one runner process per variant and "
                        "round, the order reversed every round); p50 ms is the median over rounds. The runs of "
                        "one process are bimodal on this host (about 20.5 or 24.5 ms for the same model), which "
                        "is why the intervals are wide.")
    return out + _equal_table([r for r in rows if r["stage"] == "equal-macs-v1"],
                              "#### The first, shorter run of the same comparison (2 rounds, a fresh export each round; kept for the record)",
                              "Each variant exported afresh and timed by one runner process per round.")


def _equal_table(eq: list[dict], title: str, how: str) -> list[str]:
    if not eq:
        return []
    out = [title, "",
           "Each line: one user's hei plan (seed 0 of the personalization suite) and a uniform plan "
           "with the same MACs (within one channel group), and hei's widths rounded to multiples of m "
           f"(`hei-xm`, MACs not above hei's). {how}", "",
           "| runtime | keep | user | variant | GMACs | p50 ms | vs uniform |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["runtime"], r["ratio"], r["user"]) for r in eq})
    for rt, ratio, user in keys:
        group = {r["variant"]: r for r in eq if (r["runtime"], r["ratio"], r["user"]) == (rt, ratio, user)}
        uni = group.get("uniform")
        for v, r in group.items():
            rel = _paired(r, uni) if uni and v != "uniform" else "-"
            out.append(f"| {rt} | {ratio} | {user} | {v} | {r['macs'] / 1e9:.3f} | {r['measured_ms']:.2f} | {rel} |")
    return out + ["", "vs uniform: mean of the per-round differences (variant / uniform - 1) with a 95% "
                  "t-interval over the rounds; rows with 2 rounds (the first run of this stage) have no interval.", ""]


def _paired(r: dict, uni: dict) -> str:
    """Per-round relative differences to uniform: median, and a 95% interval where there are >= 3 rounds."""
    d = [a / b - 1 for a, b in zip(r["runs_ms"], uni["runs_ms"])]
    med = statistics.median(d)
    if len(d) < 3:
        return f"{100 * med:+.1f}% (n={len(d)})"
    from scipy import stats

    mean, half = statistics.mean(d), stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
    return f"{100 * mean:+.1f}% [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}] (n={len(d)})"


def _render_target(rows: list[dict]) -> list[str]:
    tg = [r for r in rows if r["stage"] == "target"]
    if not tg:
        return []
    out = ["### `--target-latency` at 60% of the unpruned p50 (zoo:dinov2-small, ONNX Runtime, 1 thread)", "",
           "`pocketsize demo --target-latency T --to onnx --seed S --no-finetuned-reference`, and the "
           "`--ratio` run at the parameter ratio the latency run reached (same seed): the same size, "
           "planned by parameters with MLP widths in multiples of 8, where the latency run used the multiple "
           "its grid chose.", "",
           "| seed | run | params kept | target ms | predicted ms | measured ms | measured / target | "
           "held-out accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(tg, key=lambda r: (r["seed"], r["kind"] != "target")):
        lat = r.get("latency") or {}
        meas = r["p50_ms"].get("compressed/onnx")
        ratio = f"{meas / r['target_ms']:.3f}" if meas else "-"
        pred = f"{lat['predicted_ms']:.2f}" if lat.get("predicted_ms") else "-"
        run = "--target-latency" if r["kind"] == "target" else "--ratio"
        out.append(f"| {r['seed']} | {run} | {r['params_ratio']:.3f} | {r['target_ms']:.2f} | {pred} | "
                   f"{meas:.2f} | {ratio} | {100 * r['after']:.1f}% |")
    by = {(r["seed"], r["kind"]): r for r in tg}
    seeds = sorted({s for s, k in by if (s, "ratio") in by and (s, "target") in by})
    hits = [by[(s, "target")]["p50_ms"]["compressed/onnx"] / by[(s, "target")]["target_ms"] for s in seeds]
    if seeds:
        acc = [100 * (by[(s, "target")]["after"] - by[(s, "ratio")]["after"]) for s in seeds]
        ms = [by[(s, "target")]["p50_ms"]["compressed/onnx"] / by[(s, "ratio")]["p50_ms"]["compressed/onnx"] - 1
              for s in seeds]
        out += ["", f"Measured / target over {len(seeds)} seeds: {min(hits):.3f} to {max(hits):.3f}. Against the "
                f"`--ratio` run of the same size, the latency run's measured p50 differed by "
                f"{100 * min(ms):+.1f}% to {100 * max(ms):+.1f}% and its held-out accuracy differed by "
                f"{', '.join(f'{a:+.1f}' for a in acc)} points (n={len(seeds)}: no claim either way)."]
    return out + [""]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("model", "equal-macs", "target"))
    p.add_argument("--runtimes", default="onnx,executorch")
    p.add_argument("--archs", type=int, default=10)
    p.add_argument("--ratios", default="0.5")
    p.add_argument("--multiples", default="32,64")
    p.add_argument("--rounds", type=int, default=8, help="equal-macs: timing rounds per variant")
    p.add_argument("--interleave", type=int, default=0, metavar="N",
                   help="equal-macs: time the variants in one process, N inferences of each in turn per round "
                   "(0: one runner process per variant and round)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fraction", type=float, default=0.6)
    p.add_argument("--work", default="/tmp/pocketsize-latency-runs")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    args.runtimes = args.runtimes.split(",")
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.multiples = [int(m) for m in args.multiples.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    if not args.render_only:
        {"model": stage_model, "equal-macs": stage_equal_macs, "target": stage_target}[args.stage](args, cmd)
    from experiments.docs import main as docs_main  # results.md's latency section comes from the rows

    return docs_main([])


if __name__ == "__main__":
    raise SystemExit(main())
