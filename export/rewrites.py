"""Express LayerNorm, attention and mean in ops the XNNPACK delegate takes.

XNNPACK (ExecuTorch 1.5) has no LayerNorm kernel and rejects the mask/NaN
guards that ``scaled_dot_product_attention`` decomposes into (any, eq, where,
logical_not, full_like). Left alone they run on portable kernels and split a
ViT into a dozen delegate islands. Written as mean-over-4D (global average
pooling), sub, mul, rsqrt and bmm, every compute op of a ViT is delegated.

The rewrite is a function swap inside a context manager, valid for any model
that calls ``torch.nn.functional`` (timm and transformers both do); eager
results are unchanged to ~1e-7 and parity is checked against the untouched
model anyway. Not thread-safe: export runs one model at a time.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

_ORIG_SDPA = F.scaled_dot_product_attention
_ORIG_LN = F.layer_norm
_ORIG_MEAN = torch.Tensor.mean
_ORIG_TORCH_MEAN = torch.mean


def _mean(x, dim=None, keepdim=False, *, dtype=None):
    """Any mean over given dims as a 4D (1, kept, reduced, 1) mean over (2, 3):
    the only mean XNNPACK takes (e.g. Dinov2's pooling of patch tokens)."""
    if dim is None or dtype is not None or not isinstance(x, torch.Tensor) or x.dim() == 0:
        return _ORIG_MEAN(x, dim, keepdim, dtype=dtype) if dim is not None else _ORIG_MEAN(x, dtype=dtype)
    dims = sorted({d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])})
    if x.dim() == 4 and dims == [2, 3] and keepdim:
        return _ORIG_MEAN(x, dims, True)
    kept = [d for d in range(x.dim()) if d not in dims]
    p = math.prod(int(x.shape[d]) for d in kept)
    r = math.prod(int(x.shape[d]) for d in dims)
    m = _ORIG_MEAN(x.permute(*kept, *dims).reshape(1, p, r, 1), [2, 3], True)
    shape = [1 if d in dims else int(x.shape[d]) for d in range(x.dim())] if keepdim else [int(x.shape[d]) for d in kept]
    return m.reshape(shape)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    if len(normalized_shape) != 1 or x.dim() < 2:
        return _ORIG_LN(x, normalized_shape, weight, bias, eps)
    shp = x.shape
    # mean.dim is delegated only as 4D global average pooling over dims (2, 3)
    x4 = x.reshape(-1, 1, shp[-1], 1)
    d = x4 - x4.mean((2, 3), keepdim=True)
    var = (d * d).mean((2, 3), keepdim=True)
    y = (d * torch.rsqrt(var + eps)).reshape(shp)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    lead, L, S = q.shape[:-2], q.shape[-2], k.shape[-2]
    # 3D bmm instead of 4D matmul: avoids expand_copy nodes XNNPACK does not take
    q3 = (q * s).reshape(-1, L, q.shape[-1])
    k3 = k.reshape(-1, S, k.shape[-1])
    v3 = v.reshape(-1, S, v.shape[-1])
    a = torch.bmm(q3, k3.transpose(1, 2)).reshape(*lead, L, S)
    if is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(S - L)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            # additive form: the mask depends on shapes only, so constant
            # propagation folds it and the add stays on XNNPACK (a bool
            # masked_fill becomes where/scalar_tensor on portable kernels)
            attn_mask = torch.zeros(attn_mask.shape, dtype=a.dtype, device=a.device).masked_fill(
                ~attn_mask, float("-inf"))
        a = a + attn_mask
    p = a.softmax(-1).reshape(-1, L, S)
    return torch.bmm(p, v3).reshape(*lead, L, v.shape[-1])


@contextlib.contextmanager
def xnnpack_friendly(enabled: bool = True) -> Iterator[None]:
    """Within the block, F.layer_norm, F.scaled_dot_product_attention and
    Tensor.mean / torch.mean use the delegate-friendly forms above."""
    if not enabled:
        yield
        return
    F.layer_norm, F.scaled_dot_product_attention = _layer_norm, _sdpa
    torch.Tensor.mean, torch.mean = _mean, _mean
    try:
        yield
    finally:
        F.layer_norm, F.scaled_dot_product_attention = _ORIG_LN, _ORIG_SDPA
        torch.Tensor.mean, torch.mean = _ORIG_MEAN, _ORIG_TORCH_MEAN


def _mean_last(x, dim=None, keepdim=False, *, dtype=None):
    """A keepdim mean over the last dim (RMSNorm's) as a 4D (1, rows, width, 1)
    mean over (2, 3), with the row count left symbolic so a dynamic token
    dimension survives (``_mean`` above fixes every dim with int())."""
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    if (dtype is None and isinstance(x, torch.Tensor) and x.dim() >= 2 and keepdim
            and [d % x.dim() for d in dims if d is not None] == [x.dim() - 1] and None not in dims):
        m = _ORIG_MEAN(x.reshape(1, -1, x.shape[-1], 1), [2, 3], True)
        return m.reshape(*x.shape[:-1], 1)
    if dim is None:
        return _ORIG_MEAN(x, dtype=dtype)
    return _ORIG_MEAN(x, dim, keepdim, dtype=dtype)


@contextlib.contextmanager
def lm_xnnpack_friendly(enabled: bool = True) -> Iterator[None]:
    """For causal LMs with a dynamic token count: within the block, RMSNorm's
    last-dim mean uses the delegate-friendly form (the ViT rewrites above
    would pin the token dimension)."""
    if not enabled:
        yield
        return
    torch.Tensor.mean, torch.mean = _mean_last, _mean_last
    try:
        yield
    finally:
        torch.Tensor.mean, torch.mean = _ORIG_MEAN, _ORIG_TORCH_MEAN

