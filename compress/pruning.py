"""The compress verb: personalize, plan, prune in buffered steps, recover."""

from __future__ import annotations

import copy
import logging
import time

import torch

from pocketsize.errors import TargetNotMet

from . import train
from .config import PruneConfig
from pocketsize.data import ImageData, load_image_data
from pocketsize.loading import Loaded, load_model
from .plan import count_params
from .steps import load_generic
from .steps import (RATIO_TOLERANCE, Progress, Pruned, StepTask, Stepped, _plan_json,  # noqa: F401
                    buffered_steps, count_macs, resolve_device)

log = logging.getLogger(__name__)


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
    if cfg.allocation:  # a plan from another architecture is bad input before any work
        from .allocate import Budget
        from .transplant import Allocation

        Allocation.from_dict(cfg.allocation).check(Budget.of(loaded))
    if loaded.task != "image-classification":
        from .llm import prune_lm  # language models have their own data and metric

        return prune_lm(loaded, data, cfg, progress=progress, generic=generic)
    pp = loaded.meta.get("preprocessing") or loaded.adapter.preprocessing(loaded.model)
    if cfg.image_size:
        s = cfg.image_size
        pp = {**pp, "input_size": [pp["input_size"][0], s, s]}
    loaded.meta["preprocessing"] = pp
    if not isinstance(data, ImageData):
        data = load_image_data(data, pp, seed=cfg.seed, progress=progress is not None)
    if isinstance(generic, str):
        generic = load_generic(load_image_data, generic, pp, seed=cfg.seed)
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


