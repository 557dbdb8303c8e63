"""The causal-lm task of the compress flow (``pocketsize.compress.pruning.prune``):
the user's text, perplexity, LM recovery with distillation."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch

from pocketsize.errors import BadInput
from pocketsize.loading import Loaded
from pocketsize.text import TextData, TextSplit, load_general_text, load_text_data, perplexity, token_nll

from .config import PruneConfig
from .steps import Progress, StepTask, load_generic
from .tasks import CompressTask
from .train import distill_kl, run_steps

log = logging.getLogger(__name__)

def recover_lm(student: Loaded, teacher: Loaded | None, train: TextSplit, steps: int, lr: float,
               batch_size: int, seed: int, temperature: float = 2.0, alpha: float = 0.5,
               progress: Progress | None = None, stage: str = "recovery", qat_group: int = 0) -> list[float]:
    """Short recovery on the user's text: next-token loss, plus (with a teacher)
    KL distillation from the unpruned model over the whole vocabulary. No
    warm-up: it was measured on LMs without one (the ViT needs it for its
    fitted probe head, which an LM does not have). ``qat_group``: train through
    the int4 export's grid and end on it (compress/qat.py)."""
    if steps <= 0 or len(train) == 0:
        return []
    if qat_group:
        from .qat import on_grid

        with on_grid(student.model, qat_group):
            return recover_lm(student, teacher, train, steps, lr, batch_size, seed, temperature, alpha,
                              progress, stage)
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


def _run_config(loaded: Loaded, cfg: PruneConfig) -> PruneConfig:
    """GPT-2 in uniform mode keeps every head: its config derives head_dim
    from the head count, so fewer heads could not be described by it. With a
    4-bit grid (``lm.qat_group``) MLP widths are cut in whole groups."""
    ad = loaded.adapter
    if cfg.lm.qat_group and (grouped := cfg.in_whole_groups(cfg.lm.qat_group)) is not cfg:
        log.info("--lm-qat-group %d: MLP widths pruned in multiples of %d", cfg.lm.qat_group, grouped.channel_multiple)
        cfg = grouped
    if cfg.uniform and ad.layout(loaded.model) == "gpt2":
        heads = max(ad.block_shape(b).heads for b in ad.blocks(loaded.model))
        return dataclasses.replace(cfg, min_heads=heads)
    return cfg


class LMTask(CompressTask):
    """The user's text instead of labelled images: calibration samples random
    token chunks, the metric is held-out perplexity, recovery is LM loss plus
    KL distillation from the unpruned model, and the guard judges the rise in
    validation NLL."""

    name = "causal-lm"
    metric = "perplexity"
    unit_word = "attention head"
    reconstruct = True  # SmolLM2 keep 0.85: perplexity at the cut 116.5 -> 90.1 (docs/method.md)

    def check(self, loaded, data, cfg):
        if cfg.method == "taylor":
            raise BadInput("--method taylor is not available for language models; use hei, activation, magnitude, "
                           "random or block-influence")
        if cfg.recovery_loss != "logits":
            raise BadInput(f"--recovery-loss {cfg.recovery_loss} applies to image models; a language model recovers "
                           "on the user's text (leave the flag out)")
        general = cfg.lm.general_text
        if general is not None and not Path(general).exists():
            raise BadInput(f"--lm-general-text {general} does not exist; pass a .txt file or folder of text that "
                           "is not the user's (its perplexity shows what pruning forgets), or leave it out")
        if loaded.tokenizer is None and not isinstance(data, TextData):
            raise BadInput(f"{loaded.meta.get('source', 'MODEL')} has no tokenizer; save it next to the model with "
                           "tokenizer.save_pretrained(MODEL_DIR)")

    def load_data(self, loaded, data, generic, cfg, progress):
        if not isinstance(data, TextData):
            data = load_text_data(data, loaded.tokenizer, seed=cfg.seed, seq_len=cfg.lm.seq_len)
        if cfg.lm.general_text and data.general is None:  # a copy: the caller's TextData stays as it was
            data = dataclasses.replace(data, general=load_general_text(cfg.lm.general_text, loaded.tokenizer,
                                                                       data.seq_len))
        if isinstance(generic, str):
            generic = load_generic(load_text_data, generic, loaded.tokenizer, seed=cfg.seed, seq_len=data.seq_len)
        return data, generic

    def run_config(self, loaded, cfg):
        return _run_config(loaded, cfg)

    def enter(self, loaded, cfg):
        # the shared pruning code sees nn.Linear modules (GPT-2's Conv1D is swapped)
        loaded.adapter.to_linear(loaded.model)

    def release(self, loaded, model):
        loaded.adapter.to_stock(model)

    def personalize(self, loaded, data, cfg, progress):
        loaded.refresh_meta()
        return {}

    def finetune(self, loaded, data, cfg, progress):
        recover_lm(loaded, None, data.train, cfg.finetune_steps, cfg.lm.lr, cfg.lm.batch_size, cfg.seed,
                   progress=progress, stage="fine-tune")

    def evaluate(self, loaded, split):
        return perplexity(loaded, split)

    def general(self, loaded, data):
        return perplexity(loaded, data.general) if data.general is not None else None

    def macs_input(self, data):
        return data.test.ids[:1]

    def step_task(self, loaded, teacher, data, generic, cfg, progress):
        def calib(g: torch.Generator):
            # random sampling: a fresh random subsample of the user's chunks per step
            idx = torch.randperm(len(data.train), generator=g)[: cfg.calib_samples]
            gx = None
            if generic is not None:
                gx = generic.train.ids[torch.randperm(len(generic.train), generator=g)[: cfg.calib_samples]]
            return data.train.ids[idx], None, gx

        return StepTask(
            calib=calib, validate=lambda m: perplexity(m, data.val),
            harm=lambda current, pruned: math.log(pruned) - math.log(current), harm_name="nll_rise",
            tolerance=cfg.lm.nll_tolerance,
            recover=lambda m, steps, seed, stage: recover_lm(m, teacher if cfg.lm.distill else None, data.train,
                                                             steps, cfg.lm.lr, cfg.lm.batch_size, seed,
                                                             alpha=cfg.lm.distill, progress=progress, stage=stage,
                                                             qat_group=cfg.lm.qat_group or 0))

    def finish(self, loaded, data, cfg, plan, report):
        ad = loaded.adapter
        loaded.meta["compress"]["uniform"] = cfg.uniform
        loaded.meta["text"] = data.summary()
        for u in plan["units"]:
            if u["unit"] == "heads" and ad.layout(loaded.model) == "llama":
                u["unit"] = "kv_groups"  # a head unit of a GQA model is one KV group with its query heads
        report["macs_tokens"] = int(self.macs_input(data).shape[1])
        report["uniform"] = ad.is_uniform(loaded.model)
