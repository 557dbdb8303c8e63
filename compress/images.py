"""The image-classification task of the compress flow: labelled images, a
head fitted for the user's classes, held-out accuracy, recovery by
cross-entropy plus distillation, and a head re-fit right after every cut."""

from __future__ import annotations

import torch

from pocketsize.data import ImageData, load_image_data
from pocketsize.loading import Loaded

from . import train
from .config import PruneConfig
from .steps import Progress, StepTask, load_generic, resolve_device
from .tasks import CompressTask


def personalize(loaded: Loaded, data: ImageData, cfg: PruneConfig, progress: Progress | None = None) -> dict:
    """Give the model a head for the user's classes unless it already has one."""
    ad = loaded.adapter
    labels = data.labels
    if ad.num_classes(loaded.model) == len(labels) and loaded.meta.get("labels") == labels:
        return {"head": "kept"}
    info = train.fit_head(loaded, data.train, data.val, labels, epochs=cfg.probe_epochs, seed=cfg.seed)
    info["head"] = "linear probe"
    return info


def finetune(loaded: Loaded, data: ImageData, cfg: PruneConfig, progress: Progress | None = None) -> None:
    """``finetune_steps`` of the recovery recipe on the unpruned model (probe head and backbone)."""
    train.recover(loaded, None, data.train, cfg.finetune_steps, cfg.lr, cfg.head_lr, cfg.batch_size,
                  cfg.seed, progress=progress, stage="fine-tune")


class ImageTask(CompressTask):
    name = "image-classification"
    metric = "accuracy"

    def check(self, loaded, data, cfg):
        if cfg.lm.general_text is not None:
            from pocketsize.errors import BadInput

            raise BadInput("--lm-general-text applies to language models only; leave it out for an image model")

    def load_data(self, loaded, data, generic, cfg, progress):
        pp = loaded.meta.get("preprocessing") or loaded.adapter.preprocessing(loaded.model)
        if cfg.image_size:
            s = cfg.image_size
            pp = {**pp, "input_size": [pp["input_size"][0], s, s]}
        loaded.meta["preprocessing"] = pp
        if not isinstance(data, ImageData):
            data = load_image_data(data, pp, seed=cfg.seed, progress=progress is not None)
        if isinstance(generic, str):
            generic = load_generic(load_image_data, generic, pp, seed=cfg.seed)
        return data, generic

    def enter(self, loaded, cfg):
        loaded.model.to(resolve_device(cfg.device))

    def release(self, loaded, model):
        model.to("cpu")  # results (and the caller's model) always come back on the CPU

    def personalize(self, loaded, data, cfg, progress):
        fit = personalize(loaded, data, cfg, progress)
        loaded.refresh_meta()
        return fit

    def finetune(self, loaded, data, cfg, progress):
        finetune(loaded, data, cfg, progress)

    def evaluate(self, loaded, split):
        return train.accuracy(loaded, split)

    def macs_input(self, data):
        return data.test.normalized(0, 1)

    def step_task(self, loaded, teacher, data, generic, cfg, progress):
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

        return StepTask(
            calib=calib, validate=lambda m: train.accuracy(m, data.val),
            harm=lambda current, pruned: current - pruned, harm_name="drop", tolerance=cfg.tolerance,
            recover=lambda m, steps, seed, stage: train.recover(m, teacher, data.train, steps, cfg.lr, cfg.head_lr,
                                                                cfg.batch_size, seed, progress=progress, stage=stage,
                                                                loss=cfg.recovery_loss),
            refit=refit if cfg.refit_head else None)
