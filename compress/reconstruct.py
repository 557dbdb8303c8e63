"""Output reconstruction at the cut (``PruneConfig.reconstruct``): the kept inputs of each output
projection take over, by least squares on the user's calibration data, what the removed heads and
MLP channels contributed.

A cut drops the removed units' share of ``W x`` from every token: with ``X`` the projection's inputs
on the calibration tokens (``T x in``), ``G = X^T X``, kept inputs ``K`` and removed ``R``, the kept
columns that best reproduce the unpruned output are

    W'_K = W_K + W_R G_RK (G_KK + lambda I)^-1

(a ridge ``lambda`` relative to G_KK's mean diagonal keeps the solve stable when the kept inputs
are nearly collinear). A projection with a bias gets a constant input appended, so its bias absorbs
the removed units' mean. The statistics come from the user's own calibration sample of the step,
so the correction is personal like the plan. One extra forward pass per pruning step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pocketsize.loading import Loaded
from pocketsize.models.base import head_index

from .plan import Plan

RIDGE = 1e-2


@dataclass
class Grams:
    """Per block: ``X^T X`` of the output projection's inputs (with a trailing constant column when
    the projection has a bias), float64 on the CPU, and the number of tokens summed."""

    attn: list[torch.Tensor]
    mlp: list[torch.Tensor]
    tokens: int


def _augmented(x: torch.Tensor, bias: bool) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1]).float()
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1) if bias else x


@torch.no_grad()
def collect_grams(loaded: Loaded, x: torch.Tensor, batch_size: int = 16) -> Grams:
    """One pass of ``x`` (the step's calibration sample) through the model, summing every output
    projection's input Gram over all tokens."""
    model, ad = loaded.model, loaded.adapter
    dev = next(model.parameters()).device
    blocks = ad.blocks(model)
    attn: list = [0.0] * len(blocks)
    mlp: list = [0.0] * len(blocks)
    seen = {"tokens": 0}
    hooks = []
    for i, blk in enumerate(blocks):
        for store, lin in ((attn, ad.head_out(blk)), (mlp, ad.mlp_out(blk))):
            def hook(mod, args, store=store, i=i, bias=lin.bias is not None):
                a = _augmented(args[0], bias)
                store[i] = store[i] + (a.T @ a).double().cpu()  # fp32 product (fast), summed in fp64
                if store is mlp and i == 0:
                    seen["tokens"] += a.shape[0]
            hooks.append(lin.register_forward_pre_hook(hook))
    try:
        model.eval()
        for s in range(0, x.shape[0], batch_size):
            ad.logits(model, x[s:s + batch_size].to(dev))
    finally:
        for h in hooks:
            h.remove()
    return Grams(attn, mlp, seen["tokens"])


@torch.no_grad()
def refit_columns(lin: nn.Linear, gram: torch.Tensor, keep: torch.Tensor, ridge: float = RIDGE) -> None:
    """Rewrite ``lin``'s kept input columns (and bias) so that, on the tokens behind ``gram``, the
    kept inputs alone reproduce the full output as closely as least squares allows. The removed
    columns are left as they are (the cut drops them next)."""
    cols = keep  # the weight's kept columns; ``keep`` gains the constant input's below
    bias = lin.bias is not None
    w = lin.weight.double().cpu()
    if bias:
        keep = torch.cat([keep, torch.tensor([w.shape[1]])])
        w = torch.cat([w, lin.bias.double().cpu()[:, None]], 1)  # the constant input's column
    drop = torch.ones(w.shape[1], dtype=torch.bool)
    drop[keep] = False
    if not drop.any():
        return
    g_kk = gram[keep][:, keep]
    g_rk = gram[drop][:, keep]
    lam = ridge * g_kk.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(keep), dtype=g_kk.dtype)
    delta = torch.linalg.solve(g_kk + lam * eye, (w[:, drop] @ g_rk).T).T  # W_R G_RK (G_KK + l I)^-1
    new = w[:, keep] + delta
    dev, dt = lin.weight.device, lin.weight.dtype
    lin.weight[:, cols] = new[:, :len(cols)].to(dev, dt)
    if bias:
        lin.bias.copy_(new[:, -1].to(dev, dt))


def compensate(loaded: Loaded, plan: Plan, grams: Grams, ridge: float = RIDGE) -> None:
    """Before ``apply_plan(loaded, plan)``: refit the output projections of every kept block
    the plan narrows, from the Grams of the same (uncut) model."""
    ad = loaded.adapter
    for i, blk in enumerate(ad.blocks(loaded.model)):
        if i not in plan.keep_blocks:
            continue
        shape = ad.block_shape(blk)
        if i in plan.heads and len(plan.heads[i]) != shape.heads:
            refit_columns(ad.head_out(blk), grams.attn[i], head_index(sorted(plan.heads[i]), shape.head_dim), ridge)
        if i in plan.channels and len(plan.channels[i]) != shape.mlp_hidden:
            keep = torch.as_tensor(sorted(plan.channels[i]), dtype=torch.long)
            refit_columns(ad.mlp_out(blk), grams.mlp[i], keep, ridge)
