"""A fixed-size KV cache around a stock transformers causal LM, for export.

``CachedLM(model, max_len, mode)`` has one forward for prefill and decode:

    logits = forward(input_ids (1, T), cache_position (T,))   # T >= 1 new tokens

* ``mode="buffers"`` (ExecuTorch): the cache is one mutable buffer pair per
  layer, updated in place; the .pte keeps it between calls, as
  ExecuTorch's own LLM exports do.
* ``mode="io"`` (ONNX): the cache goes in and out as tensors
  (``forward(ids, pos, [k_0, v_0, ...]) -> (logits, k_0, v_0, ...)``); the
  caller feeds each step's outputs back in (a decode loop over a fixed-size
  cache: the ONNX graph has no state).
* ``mode="state"`` (Core ML): buffers as in ``"buffers"`` (they become the
  model's Core ML states), but written with ``index_put_`` over explicit
  (batch, head, position) indices: coremltools has no ``index_copy`` and
  turns this form into one ``scatter_nd`` per cache.

Why our own wrapper and not transformers' TorchExportableModuleForDecoderOnlyLM:
its StaticCache sizes every layer from the config, but a pruned model may
keep a different number of KV heads per layer. Here each layer's cache takes
its real width from the adapter, so per-layer widths export too (no
``--uniform`` needed). Positions come from ``cache_position``, never from
Python state, so one exported program serves any position.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def layer_kv_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) of every layer, from the module weights."""
    from pocketsize.models.hf_causal_lm import HFCausalLMAdapter

    ad = HFCausalLMAdapter()
    return [(s["kv_heads"], s["head_dim"]) for s in (ad.real_shape(b) for b in ad.blocks(model))]


def max_positions(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 0)


def _scatter_index(pos: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(batch, head, position) indices, each (1, heads, T), of new states (1, heads, T, d).

    coremltools maps index_put only when every index is a tensor of one shape
    (a ``:`` slice becomes a one-position write), so the batch and head indices
    are spelled out; the batch index is ``pos * 0`` because an int64 ``zeros``
    reaches coremltools as a float constant."""
    heads, t = states.shape[1], states.shape[2]
    p = pos.view(1, 1, t).expand(1, heads, t)
    h = torch.arange(heads).view(1, heads, 1).expand(1, heads, t)
    return p * 0, h, p


def _make_cache(model: nn.Module, max_len: int) -> Any:
    from transformers.cache_utils import Cache, StaticLayer

    class _Layer(StaticLayer):
        """A StaticLayer whose write position is set from outside (cache_position)
        and whose update is in place (buffers, state) or out of place (io)."""

        functional = False
        scatter = False  # mode state: index_put_ (Core ML scatter_nd) instead of index_copy_

        write_pos: torch.Tensor  # the new tokens' cache_position, set by CachedLM.forward

        def update(self, key_states, value_states, *args, **kwargs):
            pos = self.write_pos  # one tensor for every layer: no per-layer arange/add in the graph
            if self.scatter:
                idx = _scatter_index(pos, key_states)
                self.keys.index_put_(idx, key_states)
                self.values.index_put_(idx, value_states)
            elif self.functional:
                self.keys = self.keys.index_copy(2, pos, key_states)
                self.values = self.values.index_copy(2, pos, value_states)
            else:
                self.keys.index_copy_(2, pos, key_states)
                self.values.index_copy_(2, pos, value_states)
            return self.keys, self.values

    layers = []
    dtype = next(model.parameters()).dtype
    for kv, d in layer_kv_shapes(model):
        layer = _Layer(max_cache_len=max_len)
        layer.batch_size, layer.num_heads, layer.k_head_dim, layer.v_head_dim = 1, kv, d, d
        layer.device = torch.device("cpu")
        layer.keys = torch.zeros(1, kv, max_len, d, dtype=dtype)
        layer.values = torch.zeros(1, kv, max_len, d, dtype=dtype)
        layer.is_initialized = True
        layers.append(layer)
    return Cache(layers=layers)


class CachedLM(nn.Module):
    """forward(input_ids, cache_position[, [k_0, v_0, ...]]) -> logits[, k_0, v_0, ...]."""

    def __init__(self, model: nn.Module, max_len: int, mode: str = "buffers"):
        super().__init__()
        if mode not in ("buffers", "io", "state"):
            raise ValueError(f"mode {mode!r}: use 'buffers', 'io' or 'state'")
        self.model = model.eval()
        self.max_len = int(max_len)
        self.mode = mode
        self.cache = _make_cache(model, self.max_len)
        for i, layer in enumerate(self.cache.layers):
            layer.functional = mode == "io"
            layer.scatter = mode == "state"
            if mode != "io":  # registered so torch.export sees them as mutable state
                self.register_buffer(f"k_cache_{i}", layer.keys, persistent=False)
                self.register_buffer(f"v_cache_{i}", layer.values, persistent=False)
        self.eval()  # a wrapper left in training mode makes exporters warn (the model itself is eval)

    @property
    def num_layers(self) -> int:
        return len(self.cache.layers)

    def empty_cache(self) -> list[torch.Tensor]:
        """Zeroed cache tensors in forward's order (k_0, v_0, k_1, ...) for mode io."""
        return [torch.zeros_like(t) for layer in self.cache.layers for t in (layer.keys, layer.values)]

    def reset(self) -> None:
        """Zero the in-place cache (modes buffers and state; eager use only)."""
        for buf in self.buffers():
            buf.zero_()

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor, kv: list[torch.Tensor] | None = None):
        for i, layer in enumerate(self.cache.layers):
            if self.mode == "io":
                layer.keys, layer.values = kv[2 * i], kv[2 * i + 1]
            else:  # the module's buffers, not the tensors seen at init: export swaps in its own
                layer.keys, layer.values = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
        for layer in self.cache.layers:
            layer.cumulative_length = cache_position[0]
            layer.write_pos = cache_position
        out = self.model(input_ids=input_ids, position_ids=cache_position.unsqueeze(0), cache=self.cache,
                         use_cache=True)
        if self.mode != "io":
            return out.logits
        return (out.logits, *[t for layer in self.cache.layers for t in (layer.keys, layer.values)])
