"""The compress verb: personalize, plan, prune in buffered steps, recover."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pocketsize.errors import BadInput, TargetNotMet

from . import train
from .config import PruneConfig
from .data import ImageData, load_image_data
from .loading import Loaded, load_model
from .methods import StepContext, get_method
from .plan import Lineage, apply_plan, count_params

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
RATIO_TOLERANCE = 0.01  # CONTRACT: kept fraction equals --ratio within 1 point


@dataclass
class Pruned:
    loaded: Loaded
    plan: dict[str, Any]
    report: dict[str, Any]
    teacher: Loaded | None = None
    data: ImageData | None = None


def count_macs(loaded: Loaded, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on one input (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        loaded.adapter.logits(loaded.model, x[:1])
    return int(fc.get_total_flops() // 2)


def _schedule(cfg: PruneConfig) -> list[float]:
    """Kept-parameter ratio after each step (geometric steps: equal relative cuts)."""
    if not cfg.buffer or cfg.ratio >= 1.0:
        return [cfg.ratio]
    return [cfg.ratio ** ((k + 1) / cfg.steps) for k in range(cfg.steps)]


def _recovery_split(cfg: PruneConfig, n_steps: int) -> list[int]:
    """Recovery steps after each pruning step: ``final_share`` of the budget on
    the final architecture, the rest spread evenly over the earlier steps
    (one-shot gets the whole budget at once: equal total budget)."""
    total = cfg.recovery_steps
    if n_steps == 1:
        return [total]
    final = int(round(total * cfg.final_share))
    early = total - final
    per = [early // (n_steps - 1)] * (n_steps - 1)
    per[-1] += early - sum(per)
    return per + [final]


@dataclass
class StepTask:
    """What the buffered step loop needs from a task: images judge accuracy,
    language models perplexity; the loop itself is the same."""
    calib: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
    validate: Callable[[Loaded], float]             # the validation metric of a model
    harm: Callable[[float, float], float]           # (metric before the step, after the cut) -> how much worse
    harm_name: str                                  # its key in the step log
    tolerance: float                                # the undo guard's threshold on ``harm``
    recover: Callable[[Loaded, int, int, str], Any]  # (model, steps, seed, stage)
    refit: Callable[[Loaded, int], None] | None = None  # a cheap fix right after the cut (the ViT's head)


@dataclass
class Stepped:
    loaded: Loaded
    lineage: Lineage
    steps: list[dict[str, Any]]
    scores: dict[int, dict] | None
    kinds: dict[int, dict] | None
    metric: float  # the validation metric after the last recovery


def buffered_steps(loaded: Loaded, task: StepTask, cfg: PruneConfig, params_before: int,
                   val_before: float) -> Stepped:
    """Step buffering: prune in ``_schedule`` steps with recovery after each,
    scoring every step on a fresh random calibration sample. A step whose
    pruning-time harm exceeds the tolerance is undone and split in two, once
    per scheduled step so the cost stays bounded; the halves share its
    recovery budget. Steps work on copies: ``loaded`` is never cut."""
    g = torch.Generator().manual_seed(cfg.seed)
    planner = get_method(cfg.method)
    lineage = Lineage.start(loaded)
    ratios = _schedule(cfg)
    recov = _recovery_split(cfg, len(ratios))
    log_: list[dict[str, Any]] = []
    scores: dict | None = None
    kinds: dict | None = None
    current = val_before
    split_done: set[int] = set()
    k = 0
    while k < len(ratios):
        r = ratios[k]
        x, y, gx = task.calib(g)
        step = planner(StepContext(loaded, x, y, gx, cfg, seed=cfg.seed + k), r * params_before)
        candidate = copy.deepcopy(loaded)
        apply_plan(candidate, step.plan)
        if task.refit is not None:
            task.refit(candidate, k)
        val_pruned = task.validate(candidate)
        harm = task.harm(current, val_pruned)
        prev = ratios[k - 1] if k else 1.0
        if cfg.buffer and k < len(ratios) - 1 and harm > task.tolerance and k not in split_done:
            log_.append({"ratio": r, "metric": val_pruned, "accepted": False, task.harm_name: harm})
            split_done.update({k, k + 1})
            ratios.insert(k, (prev + r) / 2)
            half = recov[k] // 2
            recov[k] -= half
            recov.insert(k, half)
            log.info("step to %.3f: validation %s %.3f > %.3f, undone, trying %.3f first",
                     r, task.harm_name, harm, task.tolerance, ratios[k])
            continue
        loaded = candidate
        # scores are indexed by the blocks the planner saw: key them by original block;
        # a block removed in an earlier step keeps the score and kind it was removed with
        scores = {**(scores or {}), **{lineage.blocks[i]: sc for i, sc in enumerate(step.layer_scores)}}
        kinds = {**(kinds or {}), **{lineage.blocks[i]: kd for i, kd in enumerate(step.kinds)}}
        lineage = lineage.advance(step.plan)
        task.recover(loaded, recov[k], cfg.seed + 100 + k, f"recovery {k + 1}/{len(ratios)}")
        current = task.validate(loaded)
        kept = count_params(loaded.model) / params_before
        log.info("step %d: kept %.3f of the parameters, validation metric %.4f at the cut, %.4f after %d "
                 "recovery steps", k + 1, kept, val_pruned, current, recov[k])
        log_.append({"ratio": kept, "target": r, "metric": current, "metric_at_prune": val_pruned,
                     "accepted": True, "recovery_steps": recov[k]})
        k += 1
    return Stepped(loaded, lineage, log_, scores, kinds, current)


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA, then MPS, then the CPU; an explicit accelerator that
    is not there is a bad input, not a silent fall-back."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device is visible here; use --device cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BadInput("--device mps: Metal is not available here; use --device cpu (or auto)")
    return torch.device(name)


def personalize(loaded: Loaded, data: ImageData, cfg: PruneConfig, progress: Progress | None = None) -> dict:
    """Give the model a head for the user's classes unless it already has one."""
    ad = loaded.adapter
    labels = data.labels
    if ad.num_classes(loaded.model) == len(labels) and loaded.meta.get("labels") == labels:
        return {"head": "kept"}
    info = train.fit_head(loaded, data.train, data.val, labels, epochs=cfg.probe_epochs, seed=cfg.seed)
    info["head"] = "linear probe"
    if cfg.finetune_steps:
        train.recover(loaded, None, data.train, cfg.finetune_steps, cfg.lr, cfg.head_lr, cfg.batch_size,
                      cfg.seed, progress=progress, stage="fine-tune")
        info["head"] = f"linear probe + {cfg.finetune_steps} fine-tune steps"
    return info


def prune(model: Loaded | str, data: ImageData | str, config: PruneConfig | None = None,
          progress: Progress | None = None, generic: ImageData | str | None = None) -> Pruned:
    """Prune ``model`` for the user's ``data`` to ``config.ratio`` of its parameters."""
    cfg = config or PruneConfig()
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    loaded = model if isinstance(model, Loaded) else load_model(model)
    if loaded.task != "image-classification":
        from .llm import prune_lm  # language models have their own data and metric

        return prune_lm(loaded, data, cfg, progress=progress, generic=generic)
    pp = loaded.meta.get("preprocessing") or loaded.adapter.preprocessing(loaded.model)
    if cfg.extra.get("image_size"):
        s = int(cfg.extra["image_size"])
        pp = {**pp, "input_size": [pp["input_size"][0], s, s]}
    loaded.meta["preprocessing"] = pp
    if not isinstance(data, ImageData):
        data = load_image_data(data, pp, seed=cfg.seed, progress=progress is not None)
    if isinstance(generic, str):
        generic = load_image_data(generic, pp, seed=cfg.seed)
    loaded.model.to(resolve_device(cfg.device))
    try:
        return _prune_images(loaded, data, cfg, progress, generic, t0)
    finally:
        loaded.model.to("cpu")  # results (and the caller's model) always come back on the CPU


def _check_reachable(loaded: Loaded, cfg: PruneConfig, params_before: int) -> None:
    """Fail before any scoring or training when no plan can get down to the ratio."""
    from .allocate import Budget, min_reachable

    floor = min_reachable(Budget.of(loaded), cfg.min_heads, cfg.channel_multiple,
                          block_removal=cfg.method == "block-influence")
    if cfg.ratio * params_before < floor - RATIO_TOLERANCE * params_before:
        raise TargetNotMet(f"--ratio {cfg.ratio} is below the smallest reachable kept ratio "
                           f"{floor / params_before:.3f} for this model (embeddings, head and one head + "
                           f"{cfg.channel_multiple} channels per block stay); pick a larger --ratio")


def _prune_images(loaded: Loaded, data: ImageData, cfg: PruneConfig, progress: Progress | None,
                  generic: ImageData | None, t0: float) -> Pruned:
    fit = personalize(loaded, data, cfg, progress)
    loaded.refresh_meta()
    params_before = count_params(loaded.model)
    _check_reachable(loaded, cfg, params_before)
    x1 = data.test.normalized(0, 1).to(train.device_of(loaded))
    macs_before = count_macs(loaded, x1)
    before = train.accuracy(loaded, data.test)
    val_before = train.accuracy(loaded, data.val)
    teacher = copy.deepcopy(loaded) if cfg.distill else None
    log.info("personalized model: %d params, held-out accuracy %.4f", params_before, before)

    def calib(g: torch.Generator):
        # random sampling: a fresh random subsample of the user's training data per step
        idx = torch.randperm(len(data.train), generator=g)[: cfg.calib_samples]
        gx = None
        if generic is not None:
            gx = generic.train.normalized()[torch.randperm(len(generic.train), generator=g)[: cfg.calib_samples]]
        return data.train.normalized()[idx], data.train.y[idx], gx

    def refit(candidate: Loaded, k: int) -> None:
        # the pruned features moved: a linear probe on them is a cheap first buffer
        train.fit_head(candidate, data.train, data.val, data.labels, epochs=cfg.probe_epochs, seed=cfg.seed + k)

    task = StepTask(
        calib=calib, validate=lambda m: train.accuracy(m, data.val),
        harm=lambda current, pruned: current - pruned, harm_name="drop", tolerance=cfg.tolerance,
        recover=lambda m, steps, seed, stage: train.recover(m, teacher, data.train, steps, cfg.lr, cfg.head_lr,
                                                            cfg.batch_size, seed, progress=progress, stage=stage),
        refit=refit if cfg.refit_head else None)
    run = buffered_steps(loaded, task, cfg, params_before, val_before)
    loaded, lineage, steps_log, current_val = run.loaded, run.lineage, run.steps, run.metric
    last_scores, last_kinds = run.scores, run.kinds

    params_after = count_params(loaded.model)
    kept = params_after / params_before
    if abs(kept - cfg.ratio) > RATIO_TOLERANCE:
        raise TargetNotMet(f"could only reach a kept ratio of {kept:.3f} for --ratio {cfg.ratio}; "
                           "allow block removal or pick a ratio the architecture can reach")
    after = train.accuracy(loaded, data.test)
    loaded.refresh_meta()
    loaded.meta["compress"] = {"method": cfg.method, "ratio": cfg.ratio, "seed": cfg.seed}
    plan = _plan_json(cfg, lineage, last_scores, last_kinds)
    report = {
        "params_before": params_before, "params_after": params_after, "params_ratio": kept,
        "macs_before": macs_before, "macs_after": count_macs(loaded, x1),
        "metric": "accuracy", "before": before, "after": after,
        "val_before": val_before, "val_after": current_val,
        "steps": steps_log, "personalization": fit, "data": data.summary(),
        "config": cfg.to_dict(), "seconds": round(time.time() - t0, 2),
    }
    if teacher is not None:
        teacher.model.to("cpu")
    loaded.model.to("cpu")
    return Pruned(loaded, plan, report, teacher, data)


def _plan_json(cfg: PruneConfig, lineage: Lineage, scores, kinds) -> dict[str, Any]:
    """plan.json: one unit per attention / MLP half-block of the original model."""
    units = []
    for b, (H, M) in enumerate(lineage.totals):
        alive = b in lineage.blocks
        j = lineage.blocks.index(b) if alive else None
        for part, total in (("attn", H), ("mlp", M)):
            kept = len(lineage.heads[j] if part == "attn" else lineage.channels[j]) if alive else 0
            score = scores[b][part] if scores and b in scores else None
            kind = kinds[b][part] if kinds and b in kinds else "common"
            units.append({"name": f"blocks.{b}.{part}", "kind": kind, "score": score, "kept": kept, "total": total,
                          "unit": "heads" if part == "attn" else "channels"})
    return {"method": cfg.method, "seed": cfg.seed, "ratio": cfg.ratio, "buffer": cfg.buffer,
            "units": units, "keep": lineage.as_plan().to_dict()}
