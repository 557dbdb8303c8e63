"""The compress verb, one flow for every task: personalize, plan, prune in buffered steps, recover."""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import torch

from pocketsize.errors import TargetNotMet
from pocketsize.loading import Loaded, load_model

from . import train
from .config import PruneConfig
from .images import personalize  # noqa: F401  (public: the suites personalize once per user)
from .plan import count_params
from .steps import (RATIO_TOLERANCE, Progress, Pruned, StepTask, Stepped, _plan_json,  # noqa: F401
                    buffered_steps, count_macs, resolve_device)
from .tasks import CompressTask, task_for

log = logging.getLogger(__name__)


def prune(model: Loaded | str, data: Any, config: PruneConfig | None = None,
          progress: Progress | None = None, generic: Any = None) -> Pruned:
    """Prune ``model`` for the user's ``data`` to ``config.ratio`` of its parameters.

    One flow for every task (``pocketsize.compress.tasks``): an image
    classifier takes an ImageFolder (or ``ImageData``) and is judged by
    accuracy, a causal LM takes text (or ``TextData``) and is judged by
    perplexity. The caller's model is never cut: steps work on copies."""
    cfg = config or PruneConfig()
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    loaded = model if isinstance(model, Loaded) else load_model(model)
    task = task_for(loaded.task)
    task.check(loaded, data, cfg)
    if cfg.allocation:  # a plan from another architecture is bad input before any work
        from .allocate import Budget
        from .transplant import Allocation

        Allocation.from_dict(cfg.allocation).check(Budget.of(loaded))
    data, generic = task.load_data(loaded, data, generic, cfg, progress)
    run_cfg = task.run_config(loaded, cfg)
    with task.session(loaded, cfg) as touched:
        fit = task.personalize(loaded, data, cfg, progress)
        params_before = count_params(loaded.model)
        _check_reachable(loaded, run_cfg, params_before, task)
        x1 = task.macs_input(data).to(train.device_of(loaded))
        macs_before = count_macs(loaded, x1)
        before = task.evaluate(loaded, data.test)
        val_before = task.evaluate(loaded, data.val)
        log.info("%s model before pruning: %d params, held-out %s %.4f", task.name, params_before, task.metric,
                 before)
        teacher = copy.deepcopy(loaded) if cfg.distill else None
        if teacher is not None:
            touched.append(teacher.model)
        steps = task.step_task(loaded, teacher, data, generic, cfg, progress)
        finetuned = _finetuned_reference(loaded, steps, task, data, cfg)
        run = buffered_steps(loaded, steps, run_cfg, params_before, val_before)
        touched.append(run.loaded.model)
        pruned = run.loaded
        params_after = count_params(pruned.model)
        kept = params_after / params_before
        if abs(kept - cfg.ratio) > RATIO_TOLERANCE:
            raise TargetNotMet(f"could only reach a kept ratio of {kept:.3f} for --ratio {cfg.ratio}; "
                               "pick a ratio the architecture can reach or --method block-influence")
        after = task.evaluate(pruned, data.test)
        macs_after = count_macs(pruned, x1)
    pruned.refresh_meta()
    pruned.meta["compress"] = {"method": cfg.method, "ratio": cfg.ratio, "seed": cfg.seed}
    plan = _plan_json(cfg, run.lineage, run.scores, run.kinds)
    report = {
        "params_before": params_before, "params_after": params_after, "params_ratio": kept,
        "macs_before": macs_before, "macs_after": macs_after,
        "metric": task.metric, "before": before, "after": after,
        "references": {"base": before, "finetuned": finetuned},
        "val_before": val_before, "val_after": run.metric,
        "steps": run.steps, "personalization": fit, "data": data.summary(),
        "config": cfg.to_dict(), "seconds": round(time.time() - t0, 2),
    }
    task.finish(pruned, data, cfg, plan, report)
    return Pruned(pruned, plan, report, teacher, data)


def _finetuned_reference(loaded: Loaded, steps: StepTask, task: CompressTask, data: Any,
                         cfg: PruneConfig) -> float | None:
    """Held-out metric of the *unpruned* model after the same recovery recipe and
    budget on the same user data: what the user would get without pruning.
    None when switched off (``--no-finetuned-reference``). The trained copy is
    only measured, never returned, so it is dropped here, not kept until the run ends."""
    if not cfg.finetuned_reference:
        return None
    ref = copy.deepcopy(loaded)
    steps.recover(ref, cfg.recovery_steps, cfg.seed + 100, "fine-tuned reference")
    value = task.evaluate(ref, data.test)
    log.info("fine-tuned unpruned reference: held-out %s %.4f", task.metric, value)
    return value


def _check_reachable(loaded: Loaded, cfg: PruneConfig, params_before: int, task: CompressTask) -> None:
    """Fail before any scoring or training when no plan can get down to the ratio (exit 4)."""
    from .allocate import Budget, min_reachable

    removal = cfg.method == "block-influence" and cfg.allow_block_removal
    floor = min_reachable(Budget.of(loaded), cfg.min_heads, cfg.channel_multiple, block_removal=removal)
    floor /= params_before
    if cfg.ratio >= floor - RATIO_TOLERANCE:
        return
    use = f"use --ratio {math.ceil(floor * 100) / 100:.2f} or more"
    if removal:
        raise TargetNotMet(f"--ratio {cfg.ratio} is below the smallest reachable kept ratio {floor:.3f} even when "
                           f"removing blocks (one block, the embeddings and the head stay); {use}")
    raise TargetNotMet(f"--ratio {cfg.ratio} is below the smallest reachable kept ratio {floor:.3f}: it would "
                       f"remove every {task.unit_word} of some blocks (embeddings, head and {cfg.min_heads} "
                       f"{task.unit_word}(s) + {cfg.channel_multiple} MLP channels per block stay); {use}, "
                       "or --method block-influence")
