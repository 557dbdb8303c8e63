"""The task axis of the compress stage: what differs between image classifiers
and causal language models, asked for by the one flow of
``pocketsize.compress.pruning.prune``.

A task answers: how the user's data loads, how the model gets the user's
head (or not), the held-out metric, what the step loop needs
(:class:`~pocketsize.compress.steps.StepTask`), and what a run adds to its
records. Tasks register by the name the core gives a model
(``pocketsize.models``: ``image-classification``, ``causal-lm``); the
modules behind them import on first use, so ``import pocketsize.compress`` stays light.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from pocketsize.tasks import task_object

if TYPE_CHECKING:
    import torch

    from pocketsize.loading import Loaded

    from .config import PruneConfig
    from .steps import Progress, StepTask


class CompressTask:
    """What one task contributes to ``prune``. Subclasses override what differs."""

    name: str = ""
    metric: str = ""            # the report's "metric": accuracy or perplexity
    unit_word: str = "head"     # what the smallest attention unit is called in messages
    # PruneConfig.reconstruct=None means this (docs/method.md has the measurements behind each)
    reconstruct: bool = False

    def check(self, loaded: Loaded, data: Any, cfg: PruneConfig) -> None:
        """Refuse a combination this task cannot run, before any work."""

    def load_data(self, loaded: Loaded, data: Any, generic: Any, cfg: PruneConfig,
                  progress: Progress | None) -> tuple[Any, Any]:
        raise NotImplementedError

    def run_config(self, loaded: Loaded, cfg: PruneConfig) -> PruneConfig:
        """The config the planner runs with (a task may pin what its format needs)."""
        return cfg

    @contextmanager
    def session(self, loaded: Loaded, cfg: PruneConfig) -> Iterator[list]:
        """Around the work on ``loaded``: ``enter`` it, and ``release`` it and every
        model the flow adds to the yielded list (pruned copies, the teacher), always."""
        models = [loaded.model]
        self.enter(loaded, cfg)
        try:
            yield models
        finally:
            for m in {id(m): m for m in models}.values():
                self.release(loaded, m)

    def enter(self, loaded: Loaded, cfg: PruneConfig) -> None:
        """Ready the caller's model for the work (a device move, module swaps)."""

    def release(self, loaded: Loaded, model: torch.nn.Module) -> None:
        """Undo ``enter`` on ``model`` (``loaded``'s or a copy of it): results come
        back as the caller would load them."""

    def personalize(self, loaded: Loaded, data: Any, cfg: PruneConfig, progress: Progress | None) -> dict:
        """The base model for the user (an image model's linear probe): ``references.base``."""
        return {}

    def finetune(self, loaded: Loaded, data: Any, cfg: PruneConfig, progress: Progress | None) -> None:
        """``cfg.finetune_steps`` of training on the user's data before the cut."""
        raise NotImplementedError

    def evaluate(self, loaded: Loaded, split: Any) -> float:
        raise NotImplementedError

    def general(self, loaded: Loaded, data: Any) -> float | None:
        """The metric on held-out data that is not the user's (forgetting), None when
        the run has none (``--lm-general-text``)."""
        return None

    def macs_input(self, data: Any) -> torch.Tensor:
        raise NotImplementedError

    def step_task(self, loaded: Loaded, teacher: Loaded | None, data: Any, generic: Any, cfg: PruneConfig,
                  progress: Progress | None) -> StepTask:
        raise NotImplementedError

    def finish(self, loaded: Loaded, data: Any, cfg: PruneConfig, plan: dict, report: dict) -> None:
        """Task-specific meta, plan and report fields of a finished run."""


_TASKS = {  # model task -> "module:class" in this package, imported on first use
    "image-classification": "images:ImageTask",
    "causal-lm": "llm:LMTask",
}


def task_for(name: str) -> CompressTask:
    return task_object(_TASKS, name, __package__, "compress")
