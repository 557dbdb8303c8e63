"""The causal-lm task of export(): KV-cached decoders, checked by greedy generation.

Every artifact runs ``forward(input_ids (1, T), cache_position (T,)) -> logits``
over a fixed-size KV cache (``pocketsize.export.llm_cache``): T = prompt length to
prefill, T = 1 to decode. Parity: eager greedy-decodes ``lm_new_tokens`` tokens
from a fixed prompt (full recompute, no cache: the plain model is the
reference); the artifact prefills the prompt and is then fed eager's tokens
one at a time. Its argmax at each step must equal eager's token: with the
same inputs, that is exactly "the artifact generates the same greedy
tokens". ``max_abs_diff`` / SNR compare every logit row (prompt and decode).
fp32 must match the tokens and ``fp32_atol``; int8 is judged by SNR, and its
tokens are recorded (quantization may legitimately flip a near-tie).
"""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from pocketsize.errors import BadInput

from . import parity as _parity
from .config import ExportConfig
from .source import Source
from .tasks import ExportTask

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"  # saved beside the artifacts: apps and bench need it
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LMJob:
    """Everything an LM target needs to write one artifact."""

    model: nn.Module          # stock transformers causal LM, eval mode
    cache_len: int            # KV-cache positions (max prompt + generated tokens)
    quantize: str             # "none" | "int8"
    config: ExportConfig
    prompt: torch.Tensor      # (1, P) int64: the parity prompt

    def kv_shapes(self) -> list[tuple[int, int]]:
        from .llm_cache import layer_kv_shapes

        return layer_kv_shapes(self.model)

    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Tracing inputs: a few tokens (not 1, which export would specialize the token dim to)."""
        n = max(2, min(int(self.prompt.shape[1]), 8))
        ids = self.prompt[:, :n] if self.prompt.shape[1] >= n else self.prompt[:, :1].repeat(1, n)
        return ids.contiguous(), torch.arange(n, dtype=torch.long)


# --- inputs -------------------------------------------------------------------------

def parity_prompt(loaded: Any, config: ExportConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """The fixed prompt (tokenized ``config.lm_prompt``); seeded random ids without a tokenizer."""
    n = int(config.lm_prompt_tokens)
    tok = getattr(loaded, "tokenizer", None)
    if tok is not None:
        ids = tok(config.lm_prompt, add_special_tokens=False)["input_ids"][:n]
        if ids:
            return (torch.tensor([ids], dtype=torch.long),
                    {"kind": "fixed", "text": config.lm_prompt, "prompt_tokens": len(ids)})
    vocab = int(loaded.model.config.vocab_size)
    g = torch.Generator().manual_seed(int(config.seed))
    ids = torch.randint(0, vocab, (1, n), generator=g)
    return ids, {"kind": "random", "seed": int(config.seed), "prompt_tokens": n,
                 "reason": "the model has no tokenizer; the prompt is seeded random token ids"}


def cache_len(model: nn.Module, config: ExportConfig, prompt_len: int) -> int:
    from .llm_cache import max_positions

    limit = max_positions(model)
    n = min(int(config.lm_cache_len), limit) if limit else int(config.lm_cache_len)
    if n < int(config.lm_cache_len):
        log.warning("lm_cache_len %d: using %d, the most positions the model supports (max_position_embeddings)",
                    int(config.lm_cache_len), n)
    need = prompt_len + int(config.lm_new_tokens)
    if n < need:
        raise BadInput(f"the model has {limit} positions but the parity check needs {need} "
                       f"(prompt {prompt_len} + {config.lm_new_tokens} new tokens); lower lm_new_tokens")
    return n


@torch.no_grad()
def greedy_reference(model: nn.Module, prompt: torch.Tensor, n: int) -> tuple[list[int], torch.Tensor]:
    """Eager greedy decoding without a cache: (n tokens, logit rows (P + n - 1, V))."""
    ids = prompt
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0].float()
    rows, tokens = [logits], []
    for i in range(n):
        t = int(logits[-1].argmax())
        tokens.append(t)
        if i == n - 1:
            break
        ids = torch.cat([ids, torch.tensor([[t]])], 1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0, -1:].float()
        rows.append(logits)
    return tokens, torch.cat(rows)


@torch.no_grad()
def stepped_logits(step: Step, prompt: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Logit rows of an artifact: prefill ``prompt``, then decode ``tokens[:-1]`` one by one."""
    p = int(prompt.shape[1])
    rows = [step(prompt, torch.arange(p, dtype=torch.long))[0]]
    for i, t in enumerate(tokens[:-1]):
        rows.append(step(torch.tensor([[t]], dtype=torch.long), torch.tensor([p + i], dtype=torch.long))[0])
    return torch.cat(rows).float()


def compare_lm(ref: torch.Tensor, out: torch.Tensor, tokens: list[int], prompt_len: int, precision: str,
               config: ExportConfig) -> dict[str, Any]:
    """The parity record: logits (parity.compare) plus the greedy tokens."""
    rec = _parity.compare(ref, out, precision, config)
    if out.shape != ref.shape:
        return rec
    got = [int(t) for t in out[prompt_len - 1:].argmax(-1)]
    diverge = next((i for i, (a, b) in enumerate(zip(tokens, got)) if a != b), None)
    rec["top1_agreement"] = sum(a == b for a, b in zip(tokens, got)) / len(tokens)
    rec["greedy"] = {"new_tokens": len(tokens), "eager": tokens, "artifact": got, "match": diverge is None,
                     "first_divergence": diverge, "enforced": precision == "fp32"}
    rec["logit_rows"] = {"prompt": prompt_len, "decode": len(tokens) - 1}
    if diverge is not None and precision == "fp32":
        rec["passed"] = False
        why = f"greedy token {diverge + 1} of {len(tokens)} differs from eager ({got[diverge]} vs {tokens[diverge]})"
        rec["reason"] = "; ".join(filter(None, [rec.get("reason"), why]))
    return rec


# --- export ----------------------------------------------------------------------

@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without requires_grad while exporting: ExecuTorch's passes
    refuse in-place cache updates next to leaves that require grad."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class LMExport(ExportTask):
    """The causal-lm task of ``pocketsize.export.api.export``: KV-cached decoders checked by greedy tokens."""

    name = "causal-lm"

    def prepare(self, src: Source, config: ExportConfig, data: Any) -> Any:
        from .tasks import Prepared

        loaded = src.loaded
        model = loaded.model.eval()
        split = lm_split(src, config, data)
        prompt, record = parity_prompt(loaded, config)
        p = int(prompt.shape[1])
        job = LMJob(model, cache_len(model, config, p), config.quantize, config, prompt)
        tokens, ref = greedy_reference(model, prompt, int(config.lm_new_tokens))

        def check(target: Any, path: Path) -> dict[str, Any]:
            v = target.verify(path, job) if hasattr(target, "verify") else None  # structural checks (Core ML)
            if v is not None and v.reason:  # its runtime is not on this host: nothing compared, never a fake pass
                return _with_structure({"checked": False, "passed": None, "reason": v.reason,
                                        "max_abs_diff": None, "top1_agreement": None}, v)
            return _with_structure(compare_lm(ref, stepped_logits(target.stepper(path, job), prompt, tokens),
                                              tokens, p, config.precision(target.FORMAT), config), v)

        def manifest(artifacts: list[dict[str, Any]], out: Path, seconds: float) -> dict[str, Any]:
            tok = _save_tokenizer(loaded, out)
            return _manifest(src, config, job, record, tokens, tok, artifacts, seconds)

        return Prepared(job=job, check=check, manifest=manifest, split=split)

    def hold(self, src: Source) -> Any:
        return frozen(src.loaded.model)


def lm_split(src: Source, config: ExportConfig, data: Any) -> Any:
    """The SplitRecord to copy beside the manifest, after checking --data against it.

    Parity uses a fixed prompt, so the data is only checked here: a wrong or
    edited --data is bad input now rather than a wrong perplexity in bench."""
    from pocketsize.splits import SplitRecord, check_data, find_split, record_of
    from pocketsize.text import text_files

    from .source import _model_dir

    if data is not None:
        return record_of(data)
    if config.data is None:
        return None
    text_files(config.data)
    path = find_split(_model_dir(src))
    if path is None:
        return None
    record = SplitRecord.load(path)
    check_data(record, config.data, path)
    return record


def _with_structure(rec: dict[str, Any], v: Any) -> dict[str, Any]:
    """A target's structural findings (targets.Verified or None) in its parity record; a mismatch fails it."""
    if v is None:
        return rec
    if v.problems:
        rec["passed"] = False
        rec["reason"] = "; ".join(filter(None, [rec.get("reason"), *v.problems]))
    if v.structure:
        rec["structure"] = v.structure
    return rec


def _save_tokenizer(loaded: Any, tmp: Path) -> str | None:
    tok = getattr(loaded, "tokenizer", None)
    if tok is None:
        return None
    tok.save_pretrained(tmp / TOKENIZER_DIR)
    return TOKENIZER_DIR


def _manifest(src: Source, config: ExportConfig, job: LMJob, record: dict[str, Any], tokens: list[int],
              tokenizer: str | None, artifacts: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    from .artifacts import OUTPUT_NAME, tool_versions
    from .llm_cache import layer_kv_shapes
    from .manifest import Manifest

    cfg = job.model.config
    vocab = int(cfg.vocab_size)
    kv = [{"kv_heads": h, "head_dim": d} for h, d in layer_kv_shapes(job.model)]
    return Manifest.build(
        artifacts,
        source=src.name,
        compression=src.meta.get("compress"),  # method/ratio/seed when the source was pruned by pocketsize
        task="causal-lm",
        family=src.meta.get("family"),
        preprocessing=src.preprocessing,
        inputs=[{"name": "input_ids", "shape": [1, "tokens"], "dtype": "int64"},
                {"name": "cache_position", "shape": ["tokens"], "dtype": "int64",
                 "meaning": "absolute positions of input_ids (0.. for a new sequence)"}],
        outputs=[{"name": OUTPUT_NAME, "shape": [1, "tokens", vocab], "dtype": "float32"}],
        llm={
            "cache_len": job.cache_len, "kv_cache": kv, "layers": len(kv), "vocab_size": vocab,
            "bos_token_id": getattr(cfg, "bos_token_id", None), "eos_token_id": getattr(cfg, "eos_token_id", None),
            "tokenizer": tokenizer,
            "interface": {
                "executorch": "method forward(input_ids, cache_position) -> logits; the KV cache lives in the "
                              "program's mutable buffers (keep one loaded Method per conversation)",
                "onnx": "(input_ids, cache_position, key_cache_i, value_cache_i...) -> (logits, present_key_cache_i, "
                        "present_value_cache_i...); start from zeros, feed present_* back each step",
                "coreml": "forward(input_ids, cache_position) -> logits (int32 inputs, iOS18+); the KV cache is "
                          "the model's states k_cache_i / v_cache_i (one MLState per conversation, zeroed first)",
            },
        },
        parity_inputs={**record, "new_tokens": len(tokens), "eager_tokens": tokens,
                       "method": "eager greedy (no cache) vs artifact prefill + decode fed the eager tokens"},
        config=config.to_dict(),
        tools=tool_versions(),
        host={"os": platform.system(), "arch": platform.machine()},
        seconds=round(seconds, 3),
    ).to_json()
