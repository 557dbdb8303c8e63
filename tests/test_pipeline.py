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
