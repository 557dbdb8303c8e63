"""export + bench for causal LMs on tiny in-process models: Llama (GQA),
Qwen2 and GPT-2 (2 layers, hidden 64), saved with save_pretrained next to a
tokenizer trained on a synthetic personal text (tests/lm_helpers.py).

Covers: prune to ratio 0.7 within 1%, reload, export to .pte (static KV cache
in the program, XNNPACK) and .onnx (fixed-size cache fed back each step),
16-token greedy parity against eager; per-layer widths; int8; the LLM bench
(tokens/s, perplexity equal to eager's on the held-out split); the CLI; bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketsize.compress.config import LMOptions, PruneConfig
from pocketsize.loading import load_model, save_model_dir
from pocketsize.compress.pruning import prune
from pocketsize.text import load_text_data, perplexity
from pocketsize.errors import BadInput

from lm_helpers import save_per_layer_cut, write_corpus

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("torch_one_thread")]

KINDS = ("llama", "qwen2", "gpt2")
SEQ_LEN = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    # 2 layers, MLP 128: smaller than test_llm's, exports stay quick
    return write_corpus(tmp_path_factory.mktemp("llm_export"), KINDS, layers=2, mlp=128)


def prune_cfg(**kw) -> PruneConfig:
    base = dict(ratio=0.7, recovery_steps=2, steps=2, calib_samples=8, lm=LMOptions(seq_len=SEQ_LEN, batch_size=4))
    return PruneConfig(**{**base, **kw})


def export_cfg(**kw):
    from pocketsize.export import ExportConfig

    return ExportConfig(**{"targets": "executorch,onnx", "lm_cache_len": 96, **kw})


def assert_greedy_parity(manifest: dict, n: int = 16) -> None:
    assert manifest["task"] == "causal-lm"
    assert {a["format"] for a in manifest["artifacts"]} == {"executorch", "onnx"}
    for a in manifest["artifacts"]:
        p = a["parity"]
        assert a["status"] == "ok" and p["checked"] and p["passed"], (a["format"], p.get("reason"))
        assert p["greedy"]["new_tokens"] == n and p["greedy"]["match"]
        assert p["greedy"]["artifact"] == p["greedy"]["eager"] == manifest["parity_inputs"]["eager_tokens"]
        assert p["max_abs_diff"] <= p["thresholds"]["max_abs_diff_scaled"]


@pytest.mark.parametrize("kind", KINDS)
def test_prune_reload_export_with_greedy_parity(corpus, kind, tmp_path):
    """ratio 0.7 within 1%, saved and reloaded, then .pte and .onnx generate
    eager's 16 greedy tokens; each artifact's cache follows the pruned widths."""
    from pocketsize import export

    pruned = prune(str(corpus / kind), str(corpus / "personal.txt"), prune_cfg())
    assert abs(pruned.report["params_ratio"] - 0.7) <= 0.01
    save_model_dir(pruned.loaded, tmp_path / "model")
    reloaded = load_model(tmp_path / "model")
    m = export.export(tmp_path / "model", tmp_path / "out", export_cfg())
    assert_greedy_parity(m)
    from pocketsize.benchmarks.harness import infer_variant

    assert m["compression"]["ratio"] == 0.7 and infer_variant(m) == "compressed"  # a lone export is labelled right
    shapes = reloaded.adapter.layer_shapes(reloaded.model)
    assert [(k["kv_heads"], k["head_dim"]) for k in m["llm"]["kv_cache"]] == \
        [(s["kv_heads"], s["head_dim"]) for s in shapes]
    assert m["parity_inputs"]["kind"] == "fixed" and m["llm"]["tokenizer"] == "tokenizer"
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").exists()
    assert (tmp_path / "out" / "model.pte").stat().st_size > 0 and (tmp_path / "out" / "model.onnx").exists()
    ex = next(a for a in m["artifacts"] if a["format"] == "executorch")
    assert ex["delegation"]["delegated_subgraphs"] >= 1


def test_per_layer_widths_export(corpus, tmp_path):
    """Layers with different KV-head counts (not describable by the config) export
    with a per-layer cache: no --uniform needed."""
    from pocketsize import export

    save_per_layer_cut(corpus / "llama", tmp_path / "model")
    m = export.export(tmp_path / "model", tmp_path / "out", export_cfg())
    assert_greedy_parity(m)
    assert m["compression"] is None  # cut by hand, not by pocketsize compress
    assert [k["kv_heads"] for k in m["llm"]["kv_cache"]] == [1, 2]


def test_int8_artifacts(corpus, tmp_path):
    from pocketsize import export

    fp = export.export(corpus / "qwen2", tmp_path / "fp32", export_cfg())
    q = export.export(corpus / "qwen2", tmp_path / "int8", export_cfg(quantize="int8"))
    sizes = {a["format"]: a["bytes"] for a in fp["artifacts"]}
    for a in q["artifacts"]:
        assert a["path"].startswith("model.int8.") and a["precision"] == "int8"
        assert a["parity"]["checked"] and a["parity"]["passed"], a["parity"].get("reason")
        assert a["parity"]["snr_db"] >= 12.0 and a["parity"]["greedy"]["enforced"] is False
        assert a["quantization"]["weights"].startswith("int8")
        assert a["bytes"] < sizes[a["format"]]


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory) -> Path:
    from pocketsize import export

    out = tmp_path_factory.mktemp("lm_bench") / "export"
    export.export(corpus / "gpt2", out, export_cfg())
    return out


def test_bench_reports_tokens_per_second_and_device_perplexity(corpus, exported, tmp_path):
    from pocketsize import benchmarks

    cfg = benchmarks.BenchConfig(warmup=1, iterations=2, prompt_tokens=16, decode_tokens=8, eval_samples=3)
    loaded = load_model(corpus / "gpt2")
    data = load_text_data(corpus / "personal.txt", loaded.tokenizer, seed=0, seq_len=SEQ_LEN)
    doc = benchmarks.run(exported, "local", cfg, data=data, out_dir=tmp_path / "bench")
    assert (tmp_path / "bench" / "results.json").exists() and (tmp_path / "bench" / "report.html").exists()
    from pocketsize.text import TextSplit

    eager = perplexity(loaded, TextSplit(data.test.ids[:3]))
    for r in doc["results"]:
        assert r["status"] == "ok", r["error"]
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and r["ttft_ms"] > 0
        assert r["latency_ms"]["p50"] > 0 and r["timed_runs"] == 2 * 8 and r["peak_rss_mb"] > 0
        assert r["llm"]["prompt_tokens"] == 16 and r["llm"]["decode_tokens"] == 8
        assert r["eval_samples"] == 3 and r["perplexity"] == pytest.approx(eager, rel=1e-4)


def test_bench_cli_text_path_uses_the_exported_tokenizer(corpus, exported, tmp_path):
    from pocketsize.cli import main

    rc = main(["--quiet", "bench", str(exported), "--data", str(corpus / "personal.txt"), "--formats", "onnx",
               "--warmup", "0", "--iterations", "1", "--prompt-tokens", "8", "--decode-tokens", "2",
               "--eval-samples", "1", "--out", str(tmp_path / "b")])
    (r,) = json.loads((tmp_path / "b" / "results.json").read_text())["results"]
    assert rc == 0 and r["status"] == "ok" and r["perplexity"] > 1 and r["eval_samples"] == 1
    assert r["llm"]["prompt_tokens"] == 8 and r["llm"]["decode_tokens"] == 2 and r["timed_runs"] == 2


def test_cli_run_reports_perplexity_parity_and_tokens_per_second(corpus, tmp_path, capsys):
    from pocketsize.cli import main

    out = tmp_path / "run"
    rc = main(["--quiet", "run", str(corpus / "llama"), "--data", str(corpus / "personal.txt"), "--ratio", "0.7",
               "--to", "executorch,onnx", "--device", "local", "--out", str(out), "--warmup", "0",
               "--iterations", "1", "--recovery-steps", "2", "--prompt-tokens", "12", "--decode-tokens", "3"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "perplexity" and summary["before"] > 1 and summary["after"] > 1
    assert abs(summary["params_ratio"] - 0.7) <= 0.01
    llm = summary["llm"]
    assert llm["parity"]["compressed/executorch"]["greedy_match"] is True
    assert llm["parity"]["compressed/executorch"]["greedy_tokens"] == 16
    results = json.loads((out / "bench" / "results.json").read_text())["results"]
    assert {(r["variant"], r["format"]) for r in results} == {
        (v, f) for v in ("original", "compressed") for f in ("executorch", "onnx")}
    for r in results:
        assert r["status"] == "ok" and r["decode_tokens_per_s"] > 0 and r["perplexity"] > 1
        assert r["llm"]["prompt_tokens"] == 12 and r["llm"]["decode_tokens"] == 3
    comp = next(r for r in results if (r["variant"], r["format"]) == ("compressed", "onnx"))
    assert comp["perplexity"] == pytest.approx(summary["after"], rel=1e-4)


def test_cli_export_coreml_of_an_lm_succeeds(corpus, tmp_path):
    """--to coreml takes LMs: a stateful .mlpackage (the rest is in test_llm_coreml.py)."""
    import platform

    pytest.importorskip("coremltools")
    from pocketsize.cli import main

    rc = main(["--quiet", "export", str(corpus / "llama"), "--to", "coreml", "--out", str(tmp_path / "o")])
    (a,) = json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"]
    assert rc == 0 and a["format"] == "coreml" and a["status"] == "ok" and (tmp_path / "o" / a["path"]).is_dir()
    assert a["parity"]["checked"] is (platform.system() == "Darwin")  # Core ML predicts only on macOS


def test_bad_lm_export_options(corpus, tmp_path):
    from pocketsize import export

    with pytest.raises(BadInput, match="lm_cache_len"):
        export_cfg(lm_cache_len=8)
    with pytest.raises(BadInput, match="positions"):  # GPT-2 here has 256 positions
        export.export(corpus / "gpt2", tmp_path / "o", export_cfg(lm_cache_len=4096, lm_new_tokens=300))
    with pytest.raises(BadInput, match="does not exist"):
        export.export(corpus / "gpt2", tmp_path / "o2", export_cfg(data=str(tmp_path / "missing.txt")))


def test_lm_bench_devices():
    """.pte decode loops run where et_runner runs (host, qemu, ssh); .onnx on the host; the apps have none."""
    from pocketsize.benchmarks.devices.base import Device
    from pocketsize.benchmarks.harness import lm_unsupported_reason

    def device(kind_: str) -> Device:
        class Remote(Device):
            kind = kind_

            def describe(self):
                return {}

            def run(self, job, work):
                raise AssertionError("not reached")

        return Remote(kind_)

    assert lm_unsupported_reason(device("ssh"), "executorch") is None
    assert "host Python script" in lm_unsupported_reason(device("ssh"), "onnx")
    assert "no coreml runner" in lm_unsupported_reason(device("ssh"), "coreml")
    assert "phone apps" in lm_unsupported_reason(device("adb"), "executorch")
