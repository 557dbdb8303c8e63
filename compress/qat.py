"""Quantization-aware recovery: a language model's recovery trains through the 4-bit grid its
.onnx will be written on, and ends on that grid.

Why: recovery moves every weight a little. Quantizing afterwards throws most of that away and,
where pruning removed input channels (an MLP's down projection), regroups weights of different
scales into one block, so the int4 artifact lost 42% perplexity against its own fp32 eager
model (SmolLM2-135M keep 0.85, docs/int4.md). Training with the grid in the forward pass lets
the rest of the model (norms, the weights that do move) compensate for the rounding.

The grid is the .onnx exporter's ``minmax`` scheme (``export.int4_onnx.quantize_blocks``): per
block of ``group`` input weights, ``lo + q * (hi - lo) / 15`` with q in 0..15. It is a fixed
point of itself (a snapped block's min and max are its own lo and hi), so the exporter writes
exactly the weights the recovery ended on. The .pte's torchao 8da4w grid is symmetric and
re-rounds them (docs/int4.md). Gradients pass the rounding unchanged (straight-through).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

LEVELS = 15  # 4 bits


def minmax_grid(w: torch.Tensor, group: int) -> torch.Tensor:
    """``w`` (out, in) rounded to the 4-bit min-max grid of blocks of ``group`` along ``in``."""
    n, k = w.shape
    x = w.reshape(n, k // group, group)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = (hi - lo) / LEVELS
    q = torch.round((x - lo) / scale.clamp_min(torch.finfo(w.dtype).tiny)).clamp(0, LEVELS)
    return (lo + q * scale).reshape(n, k)


class _OnGrid(nn.Module):
    """A weight parametrization: the forward pass sees the grid value, the gradient reaches the
    latent weight as if the rounding were not there."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (minmax_grid(w, self.group) - w).detach()


def quantized_linears(model: nn.Module, group: int) -> list[nn.Linear]:
    """The Linears the int4 export quantizes: every one whose in-features hold whole groups,
    except the output head (tied to the embedding table, written as 8-bit)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) and m is not head and m.in_features % group == 0]


@contextlib.contextmanager
def on_grid(model: nn.Module, group: int) -> Iterator[list[nn.Linear]]:
    """Inside: the quantized Linears compute with their grid values (training updates the latent
    weights). On exit every one of them is left holding its grid value, also after an error
    (a half-parametrized model must never leave this function)."""
    from torch.nn.utils import parametrize

    linears = quantized_linears(model, group)
    for m in linears:
        parametrize.register_parametrization(m, "weight", _OnGrid(group))
    try:
        yield linears
    finally:
        for m in linears:
            # the latent weight back, then its grid value written in place (the parametrization's own
            # output, w + (grid - w), can be an ulp off the grid)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            with torch.no_grad():
                m.weight.copy_(minmax_grid(m.weight, group))


def off_grid(model: nn.Module, group: int) -> float:
    """The largest distance of a quantized weight from its grid, in units of its block's step
    (about 1e-6 after ``on_grid``, float rounding; up to 0.5 for weights never snapped)."""
    worst = 0.0
    with torch.no_grad():
        for m in quantized_linears(model, group):
            w = m.weight
            x = w.reshape(w.shape[0], -1, group)
            step = ((x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / LEVELS).clamp_min(1e-12)
            dist = ((w - minmax_grid(w, group)).reshape(x.shape).abs() / step).max()
            worst = max(worst, float(dist))
    return worst
