"""Tiny causal LMs for tests: a synthetic personal text, a BPE tokenizer
trained on it, and Llama (GQA, tied) / Qwen2 / Qwen3 (q_norm) / GPT-2
(Conv1D) configs, saved with save_pretrained next to the tokenizer."""

from __future__ import annotations

import random
from pathlib import Path


def personal_text(seed: int = 0, n: int = 500) -> str:
    r = random.Random(seed)
    subj = ["the cat", "my dog", "a farmer", "the old king", "her sister", "our teacher", "the river"]
    verb = ["sees", "likes", "carries", "follows", "paints", "remembers", "feeds"]
    obj = ["the bread", "a red apple", "the mountain", "his boat", "the small bird", "every letter"]
    tail = ["in the morning", "at night", "near the sea", "with great care", "again and again", ""]
    return "\n".join(" ".join(filter(None, [r.choice(subj).capitalize(), r.choice(verb), r.choice(obj),
                                            r.choice(tail)])) + "." for _ in range(n))


def make_tokenizer(text: str):
    import transformers as tr
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tr.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def make_model(kind: str, vocab: int, layers: int = 4, mlp: int = 256):
    import torch
    import transformers as tr

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=mlp, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=1)
    if kind == "llama":
        return tr.LlamaForCausalLM(tr.LlamaConfig(tie_word_embeddings=True, **common))
    if kind == "qwen2":
        return tr.Qwen2ForCausalLM(tr.Qwen2Config(**common))
    if kind == "qwen3":
        return tr.Qwen3ForCausalLM(tr.Qwen3Config(head_dim=16, **common))
    return tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=layers, n_head=4, n_inner=mlp,
                                            n_positions=256, bos_token_id=1, eos_token_id=1))


def write_corpus(root: Path, kinds, layers: int = 4, mlp: int = 256) -> Path:
    """``root/personal.txt`` and one saved model folder per kind (with the tokenizer)."""
    text = personal_text()
    root.mkdir(parents=True, exist_ok=True)
    (root / "personal.txt").write_text(text)
    tok = make_tokenizer(text)
    for kind in kinds:
        tok.save_pretrained(root / kind)
        make_model(kind, len(tok), layers, mlp).save_pretrained(root / kind)
    return root


def save_per_layer_cut(model_dir: Path, dest: Path):
    """The tiny Llama cut by hand so its layers differ (layer 0: one KV group,
    layer 1: half the MLP), saved as a pocketsize model dir; returns the Loaded."""
    from pocketsize.loading import load_model, save_model_dir

    loaded = load_model(model_dir)
    ad = loaded.adapter
    ad.prune_heads(ad.blocks(loaded.model)[0], [1])
    ad.prune_mlp(ad.blocks(loaded.model)[1], list(range(64)))
    assert not ad.is_uniform(loaded.model)
    save_model_dir(loaded, dest)
    return loaded
