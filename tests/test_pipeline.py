"""`pocketsize run` on the image path, end to end on a tiny timm ViT: compress,
export the original and the compressed model, bench both, summary.json."""

from __future__ import annotations

import json

import pytest

from pocketsize.cli import main

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_run_writes_every_stage_and_a_summary(tiny_vit, image_folder, tmp_path, capsys):
    from timm.models import save_for_hf

    src = tmp_path / "vit"
    save_for_hf(tiny_vit("timm", num_classes=2), src, safe_serialization=True)
    out = tmp_path / "run"
    rc = main(["run", str(src), "--data", str(image_folder), "--out", str(out), "--ratio", "0.6", "--to", "onnx",
               "--device", "local", "--recovery-steps", "1", "--steps", "1", "--warmup", "1", "--iterations", "3"])
    assert rc == 0, capsys.readouterr().err
    for rel in ("compress/plan.json", "compress/compress_report.json", "export/original/manifest.json",
                "export/compressed/manifest.json", "bench/results.json", "bench/report.html", "summary.json"):
        assert (out / rel).is_file(), rel
    # one recorded split: the held-out images of both exports are the ones compress held out
    split = (out / "compress/split.json").read_bytes()
    for rel in ("compress/model/split.json", "export/original/split.json", "export/compressed/split.json"):
        assert (out / rel).read_bytes() == split, rel
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["params_ratio"] - 0.6) <= 0.01 and summary["metric"] == "accuracy"
    assert summary["speedup"]["onnx"] > 0
    assert summary["references"]["base"] == summary["before"] and 0 <= summary["references"]["finetuned"] <= 1
    variants = {r["variant"] for r in json.loads((out / "bench/results.json").read_text())["results"]}
    assert variants == {"original", "compressed"}
    assert [(d["variant"], d["precision"], d["parity"]) for d in summary["deployment"]] == [
        ("original", "fp32", "passed"), ("compressed", "fp32", "passed")]
    err = capsys.readouterr().err
    assert "precision" in err and "parity" in err and "passed" in err  # the table the run prints


def test_parity_failure_keeps_the_measured_numbers_and_names_real_paths(tiny_vit, image_folder, tmp_path,
                                                                        monkeypatch):
    """A failing parity check (forced: the comparison is told to fail) is reported in
    summary.json with the folder the user has, never the temporary .partial-* one, and
    the benchmark's p50 and speedup are still there, flagged by parity_errors."""
    from timm.models import save_for_hf

    from pocketsize import pipeline
    from pocketsize.benchmarks import BenchConfig
    from pocketsize.compress import PruneConfig
    from pocketsize.export import parity

    real = parity.compare

    def failing(*a, **k):
        rec = real(*a, **k)
        return {**rec, "passed": False, "reason": "forced by the test"}

    monkeypatch.setattr(parity, "compare", failing)
    src = tmp_path / "vit"
    save_for_hf(tiny_vit("timm", num_classes=2), src, safe_serialization=True)
    out = tmp_path / "run"
    summary = pipeline.run(str(src), str(image_folder), out, PruneConfig(ratio=0.6, recovery_steps=1, steps=1,
                                                                          finetuned_reference=False),
                           to=["onnx"], device="local", bench_config=BenchConfig(warmup=1, iterations=3))
    assert len(summary["parity_errors"]) == 2 and all("forced by the test" in e for e in summary["parity_errors"])
    assert all(".partial-" not in e and str(out) in e for e in summary["parity_errors"]), summary["parity_errors"]
    assert summary["speedup"]["onnx"] > 0 and set(summary["p50_ms"]) == {"original/onnx", "compressed/onnx"}
    assert json.loads((out / "summary.json").read_text())["parity_errors"] == summary["parity_errors"]
    # the deployment table keeps every measured number, each row flagged with its failed check
    assert [(d["variant"], d["parity"]) for d in summary["deployment"]] == [("original", "FAILED"),
                                                                           ("compressed", "FAILED")]
    assert all(d["p50_ms"] > 0 and d["file_mb"] > 0 and 0 <= d["accuracy"] <= 1 for d in summary["deployment"])


def test_int8_run_reports_its_p50_and_speedup(tiny_vit, image_folder, tmp_path):
    """--quantize int8: both variants are measured at int8 and summary.json keeps their
    p50 and speedup (it used to keep fp32 rows only, and dropped them all)."""
    from timm.models import save_for_hf

    from pocketsize import pipeline
    from pocketsize.benchmarks import BenchConfig
    from pocketsize.compress import PruneConfig

    src = tmp_path / "vit"
    save_for_hf(tiny_vit("timm", num_classes=2), src, safe_serialization=True)
    summary = pipeline.run(str(src), str(image_folder), tmp_path / "run",
                           PruneConfig(ratio=0.6, recovery_steps=1, steps=1, finetuned_reference=False),
                           to=["onnx"], quantize="int8", device="local", bench_config=BenchConfig(warmup=1, iterations=3))
    assert summary["quantize"] == ["int8"] and summary["speedup"]["onnx"] > 0
    assert set(summary["p50_ms"]) == {"original/onnx", "compressed/onnx"}
    # the deployment table: both variants at the same precision, side by side, with their checks
    rows = {d["variant"]: d for d in summary["deployment"]}
    assert set(rows) == {"original", "compressed"} and {d["precision"] for d in rows.values()} == {"int8"}
    assert all(d["parity"] in ("passed", "FAILED") and d["snr_db"] is not None for d in rows.values())
    assert rows["compressed"]["file_mb"] < rows["original"]["file_mb"]
