"""The step-buffering driver every task shares (images and language models).

``buffered_steps`` reaches the target in a schedule of steps, each scored on a
fresh random calibration sample, recovered, and guarded by an undo; the task
(:class:`StepTask`) says what differs. The tasks (``images``, ``llm``) build
their StepTask on this module; ``pruning.prune`` runs the one flow.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from pocketsize.errors import BadInput
from pocketsize.loading import Loaded

from .config import PruneConfig
from .methods import StepContext, planner_for
from .plan import Lineage, apply_plan, count_params
from .reconstruct import Grams, collect_grams, compensate

if TYPE_CHECKING:
    from pocketsize.data import ImageData

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
RATIO_TOLERANCE = 0.01  # contract: kept fraction equals --ratio within 1 point


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


@dataclass(frozen=True)
class Goal:
    """What the step loop cuts toward: ``fraction`` of the unpruned cost ``total``,
    counted in parameters (``--ratio``) or predicted milliseconds (``--target-latency``)."""

    fraction: float
    total: float
    unit: str = "params"


def _schedule(cfg: PruneConfig, fraction: float) -> list[float]:
    """Kept fraction of the cost after each step (geometric steps: equal relative cuts)."""
    if not cfg.buffer or fraction >= 1.0:
        return [fraction]
    return [fraction ** ((k + 1) / cfg.steps) for k in range(cfg.steps)]


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
                   val_before: float, goal: Goal | None = None) -> Stepped:
    """Step buffering: prune in ``_schedule`` steps with recovery after each,
    scoring every step on a fresh random calibration sample. A step whose
    pruning-time harm exceeds the tolerance is undone and split in two, once
    per scheduled step so the cost stays bounded; the halves share its
    recovery budget. Steps work on copies: ``loaded`` is never cut."""
    g = torch.Generator().manual_seed(cfg.seed)
    planner = planner_for(cfg)
    lineage = Lineage.start(loaded)
    goal = goal or Goal(cfg.ratio, params_before)
    ratios = _schedule(cfg, goal.fraction)
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
        grams = collect_grams(loaded, x) if cfg.reconstruct else None
        best: dict[str, Any] = {}  # the least harmful cut a planner judged this step (one model copy, not all)

        def judge(plan) -> float:
            cut = _cut(loaded, plan, task, k, grams)
            harm = task.harm(current, cut[1])
            if not best or harm < best["harm"]:
                best.update(plan=plan, cut=cut, harm=harm)
            return harm

        step = planner(StepContext(loaded, x, y, gx, cfg, seed=cfg.seed + k, original_blocks=list(lineage.blocks),
                                   judge=judge), r * goal.total)
        candidate, val_pruned = best["cut"] if best.get("plan") is step.plan else _cut(loaded, step.plan, task, k,
                                                                                        grams)
        best.clear()
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
        entry = {"ratio": kept, "target": r, "metric": current, "metric_at_prune": val_pruned,
                 "accepted": True, "recovery_steps": recov[k], **({"planner": step.info} if step.info else {})}
        if goal.unit == "ms":  # --target-latency: ``target`` is a fraction of the unpruned predicted p50
            entry["predicted_ms"] = round(predicted_ms(loaded, cfg), 3)
        log_.append(entry)
        k += 1
    return Stepped(loaded, lineage, log_, scores, kinds, current)


def predicted_ms(loaded: Loaded, cfg: PruneConfig) -> float:
    """The latency model's p50 for ``loaded`` as it is now (``--target-latency`` runs)."""
    from .allocate import Budget

    return Budget.of(loaded, cfg.latency).full


def _cut(loaded: Loaded, plan: Any, task: StepTask, k: int, grams: Grams | None = None) -> tuple[Loaded, float]:
    """A pruned copy of ``loaded`` (output projections refit first with ``grams``, head re-fit
    after when the task has one) and its validation metric."""
    candidate = copy.deepcopy(loaded)
    if grams is not None:
        compensate(candidate, plan, grams)
    apply_plan(candidate, plan)
    if task.refit is not None:
        task.refit(candidate, k)
    return candidate, task.validate(candidate)


def load_generic(loader: Callable[..., Any], path: Any, *args: Any, **kwargs: Any) -> Any:
    """``loader(path, ...)`` for the --generic reference data: the loaders name
    their path --data, which would send the user to the wrong flag."""
    try:
        return loader(path, *args, **kwargs)
    except BadInput as e:
        msg = str(e)
        if msg.startswith("--data "):
            raise BadInput("--generic " + msg[len("--data "):]) from None
        raise


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA, then MPS, then the CPU; an explicit accelerator that
    is not there is a bad input, not a silent fall-back."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--torch-device {name}: no CUDA device is visible here; use --torch-device cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BadInput("--torch-device mps: Metal is not available here; use --torch-device cpu (or auto)")
    return torch.device(name)


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
    doc = {"method": cfg.method, "seed": cfg.seed, "ratio": cfg.ratio, "buffer": cfg.buffer,
           "units": units, "keep": lineage.as_plan().to_dict()}
    if cfg.allocation:  # --plan: the widths came from another run, the units from this user
        doc["allocation_from"] = cfg.allocation.get("source")
    return doc
