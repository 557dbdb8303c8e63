"""The compress verb, one flow for every task: personalize, plan, prune in buffered steps, recover."""

from __future__ import annotations

import copy
import dataclasses
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
from .steps import (RATIO_TOLERANCE, Goal, Progress, Pruned, StepTask, Stepped, _plan_json,  # noqa: F401
                    buffered_steps, count_macs, predicted_ms, resolve_device)
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
    if run_cfg.reconstruct is None:  # the task's measured default
        run_cfg = dataclasses.replace(run_cfg, reconstruct=task.reconstruct)
    with task.session(loaded, cfg) as touched:
        fit = task.personalize(loaded, data, cfg, progress)
        params_before = count_params(loaded.model)
        x1 = task.macs_input(data).to(train.device_of(loaded))
        goal, run_cfg = _latency_goal(loaded, run_cfg, tuple(x1.shape))
        _check_reachable(loaded, run_cfg, params_before, task, goal)
        macs_before = count_macs(loaded, x1)
        base = task.evaluate(loaded, data.test)
        general = {"base": task.general(loaded, data)}
        before = base
        if cfg.finetune_steps:  # the cut starts from the fine-tuned model; references.base stays the base
            task.finetune(loaded, data, cfg, progress)
            fit["finetune_steps"] = cfg.finetune_steps
            before = task.evaluate(loaded, data.test)
        val_before = task.evaluate(loaded, data.val)
        log.info("%s model before pruning: %d params, held-out %s %.4f", task.name, params_before, task.metric,
                 before)
        # the unpruned model as personalized: the run exports it as the original, and it teaches
        # the recovery when distillation is on
        unpruned = copy.deepcopy(loaded)
        touched.append(unpruned.model)
        teacher = unpruned if cfg.distill else None
        steps = task.step_task(loaded, teacher, data, generic, cfg, progress)
        ref = _finetuned_reference(loaded, steps, cfg)
        finetuned = None
        if ref is not None:
            finetuned = task.evaluate(ref, data.test)
            general["finetuned"] = task.general(ref, data)
            log.info("fine-tuned unpruned reference: held-out %s %.4f", task.metric, finetuned)
            if teacher is not None and cfg.teacher == "finetuned":  # the trained reference teaches the pruned model
                touched.append(ref.model)
                steps = task.step_task(loaded, ref, data, generic, cfg, progress)
        del ref  # measured: dropped here unless the steps distill from it
        run = buffered_steps(loaded, steps, run_cfg, params_before, val_before, goal)
        touched.append(run.loaded.model)
        pruned = run.loaded
        params_after = count_params(pruned.model)
        kept = params_after / params_before
        latency = _latency_record(pruned, run_cfg, goal) if goal else None
        if goal is None and abs(kept - cfg.ratio) > RATIO_TOLERANCE:
            raise TargetNotMet(f"could only reach a kept ratio of {kept:.3f} for --ratio {cfg.ratio}; "
                               "pick a ratio the architecture can reach or --method block-influence")
        after = task.evaluate(pruned, data.test)
        general["after"] = task.general(pruned, data)
        macs_after = count_macs(pruned, x1)
    pruned.refresh_meta()
    pruned.meta["compress"] = {"method": cfg.method, "ratio": cfg.ratio, "seed": cfg.seed}
    plan = _plan_json(cfg, run.lineage, run.scores, run.kinds)
    report = {
        "params_before": params_before, "params_after": params_after, "params_ratio": kept,
        "macs_before": macs_before, "macs_after": macs_after,
        "metric": task.metric, "before": before, "after": after,
        "references": {"base": base, "finetuned": finetuned},
        # the same metric on text that is not the user's (--lm-general-text): what pruning and recovery forget
        "general": None if general["base"] is None else {
            "base": general["base"], "finetuned": general.get("finetuned"), "after": general["after"],
            "text": cfg.lm.general_text},
        "val_before": val_before, "val_after": run.metric, "latency": latency,
        "reconstruct": run_cfg.reconstruct,
        "steps": run.steps, "personalization": fit, "data": data.summary(),
        "config": cfg.to_dict(), "seconds": round(time.time() - t0, 2),
    }
    task.finish(pruned, data, cfg, plan, report)
    return Pruned(pruned, plan, report, unpruned, data)


def _finetuned_reference(loaded: Loaded, steps: StepTask, cfg: PruneConfig) -> Loaded | None:
    """The *unpruned* model after the same recovery recipe and budget on the same
    user data: what the user would get without pruning, and the teacher of
    ``--teacher finetuned``. None when switched off (``--no-finetuned-reference``)
    and no teacher needs it."""
    if not (cfg.finetuned_reference or (cfg.distill and cfg.teacher == "finetuned")):
        return None
    ref = copy.deepcopy(loaded)
    steps.recover(ref, cfg.recovery_steps, cfg.seed + 100, "fine-tuned reference")
    return ref


LATENCY_TOLERANCE = 0.01  # the final plan's predicted p50 may exceed --target-latency by 1% (one channel group)


def _latency_goal(loaded: Loaded, cfg: PruneConfig, input_shape: tuple[int, ...]) -> tuple[Goal | None, PruneConfig]:
    """--target-latency: the goal in predicted ms, and the config with the MLP
    width multiple the latency model found the runtime rewards. (None, cfg) otherwise."""
    if cfg.target_latency_ms is None:
        return None, cfg
    from pocketsize.errors import BadInput
    from pocketsize.latency import LatencyModel

    from .allocate import Budget

    if cfg.latency is None:
        raise BadInput("--target-latency needs a latency model measured on the target device; the CLI measures one "
                       "(--device, --runtime), in Python pass pocketsize.latency_grid.profile(...).to_dict()")
    model = LatencyModel.from_dict(cfg.latency)
    budget = Budget.of(loaded, model)
    sig = model.signature
    if (sig.blocks, sig.heads, sig.mlp_hidden, sig.input_shape) != (len(budget.heads), max(budget.heads),
                                                                   max(budget.chans), input_shape):
        raise BadInput(f"--target-latency: the latency model was measured for {sig.describe()}, not for this model "
                       f"and input {'x'.join(map(str, input_shape))}; measure it again for this model")
    full = budget.full
    where = f"{model.runtime}, {model.threads} thread(s) on {model.device.get('name') or model.device.get('kind')}"
    if cfg.target_latency_ms >= full:
        raise BadInput(f"--target-latency {cfg.target_latency_ms:g} ms: the unpruned model already runs in "
                       f"{full:.2f} ms (predicted, {where}); pass a target below that")
    multiple = max(cfg.channel_multiple, model.multiple)
    return Goal(cfg.target_latency_ms / full, full, "ms"), dataclasses.replace(cfg, channel_multiple=multiple)


def _latency_record(pruned: Loaded, cfg: PruneConfig, goal: Goal) -> dict[str, Any]:
    """compress_report.json "latency": target, predicted before/after; fails (exit 4) above the target."""
    from pocketsize.latency import LatencyModel

    model = LatencyModel.from_dict(cfg.latency)
    after = predicted_ms(pruned, cfg)
    if after > cfg.target_latency_ms * (1 + LATENCY_TOLERANCE):
        raise TargetNotMet(f"--target-latency {cfg.target_latency_ms:g} ms: the plan reached {after:.2f} ms "
                           "(predicted); pick a higher target or --method block-influence")
    return {"target_ms": cfg.target_latency_ms, "predicted_ms": round(after, 3),
            "predicted_before_ms": round(goal.total, 3), "measured_before_ms": round(model.measured_p50_ms, 3),
            "runtime": model.runtime, "threads": model.threads, "device": model.device,
            "channel_multiple": cfg.channel_multiple}


def _check_reachable(loaded: Loaded, cfg: PruneConfig, params_before: int, task: CompressTask,
                     goal: Goal | None = None) -> None:
    """Fail before any scoring or training when no plan can get down to the ratio
    or the latency target (exit 4)."""
    from .allocate import Budget, min_reachable

    removal = cfg.method == "block-influence" and cfg.allow_block_removal
    if goal is not None:
        fastest = min_reachable(Budget.of(loaded, cfg.latency), cfg.min_heads, cfg.channel_multiple,
                                block_removal=removal)
        if cfg.target_latency_ms < fastest * (1 - LATENCY_TOLERANCE):
            raise TargetNotMet(f"--target-latency {cfg.target_latency_ms:g} ms is below the fastest plan "
                               f"{'(one block left)' if removal else '(every block at its narrowest)'}: "
                               f"{fastest:.2f} ms predicted; use --target-latency {math.ceil(fastest * 10) / 10:g} "
                               f"or more" + ("" if removal else ", or --method block-influence"))
        return
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
