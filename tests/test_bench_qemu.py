"""--device qemu-aarch64: the .pte on emulated ARM64 (real aarch64 kernels), same accuracy as eager."""

import shutil

import pytest

pytest.importorskip("executorch")
if shutil.which("qemu-aarch64-static") is None or shutil.which("aarch64-linux-gnu-g++") is None:
    pytest.skip("needs apt packages qemu-user-static and g++-aarch64-linux-gnu", allow_module_level=True)

from pocketsize.benchmarks import BenchConfig, run  # noqa: E402
from bench_helpers import eager_accuracy, tiny_data, tiny_export  # noqa: E402


def test_qemu_runs_pte_with_eager_accuracy(tmp_path):
    art = tiny_export(tmp_path / "exp", "original", formats=("executorch", "onnx"))  # qemu runs only the .pte
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


@pytest.mark.filterwarnings("ignore")
def test_qemu_runs_llm_decode_loop_with_eager_perplexity(tmp_path):
    """The .pte of a tiny Llama through et_runner's decode loop on emulated ARM64:
    tokens/s come back and on-device perplexity equals eager's."""
    from pocketsize import export
    from pocketsize.loading import load_model
    from pocketsize.text import TextSplit, load_text_data, perplexity
    from lm_helpers import write_corpus

    corpus = write_corpus(tmp_path / "c", ("llama",), layers=2, mlp=128)
    export.export(corpus / "llama", tmp_path / "exp", export.ExportConfig(targets="executorch,onnx", lm_cache_len=96))
    loaded = load_model(corpus / "llama")
    data = load_text_data(corpus / "personal.txt", loaded.tokenizer, seed=0, seq_len=64)
    cfg = BenchConfig(warmup=0, iterations=1, prompt_tokens=8, decode_tokens=4, eval_samples=2, timeout_s=300)
    doc = run(tmp_path / "exp", "qemu-aarch64", cfg, data=data, out_dir=tmp_path / "o")
    pte, onnx = sorted(doc["results"], key=lambda r: r["format"])
    assert pte["format"] == "executorch" and pte["status"] == "ok", pte["error"]
    assert pte["decode_tokens_per_s"] > 0 and pte["llm"]["prompt_tokens"] == 8 and pte["timed_runs"] == 4
    assert pte["perplexity"] == pytest.approx(perplexity(loaded, TextSplit(data.test.ids[:2])), rel=1e-4)
    assert onnx["status"] == "failed" and "host Python script" in onnx["error"]
