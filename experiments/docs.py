"""Regenerate every measured page of docs/ from its rows, with one command:

    python -m experiments.docs            # rewrite the pages
    python -m experiments.docs --check    # exit 1 naming the pages that differ (CI runs this)

* docs/results.md          <- docs/results.jsonl          (``experiments.methods --render-only``)
                              + docs/latency.jsonl        (its latency section, ``experiments.latency``)
                              + docs/deployment.jsonl     (its deployment table, ``experiments.deployment``)
* docs/personalization.md  <- docs/personalization.jsonl  (``experiments.personal --render-only``)
* docs/recovery.md         <- docs/recovery.jsonl         (``experiments.recovery --render-only``)
* docs/method.md: every block between ``<!-- generated: NAME -->`` and
  ``<!-- end generated -->`` is re-rendered from the rows (NAME is a key of
  :data:`BLOCKS`); the prose around the blocks is written by hand and must
  claim nothing the generated intervals do not show.

No table in these pages is typed by hand: a row is measured, appended to a
.jsonl, and the pages are rendered from the rows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

DOCS = Path(__file__).resolve().parent.parent / "docs"
MARK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _rows(name: str) -> list[dict]:
    path = DOCS / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _personal(render: Callable[[list[dict]], list[str]]) -> Callable[[], str]:
    return lambda: "\n".join(render(_rows("personalization.jsonl")))


def _blocks() -> dict[str, Callable[[], str]]:
    from experiments import personal

    return {
        "personal-plans": _personal(personal.render_plans),
        "personal-cut": _personal(lambda rows: personal.render_controls(rows, "cut")),
        "personal-strengths": _personal(lambda rows: personal.render_strengths(rows, "cut")),
        "personal-baselines": _personal(lambda rows: personal.render_baselines(rows, "cut")),
    }


BLOCKS = ("personal-plans", "personal-cut", "personal-strengths", "personal-baselines")


def render_method(text: str) -> str:
    """``text`` with every generated block re-rendered; an unknown block name is an error."""
    blocks = _blocks()

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in blocks:
            raise SystemExit(f"docs/method.md: unknown generated block {name!r}; valid: {', '.join(blocks)}")
        body = blocks[name]().strip("\n")
        return f"{m.group(1)}{body}\n{m.group(4)}" if body else f"{m.group(1)}{m.group(4)}"

    return MARK.sub(fill, text)


def pages() -> dict[Path, str]:
    """Every page as the rows render it now."""
    from experiments import deployment, latency, methods, personal, recovery

    out = {}
    results = _rows("results.jsonl")
    if results:
        text = methods.render(results, methods.parse_args(["--out", str(DOCS / "results.md")]))
        for name, render in (("latency.jsonl", latency.render), ("deployment.jsonl", deployment.render)):
            rows = _rows(name)
            if rows:
                text = text.rstrip("\n") + "\n\n" + "\n".join(render(rows)).rstrip("\n") + "\n"
        out[DOCS / "results.md"] = text
    rows = _rows("personalization.jsonl")
    if rows:
        out[DOCS / "personalization.md"] = personal.render(rows)
    rows = _rows("recovery.jsonl")
    if rows:
        out[DOCS / "recovery.md"] = recovery.page(rows)
    out[DOCS / "method.md"] = render_method((DOCS / "method.md").read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page differs from its rows")
    args = p.parse_args(argv)
    stale = []
    for path, text in pages().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print("out of date with their rows (run python -m experiments.docs): "
              + ", ".join(str(p.relative_to(DOCS.parent)) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
