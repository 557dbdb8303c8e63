"""The adapter interface: everything architecture-specific lives behind it.

Pruning algorithms only see *blocks* made of two prunable groups:

* attention heads: ``head_in`` linears whose output rows are grouped by head
  (q/k/v, or timm's fused qkv) and ``head_out`` (the output projection) whose
  input columns are grouped by head;
* MLP channels: ``mlp_in`` linears (fc1, or gate+up) whose output rows are
  channels and ``mlp_out`` (fc2 / down) whose input columns are channels;

plus whole blocks. Adapters implement the few model-family details: where the
blocks are, how the fused qkv is laid out, which attribute holds the head
count, how to rebuild the model from a shape record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


@dataclass
class BlockShape:
    heads: int
    head_dim: int
    mlp_hidden: int
    kv_heads: int | None = None  # GQA: number of key/value heads (LLMs)

    def to_dict(self) -> dict[str, Any]:
        d = {"heads": self.heads, "head_dim": self.head_dim, "mlp_hidden": self.mlp_hidden}
        if self.kv_heads is not None:
            d["kv_heads"] = self.kv_heads
        return d


def select_weight(mod: nn.Module, dim: int, idx: torch.Tensor, bias: bool) -> None:
    """Keep entries ``idx`` of ``mod.weight`` along ``dim`` in place, and of the
    bias too when ``bias`` (the bias follows the output features)."""
    idx = idx.to(mod.weight.device)
    mod.weight = nn.Parameter(mod.weight.data.index_select(dim, idx).clone())
    if bias and mod.bias is not None:
        mod.bias = nn.Parameter(mod.bias.data.index_select(0, idx).clone())


def keep_rows(linear: nn.Linear, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` of ``linear`` in place (weight rows, bias)."""
    select_weight(linear, 0, idx, bias=True)
    linear.out_features = int(idx.numel())


def keep_cols(linear: nn.Linear, idx: torch.Tensor) -> None:
    """Keep input features ``idx`` of ``linear`` in place (weight columns)."""
    select_weight(linear, 1, idx, bias=False)
    linear.in_features = int(idx.numel())


def head_index(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    """Row/column indices covered by the given heads, in order."""
    if len(heads) == 0:
        return torch.zeros(0, dtype=torch.long)
    base = torch.as_tensor(list(heads), dtype=torch.long)[:, None] * head_dim
    return (base + torch.arange(head_dim)[None, :]).reshape(-1)


class Adapter:
    """Base class; subclasses are registered in ``pocketsize.models``."""

    name: str = ""
    task: str = "image-classification"

    # --- discovery -------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def block_shape(self, block: nn.Module) -> BlockShape:
        raise NotImplementedError

    # --- modules that calibration hooks ---------------------------------
    def head_in(self, block: nn.Module) -> list[nn.Linear]:
        """Linears whose output rows are grouped by head (q/k/v or fused qkv)."""
        raise NotImplementedError

    def head_out(self, block: nn.Module) -> nn.Linear:
        """Output projection; its input is the concatenation of head outputs."""
        raise NotImplementedError

    def mlp_in(self, block: nn.Module) -> list[nn.Linear]:
        raise NotImplementedError

    def mlp_out(self, block: nn.Module) -> nn.Linear:
        """fc2 / down projection; its input is the MLP hidden activation."""
        raise NotImplementedError

    def branch_modules(self, block: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Modules whose outputs are exactly what the attention and MLP branches
        add to the residual stream (after any layer scale)."""
        raise NotImplementedError

    def head_weight_view(self, block: nn.Module, lin: nn.Linear, w: torch.Tensor) -> torch.Tensor:
        """``w`` (a ``head_in`` weight or its gradient) viewed so that dim 1
        indexes heads: (groups, heads, rows per head, in). LLM adapters
        override it where K/V have fewer rows per unit than Q (GQA)."""
        s = self.block_shape(block)
        return w.reshape(-1, s.heads, s.head_dim, w.shape[1])

    def unit_costs(self, block: nn.Module) -> tuple[float, float]:
        """Parameters removed with one head and with one MLP channel."""
        s = self.block_shape(block)
        n = lambda lins: sum(l.weight.numel() + (l.bias.numel() if l.bias is not None else 0) for l in lins)  # noqa: E731
        head = (n(self.head_in(block)) + self.head_out(block).weight.numel()) / max(s.heads, 1)
        chan = (n(self.mlp_in(block)) + self.mlp_out(block).weight.numel()) / max(s.mlp_hidden, 1)
        return head, chan

    def embedding_params(self, model: nn.Module) -> list[nn.Parameter]:
        """Input embedding parameters (kept frozen during recovery)."""
        return []

    def layer_scales(self, block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-channel scales applied to the attention / MLP branch outputs (None: none)."""
        return None, None

    # --- structural edits -------------------------------------------------
    def prune_heads(self, block: nn.Module, keep: Sequence[int]) -> None:
        raise NotImplementedError

    def prune_mlp(self, block: nn.Module, keep: Sequence[int]) -> None:
        idx = torch.as_tensor(sorted(keep), dtype=torch.long)
        for lin in self.mlp_in(block):
            keep_rows(lin, idx)
        keep_cols(self.mlp_out(block), idx)

    def keep_blocks(self, model: nn.Module, keep: Sequence[int]) -> None:
        raise NotImplementedError

    # --- running --------------------------------------------------------
    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- serialization --------------------------------------------------
    def describe(self, model: nn.Module) -> dict[str, Any]:
        """JSON record from which ``build`` recreates the architecture."""
        raise NotImplementedError

    def build(self, record: dict[str, Any]) -> nn.Module:
        """Stock-class model with the recorded per-layer shapes (random init)."""
        raise NotImplementedError

    def save_extras(self, loaded: Any, dest: Any) -> None:
        """Files saved next to model.safetensors (e.g. an LLM's tokenizer)."""

    def load_extras(self, loaded: Any, path: Any) -> None:
        """Read back what ``save_extras`` wrote (e.g. set ``loaded.tokenizer``)."""

    def layer_shapes(self, model: nn.Module) -> list[dict[str, Any]]:
        return [self.block_shape(b).to_dict() for b in self.blocks(model)]

    def resize_to(self, model: nn.Module, shapes: list[dict[str, Any]]) -> None:
        """Shrink a freshly built model to recorded per-layer shapes (weights are
        loaded afterwards, so which indices are kept does not matter)."""
        blocks = self.blocks(model)
        if len(shapes) != len(blocks):
            raise ValueError(f"shape record has {len(shapes)} blocks, model has {len(blocks)}")
        for block, s in zip(blocks, shapes):
            self.prune_heads(block, list(range(s["heads"])))
            self.prune_mlp(block, list(range(s["mlp_hidden"])))


class ImageClassifierAdapter(Adapter):
    """Extra hooks for vision classifiers (head fitting, preprocessing)."""

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Pooled features that the classifier head consumes."""
        raise NotImplementedError

    def classifier(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def set_num_classes(self, model: nn.Module, labels: list[str]) -> None:
        raise NotImplementedError

    def num_classes(self, model: nn.Module) -> int:
        raise NotImplementedError

    def preprocessing(self, model: nn.Module) -> dict[str, Any]:
        """{"input_size": [3, H, W], "mean", "std", "interpolation", "crop_pct"}."""
        raise NotImplementedError


@dataclass
class Loaded:
    model: nn.Module
    adapter: Adapter
    meta: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None  # language models: the transformers tokenizer saved with them

    @property
    def task(self) -> str:
        return self.meta.get("task", self.adapter.task)

    def logits_module(self) -> nn.Module:
        """forward(x) -> logits as a plain tensor (what exporters trace)."""
        return _LogitsModule(self.model, self.adapter).eval()

    def refresh_meta(self) -> None:
        """Recompute the parts of meta that follow from the model itself."""
        self.meta["family"] = self.adapter.name
        self.meta["task"] = self.adapter.task
        self.meta["layers"] = self.adapter.layer_shapes(self.model)
        self.meta["architecture"] = self.adapter.describe(self.model)
        self.meta["params"] = sum(p.numel() for p in self.model.parameters())


class _LogitsModule(nn.Module):
    def __init__(self, model: nn.Module, adapter: Adapter):
        super().__init__()
        self.model = model
        self._adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._adapter.logits(self.model, x)
