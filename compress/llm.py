"""The compress verb for causal language models.

The same flow as ``pocketsize.compress.pruning.prune`` (methods registry, allocation,
step buffering with an undo guard, recovery, ratio check) with the user's
text instead of labelled images: calibration samples random token chunks,
the metric is held-out perplexity, recovery is LM loss plus KL distillation
from the unpruned model, and the guard judges the rise in validation NLL.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time

import torch

from pocketsize.errors import BadInput, TargetNotMet

from .allocate import Budget, min_reachable
from .config import PruneConfig
from pocketsize.loading import Loaded
from .plan import count_params
from .steps import RATIO_TOLERANCE, Progress, Pruned, StepTask, Stepped, _plan_json, buffered_steps, count_macs
from .steps import load_generic
from pocketsize.text import TextData, TextSplit, load_text_data, perplexity, token_nll
from .train import distill_kl, run_steps

log = logging.getLogger(__name__)

def recover_lm(student: Loaded, teacher: Loaded | None, train: TextSplit, steps: int, lr: float,
               batch_size: int, seed: int, temperature: float = 2.0, alpha: float = 0.5,
               progress: Progress | None = None, stage: str = "recovery") -> list[float]:
    """Short recovery on the user's text: next-token loss, plus (with a teacher)
    KL distillation from the unpruned model over the whole vocabulary. No
    warm-up: it was measured on LMs without one (the ViT needs it for its
    fitted probe head, which an LM does not have)."""
    if steps <= 0 or len(train) == 0:
        return []
    g = torch.Generator().manual_seed(seed)
    params = [p for p in student.model.parameters() if p.requires_grad]
    if teacher is not None:
        teacher.model.eval()

    def loss_fn(ids: torch.Tensor) -> torch.Tensor:
        logits = student.adapter.logits(student.model, ids)
        loss = token_nll(logits, ids).mean()
        if teacher is not None:
            with torch.no_grad():
                t = teacher.adapter.logits(teacher.model, ids)[:, :-1].float()
            loss = (1 - alpha) * loss + alpha * distill_kl(logits[:, :-1].float(), t, temperature)
        return loss

    return run_steps(student.model, torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
                     lambda: train.batches(batch_size, shuffle=True, generator=g), steps, loss_fn,
                     progress=progress, stage=stage)


def _check_reachable(loaded: Loaded, cfg: PruneConfig, params_before: int) -> None:
    """Bad input (the issue's "ratio that would remove every head of a layer"),
    found before any scoring or training."""
    removal = cfg.method == "block-influence" and cfg.allow_block_removal
    floor = min_reachable(Budget.of(loaded), cfg.min_heads, cfg.channel_multiple, block_removal=removal)
    floor /= params_before
    if cfg.ratio < floor - RATIO_TOLERANCE:
        use = f"use --ratio {math.ceil(floor * 100) / 100:.2f} or more"
        if removal:
            raise BadInput(f"--ratio {cfg.ratio} is below what removing layers can reach: one layer left still "
                           f"keeps {floor:.3f} of the parameters (embeddings included); {use}")
        least = f"{cfg.min_heads} KV group(s)" if cfg.min_heads == 1 or not cfg.uniform else "every head"
        raise BadInput(f"--ratio {cfg.ratio} would remove every attention head of some layers: keeping {least} and "
                       f"{cfg.channel_multiple} MLP channels per layer still leaves {floor:.3f} of the parameters; "
                       f"{use}, or --method block-influence")


def _run_config(loaded: Loaded, cfg: PruneConfig) -> PruneConfig:
    """GPT-2 in uniform mode keeps every head: its config derives head_dim
    from the head count, so fewer heads could not be described by it."""
    ad = loaded.adapter
    if cfg.uniform and ad.layout(loaded.model) == "gpt2":
        heads = max(ad.block_shape(b).heads for b in ad.blocks(loaded.model))
        return dataclasses.replace(cfg, min_heads=heads)
    return cfg


def prune_lm(loaded: Loaded, data: TextData | str, cfg: PruneConfig, progress: Progress | None = None,
             generic: TextData | str | None = None) -> Pruned:
    """Prune a causal LM for the user's text to ``cfg.ratio`` of its parameters."""
    t0 = time.time()
    if cfg.method == "taylor":
        raise BadInput("--method taylor is not available for language models; use hei, activation, magnitude, "
                       "random or block-influence")
    if loaded.tokenizer is None and not isinstance(data, TextData):
        raise BadInput(f"{loaded.meta.get('source', 'MODEL')} has no tokenizer; save it next to the model with "
                       "tokenizer.save_pretrained(MODEL_DIR)")
    seq_len = cfg.lm.seq_len
    if not isinstance(data, TextData):
        data = load_text_data(data, loaded.tokenizer, seed=cfg.seed, seq_len=seq_len)
    if isinstance(generic, str):
        generic = load_generic(load_text_data, generic, loaded.tokenizer, seed=cfg.seed, seq_len=data.seq_len)
    run_cfg = _run_config(loaded, cfg)
    ad = loaded.adapter
    original = loaded  # the caller's model: left stock and unpruned (steps work on copies)
    ad.to_linear(loaded.model)
    teacher = None
    try:
        loaded.refresh_meta()
        params_before = count_params(loaded.model)
        _check_reachable(loaded, run_cfg, params_before)
        fit = {"finetune_steps": 0}
        if cfg.finetune_steps:
            recover_lm(loaded, None, data.train, cfg.finetune_steps, _lm_lr(cfg),
                       cfg.lm.batch_size, cfg.seed, progress=progress, stage="fine-tune")
            fit = {"finetune_steps": cfg.finetune_steps}
        x1 = data.test.ids[:1]
        macs_before = count_macs(loaded, x1)
        before = perplexity(loaded, data.test)
        val_before = perplexity(loaded, data.val)
        teacher = copy.deepcopy(loaded) if cfg.distill else None
        log.info("unpruned model: %d params, held-out perplexity %.3f", params_before, before)
        run = _buffered(loaded, teacher, data, generic, run_cfg, params_before, val_before, progress)
        loaded, lineage, steps_log, scores, kinds, val_after = (run.loaded, run.lineage, run.steps, run.scores,
                                                                run.kinds, run.metric)
        params_after = count_params(loaded.model)
        kept = params_after / params_before
        if abs(kept - cfg.ratio) > RATIO_TOLERANCE:
            raise TargetNotMet(f"could only reach a kept ratio of {kept:.3f} for --ratio {cfg.ratio}; "
                               "pick a ratio the architecture can reach or --method block-influence")
    finally:
        for m in {id(x.model): x.model for x in (original, loaded, teacher) if x is not None}.values():
            ad.to_stock(m)
    after = perplexity(loaded, data.test)
    loaded.refresh_meta()
    loaded.meta["compress"] = {"method": cfg.method, "ratio": cfg.ratio, "seed": cfg.seed,
                               "uniform": cfg.uniform}
    loaded.meta["text"] = data.summary()
    plan = _plan_json(cfg, lineage, scores, kinds)
    for u in plan["units"]:
        if u["unit"] == "heads" and ad.layout(loaded.model) == "llama":
            u["unit"] = "kv_groups"  # a head unit of a GQA model is one KV group with its query heads
    report = {
        "params_before": params_before, "params_after": params_after, "params_ratio": kept,
        "macs_before": macs_before, "macs_after": count_macs(loaded, x1), "macs_tokens": int(x1.shape[1]),
        "metric": "perplexity", "before": before, "after": after,
        "val_before": val_before, "val_after": val_after,
        "steps": steps_log, "personalization": fit, "data": data.summary(),
        "uniform": ad.is_uniform(loaded.model), "config": cfg.to_dict(), "seconds": round(time.time() - t0, 2),
    }
    return Pruned(loaded, plan, report, teacher, data)


def _buffered(loaded: Loaded, teacher: Loaded | None, data: TextData, generic: TextData | None, cfg: PruneConfig,
              params_before: int, val_before: float, progress: Progress | None) -> Stepped:
    """The shared step-buffering loop with the LM's pieces: random token
    chunks for calibration, perplexity for validation, and a guard on the
    rise in validation NLL (nats)."""
    batch = cfg.lm.batch_size

    def calib(g: torch.Generator):
        # random sampling: a fresh random subsample of the user's chunks per step
        idx = torch.randperm(len(data.train), generator=g)[: cfg.calib_samples]
        gx = None
        if generic is not None:
            gx = generic.train.ids[torch.randperm(len(generic.train), generator=g)[: cfg.calib_samples]]
        return data.train.ids[idx], None, gx

    task = StepTask(
        calib=calib, validate=lambda m: perplexity(m, data.val),
        harm=lambda current, pruned: math.log(pruned) - math.log(current), harm_name="nll_rise",
        tolerance=cfg.lm.nll_tolerance,
        recover=lambda m, steps, seed, stage: recover_lm(m, teacher, data.train, steps, _lm_lr(cfg), batch, seed,
                                                         progress=progress, stage=stage))
    return buffered_steps(loaded, task, cfg, params_before, val_before)


def _lm_lr(cfg: PruneConfig) -> float:
    """LM recovery rate: PruneConfig.lm.lr (2e-5, see LMOptions), not PruneConfig.lr (tuned on DINOv2)."""
    return cfg.lm.lr
