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

int4 (causal LMs only): a target that has an eager twin of its quantization
(``quantized_twin(job)``: the .pte's torchao 8da4w model) is judged against
that twin: the twin's greedy tokens must be reproduced exactly and its
logits matched to ``int4_min_snr_db``; the distance to fp32 eager on the same
tokens is reported beside (``vs_fp32``). A target without one (ONNX Runtime's
MatMulNBits, Core ML's blockwise weights) is judged against fp32 eager: SNR
>= ``int4_fp32_min_snr_db`` and at least ``int4_fp32_min_top1`` of the greedy
steps choosing eager's token. Each record names its ``reference``.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass, field
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

TWIN_REFERENCE = "quantized eager"  # the eager model a target quantized exactly as its artifact (quantized_twin)
TOKENIZER_DIR = "tokenizer"  # saved beside the artifacts: apps and bench need it
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LMJob:
    """Everything an LM target needs to write one artifact."""

    model: nn.Module          # stock transformers causal LM, eval mode
    cache_len: int            # KV-cache positions (max prompt + generated tokens)
    quantize: str             # "none" | "int8" | "int4"
    config: ExportConfig
    prompt: torch.Tensor      # (1, P) int64: the parity prompt
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per job (e.g. the quantized twin both export and parity use)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

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
               config: ExportConfig, reference: str = "eager") -> dict[str, Any]:
    """The parity record: logits (parity.compare) plus the greedy tokens.

    The tokens are enforced for fp32 and for a quantized artifact compared with
    its own eager twin; int4 against fp32 eager needs ``min_greedy_agreement``."""
    rec = _parity.compare(ref, out, precision, config, reference=reference)
    if reference != "eager":
        rec["reference"] = reference
    if out.shape != ref.shape:
        return rec
    got = [int(t) for t in out[prompt_len - 1:].argmax(-1)]
    diverge = next((i for i, (a, b) in enumerate(zip(tokens, got)) if a != b), None)
    enforced = precision == "fp32" or (precision == "int4" and reference != _parity.FP32_REFERENCE)
    rec["top1_agreement"] = sum(a == b for a, b in zip(tokens, got)) / len(tokens)
    rec["greedy"] = {"new_tokens": len(tokens), "eager": tokens, "artifact": got, "match": diverge is None,
                     "first_divergence": diverge, "enforced": enforced}
    rec["logit_rows"] = {"prompt": prompt_len, "decode": len(tokens) - 1}
    why = None
    if diverge is not None and enforced:
        why = (f"greedy token {diverge + 1} of {len(tokens)} differs from {reference} "
               f"({got[diverge]} vs {tokens[diverge]})")
    need = (rec.get("thresholds") or {}).get("min_greedy_agreement")
    if need is not None and rec["top1_agreement"] < need:
        why = f"{rec['top1_agreement']:.3f} of greedy steps choose {reference}'s token < {need:.3f}"
    if why:
        rec["passed"] = False
        rec["reason"] = "; ".join(filter(None, [rec.get("reason"), why]))
    return rec


@torch.no_grad()
def teacher_forced(model: nn.Module, prompt: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """``model``'s logit rows for ``prompt`` + ``tokens[:-1]`` in one pass: the rows an
    artifact fed those tokens produces (greedy_reference's rows when they are its own)."""
    ids = torch.cat([prompt, torch.tensor([tokens[:-1]], dtype=torch.long)], 1)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0].float()


def vs_fp32(model: nn.Module, prompt: torch.Tensor, tokens: list[int], out: torch.Tensor) -> dict[str, Any]:
    """How far a quantized artifact's logits ``out`` (fed ``tokens``) are from fp32 eager fed the same: a figure."""
    ref = teacher_forced(model, prompt, tokens)
    p = int(prompt.shape[1])
    if ref.shape != out.shape:
        return {"reference": _parity.FP32_REFERENCE, "reason": f"shape {list(out.shape)} vs {list(ref.shape)}"}
    same = (ref[p - 1:].argmax(-1) == out[p - 1:].argmax(-1)).float().mean().item()
    return {"reference": f"{_parity.FP32_REFERENCE}, fed the same tokens", "snr_db": _parity.snr_db(ref, out),
            "max_abs_diff": float((ref - out).abs().max().item()), "top1_agreement": float(same)}


def check_linear_groups(model: nn.Module, group: int) -> None:
    """BadInput unless ``group`` divides the in-features of every Linear (4-bit groups run along them)."""
    import math

    ins = {name: int(m.in_features) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    bad = {n: k for n, k in ins.items() if k % group}
    if not bad:
        return
    g = math.gcd(*ins.values())
    fits = [s for s in (256, 128, 64, 32, 16) if g % s == 0]
    name, k = next(iter(bad.items()))
    fix = f"use --group-size {fits[0]}" if fits else "no 4-bit group size (a power of two >= 16) divides them all; " \
        "use --quantize int8"
    raise BadInput(f"--group-size {group} does not divide the in-features of {len(bad)} Linear layer(s) "
                   f"(e.g. {name}: {k}); {fix}")


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
    quantize = ("none", "int8", "int4")

    def prepare(self, src: Source, config: ExportConfig, data: Any) -> Any:
        from .tasks import Prepared

        loaded = src.loaded
        model = loaded.model.eval()
        if config.quantize == "int4":  # before any work: the groups must tile every Linear
            check_linear_groups(model, int(config.int4_group_size))
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
            precision = config.precision(target.FORMAT)
            twin = target.quantized_twin(job) if precision == "int4" and hasattr(target, "quantized_twin") else None
            if twin is None:
                reference = _parity.FP32_REFERENCE if precision == "int4" else "eager"
                out = stepped_logits(target.stepper(path, job), prompt, tokens)
                return _with_structure(compare_lm(ref, out, tokens, p, precision, config, reference), v)
            q_tokens, q_ref = job.memo("twin-greedy", lambda: greedy_reference(twin, prompt, len(tokens)))
            out = stepped_logits(target.stepper(path, job), prompt, q_tokens)
            rec = compare_lm(q_ref, out, q_tokens, p, precision, config, TWIN_REFERENCE)
            rec["vs_fp32"] = vs_fp32(model, prompt, q_tokens, out)
            return _with_structure(rec, v)

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
