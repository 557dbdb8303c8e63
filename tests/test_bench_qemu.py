"""--device qemu-aarch64: the .pte on emulated ARM64 (real aarch64 kernels), same accuracy as eager."""

import json
import shutil

import pytest

pytest.importorskip("executorch")
if shutil.which("qemu-aarch64-static") is None or shutil.which("aarch64-linux-gnu-g++") is None:
    pytest.skip("needs apt packages qemu-user-static and g++-aarch64-linux-gnu", allow_module_level=True)

from benchmarks import BenchConfig, run  # noqa: E402
from benchmarks.testing import eager_accuracy, tiny_data, tiny_export  # noqa: E402


def test_qemu_runs_pte_with_eager_accuracy(tmp_path):
    art = tiny_export(tmp_path / "exp", "original", formats=("executorch",))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["artifacts"].append({"format": "onnx", "path": "model.onnx", "quantize": "none"})
    (art / "manifest.json").write_text(json.dumps(manifest))
    data = tiny_data()
    doc = run(art, "qemu-aarch64", BenchConfig(warmup=0, iterations=3, eval_samples=8, timeout_s=300),
              data=data, out_dir=tmp_path / "o")
    assert doc["device"]["emulated"] is True and doc["device"]["arch"] == "aarch64"
    pte, onnx = doc["results"]
    assert pte["status"] == "ok", pte["error"]
    assert pte["eval_samples"] == 8
    assert pte["accuracy"] == pytest.approx(eager_accuracy("original", data, 8), abs=1e-9)
    assert any("emulated" in n for n in pte["notes"]) and pte["memory"]["peak_rss_mb"] > 0
    assert onnx["status"] == "failed" and onnx["error"].startswith("unsupported")
    assert "Emulated device" in (tmp_path / "o" / "report.html").read_text()
