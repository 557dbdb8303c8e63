"""Fitting the model to the user (head / fine-tune), evaluation and recovery."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from pocketsize.data import Split
from pocketsize.loading import Loaded

from .config import RECOVERY_LOSSES

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def device_of(loaded: Loaded) -> torch.device:
    """Where the model's weights live: data batches (kept on the CPU as uint8)
    move there one batch at a time."""
    return next(loaded.model.parameters()).device


@torch.no_grad()
def predict(loaded: Loaded, split: Split, batch_size: int = 64) -> torch.Tensor:
    """Logits for every sample of ``split``, on the CPU."""
    loaded.model.eval()
    dev = device_of(loaded)
    outs = [loaded.adapter.logits(loaded.model, xb.to(dev)).cpu() for xb, _ in split.batches(batch_size)]
    return torch.cat(outs)


def accuracy(loaded: Loaded, split: Split, batch_size: int = 64) -> float:
    if len(split) == 0:
        return float("nan")
    return (predict(loaded, split, batch_size).argmax(-1) == split.y).float().mean().item()


@torch.no_grad()
def _features(loaded: Loaded, split: Split, batch_size: int = 64) -> torch.Tensor:
    loaded.model.eval()
    dev = device_of(loaded)
    return torch.cat([loaded.adapter.features(loaded.model, xb.to(dev)) for xb, _ in split.batches(batch_size)])


def fit_head(loaded: Loaded, train: Split, val: Split, labels: list[str], epochs: int = 30,
             seed: int = 0) -> dict:
    """Linear probe on frozen features: a new head for the user's classes.

    Full-batch AdamW on cached features with weight decay picked on the
    validation split, so it takes seconds, not an epoch of backbone passes."""
    ad = loaded.adapter
    dev = device_of(loaded)
    new = ad.set_num_classes(loaded.model, labels)
    if new is not None:
        loaded.model = new
    loaded.model.to(dev)  # the new head is built on the CPU
    ftr, fva = _features(loaded, train), _features(loaded, val)
    ytr, yva = train.y.to(dev), val.y.to(dev)
    # one scalar scale, not per-feature: dividing by per-feature std puts huge
    # weights on near-constant features and the head then breaks at the first
    # recovery step (measured: loss 1e-4 -> 1.7 after one AdamW step)
    mu, sd = ftr.mean(0), ftr.std(0).mean() + 1e-6
    best = None
    # explicit L2, strongest first, ties go to the stronger penalty: on separable
    # user data an unregularized probe grows its weights until the loss is ~0,
    # and such a head turns tiny feature changes into huge logit swings (one
    # recovery step then moved logits by 12 and broke the model: measured)
    for wd in (1e-2, 1e-3, 1e-4):
        torch.manual_seed(seed)
        lin = torch.nn.Linear(ftr.shape[1], len(labels)).to(dev)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
        for _ in range(max(epochs, 1) * 10):
            opt.zero_grad()
            (F.cross_entropy(lin((ftr - mu) / sd), ytr) + wd * lin.weight.pow(2).sum()).backward()
            opt.step()
        with torch.no_grad():
            acc = (lin((fva - mu) / sd).argmax(-1) == yva).float().mean().item()
        if best is None or acc > best[0] + 1e-9:
            best = (acc, wd, lin)
    acc, wd, lin = best
    # fold the feature standardization into the head so the model stays stock
    head = ad.classifier(loaded.model)
    with torch.no_grad():
        head.weight.copy_(lin.weight / sd)
        head.bias.copy_(lin.bias - (lin.weight / sd) @ mu)
    loaded.meta["labels"] = list(labels)
    return {"val_accuracy": acc, "weight_decay": wd}


def _param_groups(loaded: Loaded, lr: float, head_lr: float):
    """Backbone and head groups. Embeddings stay frozen: pruning never touches
    them, and on inputs with large constant regions (a black background) an
    Adam sign step on the patch projection shifts every token coherently
    (measured: one step at lr 2e-5 took the loss from 1e-4 to 1.4)."""
    head = getattr(loaded.adapter, "classifier", None)
    head_ids = {id(p) for p in head(loaded.model).parameters()} if head else set()
    frozen = {id(p) for p in loaded.adapter.embedding_params(loaded.model)}
    body = [p for p in loaded.model.parameters() if id(p) not in head_ids and id(p) not in frozen and p.requires_grad]
    heads = [p for p in loaded.model.parameters() if id(p) in head_ids]
    groups = [{"params": body, "lr": lr}]
    if heads:
        groups.append({"params": heads, "lr": head_lr})
    return groups


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on softened logits, x T^2 (Hinton); leading dims
    are flattened so classifiers (B, C) and LMs (B, T, V) share it."""
    s = student.reshape(-1, student.shape[-1]) / temperature
    t = teacher.reshape(-1, teacher.shape[-1]) / temperature
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True) * temperature ** 2


def _optimizer(loaded: Loaded, lr: float, head_lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_param_groups(loaded, lr, head_lr), weight_decay=0.01)


def run_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Callable[[], Iterable[Any]],
              steps: int, loss_fn: Callable[[Any], torch.Tensor], warmup: int = 0,
              progress: Progress | None = None, stage: str = "recovery") -> list[float]:
    """The one optimisation loop of fine-tuning and recovery, for images and
    LMs alike: epochs over ``batches()`` until ``steps`` steps.

    Cosine decay keeps late steps from undoing what early ones fixed. Adam's
    first updates are full-size sign steps even for tiny gradients, and on an
    already-fitted ViT they caused a loss spike (measured), so the rate ramps
    up over the first ``warmup`` steps (0: no ramp)."""
    base = [grp["lr"] for grp in opt.param_groups]
    losses: list[float] = []
    model.train()
    done = 0
    while done < steps:
        for batch in batches():
            ramp = min(1.0, (done + 1) / warmup) if warmup else 1.0
            scale = ramp * 0.5 * (1 + math.cos(math.pi * done / steps))
            for grp, b in zip(opt.param_groups, base):
                grp["lr"] = b * scale
            loss = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            done += 1
            if progress:
                progress(stage, done, steps)
            if done >= steps:
                break
    model.eval()
    return losses


def _mixed(xb: torch.Tensor, yb: torch.Tensor, classes: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Function-matching inputs: each image randomly flipped, then mixed with another of the
    batch (mixup, weight ~ U(0, 1)); the soft label mixes the two labels the same way."""
    n = xb.shape[0]
    flip = (torch.rand(n, generator=g) < 0.5).to(xb.device)
    x = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    lam = torch.rand(n, generator=g).to(xb.device)
    perm = torch.randperm(n, generator=g).to(xb.device)
    onehot = F.one_hot(yb, classes).float()
    mix_x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[perm]
    return mix_x, lam[:, None] * onehot + (1 - lam[:, None]) * onehot[perm]


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance of pooled features in units of the teacher's spread across the batch
    (one scalar: per-feature scaling would weigh near-constant features most)."""
    sd = teacher.std(0).mean().clamp_min(1e-6)
    return F.mse_loss(student, teacher) / sd ** 2


def recover(student: Loaded, teacher: Loaded | None, train: Split, steps: int, lr: float, head_lr: float,
            batch_size: int, seed: int, temperature: float = 2.0, alpha: float = 0.5,
            progress: Progress | None = None, stage: str = "recovery", loss: str = "logits") -> list[float]:
    """Short recovery on the user's images.

    ``logits``: cross-entropy on the user's labels, plus (when a teacher is given)
    KL distillation from the unpruned personalized model on the same images.
    ``match`` (function matching): every step sees new inputs, flipped and
    mixed pairs of the user's images; the loss is the mixed labels'
    cross-entropy plus (with a teacher) KL on the logits *and* the distance
    of the pooled features to the teacher's. On a few hundred labelled images
    the head re-fit already fits the labels, so ``logits`` has little left to
    teach (docs/method.md); the features still differ from the teacher's on
    every input, mixed or not."""
    if steps <= 0:
        return []
    g = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.model.eval()
    dev = device_of(student)
    ad = student.adapter
    classes = ad.num_classes(student.model)

    def logits_loss(batch) -> torch.Tensor:
        xb, yb = batch[0].to(dev), batch[1].to(dev)
        logits = ad.logits(student.model, xb)
        out = F.cross_entropy(logits, yb)
        if teacher is not None:
            with torch.no_grad():
                t = teacher.adapter.logits(teacher.model, xb)
            out = (1 - alpha) * out + alpha * distill_kl(logits, t, temperature)
        return out

    def match_loss(batch) -> torch.Tensor:
        xb, soft = _mixed(batch[0].to(dev), batch[1].to(dev), classes, g)
        feats = ad.features(student.model, xb)
        logits = ad.classifier(student.model)(feats)
        out = F.cross_entropy(logits, soft)
        if teacher is not None:
            with torch.no_grad():
                tf = teacher.adapter.features(teacher.model, xb)
                tl = teacher.adapter.classifier(teacher.model)(tf)
            out = (1 - alpha) * out + alpha * (distill_kl(logits, tl, temperature) + feature_mse(feats, tf))
        return out

    if loss not in RECOVERY_LOSSES:
        raise ValueError(f"recovery loss {loss!r} is not one of {RECOVERY_LOSSES}")
    return run_steps(student.model, _optimizer(student, lr, head_lr),
                     lambda: train.batches(batch_size, shuffle=True, generator=g), steps,
                     match_loss if loss == "match" else logits_loss,
                     warmup=max(1, steps // 5), progress=progress, stage=stage)
