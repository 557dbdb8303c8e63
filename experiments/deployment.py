"""The deployment table: {fp32, int8, int4 where it applies} x {unpruned, pruned} for
the zoo's image model and language model, each cell one `pocketsize run`.

    python -m experiments.deployment --runs DIR                  # run every missing cell, then render
    python -m experiments.deployment --runs DIR --models smollm2 --quantize none,int4 --to onnx
    python -m experiments.deployment --render-only               # docs/results.md from docs/deployment.jsonl

A cell's run folder is DIR/<model>-<quantize>; a folder that already holds a
summary.json is read, not run again (so a long cell can be run by hand with the
printed command and collected later). Every artifact row of the run's
summary.json "deployment" table becomes a row of docs/deployment.jsonl with the
cell, the command, the host and the date; docs/results.md's deployment section
is rendered from those rows (``python -m experiments.docs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.common import host

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROWS = DOCS / "deployment.jsonl"


@dataclass(frozen=True)
class Cell:
    key: str            # short name on the command line
    model: str
    data: str           # "demo": the demo's Fashion-MNIST user
    ratio: float
    quantize: tuple[str, ...]  # the precisions that apply to this kind of model


CELLS = {
    "dinov2": Cell("dinov2", "zoo:dinov2-small", "demo", 0.5, ("none", "int8")),
    "smollm2": Cell("smollm2", "zoo:smollm2-135m", "/usr/share/games/fortunes/computers", 0.85,
                    ("none", "int8", "int4")),
}


def command(cell: Cell, quantize: str, to: str, out: Path) -> list[str]:
    """The `pocketsize run` of one cell (1 benchmark thread, no fine-tuned reference: a deployment
    table, not a recovery study)."""
    data = cell.data
    if data == "demo":
        from pocketsize.pipeline import demo_data

        data = str(demo_data())
    return ["pocketsize", "run", cell.model, "--data", data, "--ratio", str(cell.ratio), "--quantize", quantize,
            "--to", to, "--threads", "1", "--no-finetuned-reference", "--out", str(out)]


def collect(cell: Cell, quantize: str, cmd: list[str], summary: dict) -> list[dict]:
    """docs/deployment.jsonl rows of one finished run."""
    rows = []
    for d in summary.get("deployment", []):
        rows.append({"model": cell.model, "quantize": quantize, **d, "metric": summary["metric"],
                     "params_ratio": summary["params_ratio"], "seconds": summary.get("seconds"),
                     "host": host("cpu"), "cmd": shlex.join(cmd), "date": time.strftime("%Y-%m-%d")})
    return rows


def run_cells(args) -> list[dict]:
    rows = []
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    for key in args.models:
        cell = CELLS[key]
        for q in [q for q in args.quantize if q in cell.quantize]:
            out = runs / f"{key}-{q}"
            cmd = command(cell, q, args.to, out)
            if not (out / "summary.json").exists():
                print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, "-m", "pocketsize", *cmd[1:]], check=False)
            if not (out / "summary.json").exists():
                print(f"{key} {q}: no summary.json in {out}; the cell is left out", file=sys.stderr)
                continue
            rows += collect(cell, q, cmd, json.loads((out / "summary.json").read_text()))
    return rows


# --- rendering ------------------------------------------------------------------

PRECISION = {"none": "fp32", "int8": "int8", "int4": "int4"}


def render(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = ["## Deployment: fp32, int8 and int4, unpruned and pruned", "",
           "Generated from docs/deployment.jsonl by `python -m experiments.docs`; the rows come from "
           "`python -m experiments.deployment` (each cell one `pocketsize run`, its command below). "
           "One thread for every artifact; the original and the compressed artifact of a cell were "
           "benchmarked side by side in the same run. Accuracy: held-out top-1 on the user's images; "
           "perplexity: held-out personal perplexity computed on the artifact. Parity: the artifact "
           "against its eager reference (docs/int4.md, docs/int8.md for the thresholds).", ""]
    for model in sorted({r["model"] for r in rows}):
        sub = [r for r in rows if r["model"] == model]
        lm = sub[0]["metric"] == "perplexity"
        out += [f"### {model}", "",
                "| precision | model | format | MB | peak MB | " + ("decode tok/s" if lm else "p50 ms")
                + f" | {'perplexity' if lm else 'accuracy'} | parity |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sorted(sub, key=lambda r: (list(PRECISION).index(r["quantize"]), r["variant"] != "original",
                                            r["format"])):
            speed = r.get("decode_tokens_per_s") if lm else r.get("p50_ms")
            metric = r.get("perplexity") if lm else (None if r.get("accuracy") is None else 100 * r["accuracy"])
            which = "unpruned" if r["variant"] == "original" else f"pruned, keep {r['params_ratio']:.2f}"
            snr = f" ({r['snr_db']:.1f} dB)" if r.get("snr_db") is not None else ""
            out.append(f"| {PRECISION[r['quantize']]} | {which} | {r['format']} | {_f(r.get('file_mb'), '.1f')} | "
                       f"{_f(r.get('peak_rss_mb'), '.0f')} | {_f(speed, '.1f' if lm else '.2f')} | "
                       f"{_f(metric, '.2f' if lm else '.1f')} | {r['parity']}{snr} |")
        out += ["", "Commands (one per cell):", ""]
        out += [f"- `{c}` ({next(r['host'] for r in sub if r['cmd'] == c)}, "
                f"{next(r['date'] for r in sub if r['cmd'] == c)})" for c in dict.fromkeys(r["cmd"] for r in sub)]
        out.append("")
    return out


def _f(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.deployment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", help="folder of the cells' run folders (required unless --render-only)")
    p.add_argument("--models", default=",".join(CELLS), help=f"comma-separated: {', '.join(CELLS)}")
    p.add_argument("--quantize", default="none,int8,int4", help="comma-separated precisions (each cell takes "
                   "those that apply to its model: int4 is for language models)")
    p.add_argument("--to", default="executorch,onnx")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.quantize = [q for q in args.quantize.split(",") if q]
    bad = [m for m in args.models if m not in CELLS] + [q for q in args.quantize if q not in PRECISION]
    if bad:
        p.error(f"unknown model(s) or precision(s) {bad}; models: {', '.join(CELLS)}; precisions: "
                f"{', '.join(PRECISION)}")
    if not args.render_only:
        if not args.runs:
            p.error("--runs DIR is required (or --render-only)")
        new = run_cells(args)
        done = {(r["model"], r["quantize"]) for r in new}
        old = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()] if ROWS.exists() else []
        # a cell measured again replaces its old rows
        rows = [r for r in old if (r["model"], r["quantize"]) not in done] + new
        ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from experiments.docs import main as docs_main

    return docs_main([])


if __name__ == "__main__":
    raise SystemExit(main())
