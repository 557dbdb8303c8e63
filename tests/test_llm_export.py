"""export + bench for causal LMs on tiny in-process models: Llama (GQA),
Qwen2 and GPT-2 (2 layers, hidden 64), saved with save_pretrained next to a
tokenizer trained on a synthetic personal text (tests/test_llm.py's helpers).

Covers: prune to ratio 0.7 within 1%, reload, export to .pte (static KV cache
in the program, XNNPACK) and .onnx (fixed-size cache fed back each step),
16-token greedy parity against eager; per-layer widths; int8; the LLM bench
(tokens/s, perplexity equal to eager's on the held-out split); the CLI; bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.config import PruneConfig
from compress.loading import load_model, save_model_dir
from compress.pruning import prune
from compress.text import load_text_data, perplexity
from pocketsize.errors import BadInput

from test_llm import make_tokenizer, personal_text

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("torch_one_thread")]

KINDS = ("llama", "qwen2", "gpt2")
SEQ_LEN = 64


def tiny_model(kind: str, vocab: int):
    import transformers as tr

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=1)
    if kind == "llama":
        return tr.LlamaForCausalLM(tr.LlamaConfig(tie_word_embeddings=True, **common))
    if kind == "qwen2":
        return tr.Qwen2ForCausalLM(tr.Qwen2Config(**common))
    return tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                                            n_positions=256, bos_token_id=1, eos_token_id=1))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llm_export")
    text = personal_text()
    (root / "personal.txt").write_text(text)
    tok = make_tokenizer(text)
    for kind in KINDS:
        tok.save_pretrained(root / kind)
        tiny_model(kind, len(tok)).save_pretrained(root / kind)
    return root


def prune_cfg(**kw) -> PruneConfig:
    extra = {"seq_len": SEQ_LEN, "lm_batch_size": 4, **kw.pop("extra", {})}
    return PruneConfig(**{**dict(ratio=0.7, recovery_steps=2, steps=2, calib_samples=8), **kw}, extra=extra)


def export_cfg(**kw):
    from export import ExportConfig

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
    import export

    pruned = prune(str(corpus / kind), str(corpus / "personal.txt"), prune_cfg())
    assert abs(pruned.report["params_ratio"] - 0.7) <= 0.01
    save_model_dir(pruned.loaded, tmp_path / "model")
    reloaded = load_model(tmp_path / "model")
    m = export.export(tmp_path / "model", tmp_path / "out", export_cfg())
    assert_greedy_parity(m)
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
    import export

    loaded = load_model(corpus / "llama")
    ad = loaded.adapter
    ad.prune_heads(ad.blocks(loaded.model)[0], [1])          # layer 0: one KV group
    ad.prune_mlp(ad.blocks(loaded.model)[1], list(range(64)))  # layer 1: half the MLP
    assert not ad.is_uniform(loaded.model)
    save_model_dir(loaded, tmp_path / "model")
    m = export.export(tmp_path / "model", tmp_path / "out", export_cfg())
    assert_greedy_parity(m)
    assert [k["kv_heads"] for k in m["llm"]["kv_cache"]] == [1, 2]


def test_int8_artifacts(corpus, tmp_path):
    import export

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
    import export

    out = tmp_path_factory.mktemp("lm_bench") / "export"
    export.export(corpus / "gpt2", out, export_cfg())
    return out


def test_bench_reports_tokens_per_second_and_device_perplexity(corpus, exported, tmp_path):
    import benchmarks

    cfg = benchmarks.BenchConfig(warmup=1, iterations=2, prompt_tokens=16, decode_tokens=8, eval_samples=3)
    loaded = load_model(corpus / "gpt2")
    data = load_text_data(corpus / "personal.txt", loaded.tokenizer, seed=0, seq_len=SEQ_LEN)
    doc = benchmarks.run(exported, "local", cfg, data=data, out_dir=tmp_path / "bench")
    assert (tmp_path / "bench" / "results.json").exists() and (tmp_path / "bench" / "report.html").exists()
    from compress.text import TextSplit

    eager = perplexity(loaded, TextSplit(data.test.ids[:3]))
    for r in doc["results"]:
        assert r["status"] == "ok", r["error"]
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and r["ttft_ms"] > 0
        assert r["latency_ms"]["p50"] > 0 and r["timed_runs"] == 2 * 8 and r["peak_rss_mb"] > 0
        assert r["llm"]["prompt_tokens"] == 16 and r["llm"]["decode_tokens"] == 8
        assert r["eval_samples"] == 3 and r["perplexity"] == pytest.approx(eager, rel=1e-4)


def test_bench_text_path_uses_the_exported_tokenizer(corpus, exported, tmp_path):
    import benchmarks

    cfg = benchmarks.BenchConfig(warmup=0, iterations=1, prompt_tokens=8, decode_tokens=2, eval_samples=1,
                                 formats=("onnx",))
    doc = benchmarks.run(exported, "local", cfg, data=str(corpus / "personal.txt"))
    (r,) = doc["results"]
    assert r["status"] == "ok" and r["perplexity"] > 1 and r["eval_samples"] == 1


def test_cli_run_reports_perplexity_parity_and_tokens_per_second(corpus, tmp_path, capsys):
    from pocketsize.cli import main

    out = tmp_path / "run"
    rc = main(["--quiet", "run", str(corpus / "llama"), "--data", str(corpus / "personal.txt"), "--ratio", "0.7",
               "--to", "executorch,onnx", "--device", "local", "--out", str(out), "--warmup", "0",
               "--iterations", "1", "--recovery-steps", "2"])
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
    comp = next(r for r in results if (r["variant"], r["format"]) == ("compressed", "onnx"))
    assert comp["perplexity"] == pytest.approx(summary["after"], rel=1e-4)


def test_cli_export_coreml_of_an_lm_is_one_line_bad_input(corpus, tmp_path, capsys):
    from pocketsize.cli import main

    rc = main(["export", str(corpus / "llama"), "--to", "coreml", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: transformers' loading bar
    assert rc == 2 and err.startswith("pocketsize: error: --to coreml") and "--to executorch,onnx" in err
    assert not (tmp_path / "o").exists()


def test_bad_lm_export_options(corpus, tmp_path):
    import export

    with pytest.raises(BadInput, match="lm_cache_len"):
        export_cfg(lm_cache_len=8)
    with pytest.raises(BadInput, match="positions"):  # GPT-2 here has 256 positions
        export.export(corpus / "gpt2", tmp_path / "o", export_cfg(lm_cache_len=4096, lm_new_tokens=300))
    with pytest.raises(BadInput, match="does not exist"):
        export.export(corpus / "gpt2", tmp_path / "o2", export_cfg(data=str(tmp_path / "missing.txt")))


def test_lm_bench_off_host_is_unsupported(exported):
    from benchmarks.devices.base import Device
    from benchmarks.harness import lm_unsupported_reason

    class Remote(Device):
        kind = "ssh"

        def describe(self):
            return {}

        def run(self, job, work):
            raise AssertionError("not reached")

    assert "local" in lm_unsupported_reason(Remote("ssh://x"), "executorch")
    assert "runner" in lm_unsupported_reason(Remote("ssh://x"), "coreml")
