"""transformers causal LMs: Llama family (SmolLM2, Mistral), Qwen2, Qwen3, GPT-2.

Units as the pruning algorithms see them (``block_shape``):

* a "head" is one **key/value group**: its K and V head plus the ``n_rep``
  query heads that share them (GQA), and the matching ``o_proj`` columns.
  Pruning a group keeps ``num_key_value_groups`` constant, so the stock
  attention code runs unchanged; ``head_dim`` of the block shape is the
  group's width in ``o_proj`` (``n_rep * head_dim``). Qwen3's q_norm/k_norm
  act per head over ``head_dim`` and are shared by all heads: untouched.
* MLP channels: gate+up rows and down columns (GPT-2: c_fc / c_proj).
* whole blocks (layer indices and ``config.layer_types`` are renumbered).

GPT-2 stores its projections as ``Conv1D`` (weight is (in, out), the
transpose of nn.Linear). Structural edits here handle both; while the pruning
pipeline scores and recovers, ``to_linear`` swaps them for nn.Linear so the
shared calibration code sees nn.Linear weights, and ``to_stock`` swaps back.

``layer_shapes`` records real per-layer widths (``heads`` = query heads,
``kv_heads``, ``head_dim``, ``mlp_hidden``). When every layer has the same
widths the config is updated (num_attention_heads, num_key_value_heads,
head_dim, intermediate_size, num_hidden_layers) and the saved directory also
loads with plain ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from pocketsize.errors import BadInput

from .base import Adapter, BlockShape, head_index, keep_cols, keep_rows, select_weight

# architectures -> layout ("llama": q/k/v/o + gate/up/down; "gpt2": c_attn/c_proj + c_fc/c_proj)
_CLASSES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "GPT2LMHeadModel": "gpt2",
}
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}


def supported() -> str:
    return "Llama (SmolLM2), Mistral, Qwen2, Qwen3 and GPT-2 causal LMs"


# --- Linear / Conv1D helpers ------------------------------------------------------

def _is_conv1d(mod: nn.Module) -> bool:
    return type(mod).__name__ == "Conv1D"


def out_features(mod: nn.Module) -> int:
    return int(mod.weight.shape[1] if _is_conv1d(mod) else mod.weight.shape[0])


def keep_out(mod: nn.Module, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` (nn.Linear rows, Conv1D columns) and bias."""
    if not _is_conv1d(mod):
        return keep_rows(mod, idx)
    select_weight(mod, 1, idx, bias=True)  # Conv1D weight is (in, out)
    mod.nf = int(idx.numel())


def keep_in(mod: nn.Module, idx: torch.Tensor) -> None:
    """Keep input features ``idx`` (nn.Linear columns, Conv1D rows)."""
    if not _is_conv1d(mod):
        return keep_cols(mod, idx)
    select_weight(mod, 0, idx, bias=False)
    if hasattr(mod, "nx"):
        mod.nx = int(idx.numel())


def _swap(model: nn.Module, to_linear: bool) -> None:
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if to_linear and _is_conv1d(child):
                lin = nn.Linear(child.weight.shape[0], child.weight.shape[1], bias=child.bias is not None)
                lin.weight = nn.Parameter(child.weight.data.t().contiguous())
                if child.bias is not None:
                    lin.bias = nn.Parameter(child.bias.data.clone())
                lin._pocketsize_conv1d = True
                setattr(parent, name, lin)
            elif not to_linear and getattr(child, "_pocketsize_conv1d", False):
                conv = Conv1D(child.out_features, child.in_features)
                conv.weight = nn.Parameter(child.weight.data.t().contiguous())
                conv.bias = nn.Parameter(child.bias.data.clone()) if child.bias is not None else None
                setattr(parent, name, conv)


class HFCausalLMAdapter(Adapter):
    name = "hf-causal-lm"
    task = "causal-lm"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__name__ in _CLASSES and type(model).__module__.startswith("transformers.")

    @staticmethod
    def layout(model_or_block: nn.Module) -> str:
        name = type(model_or_block).__name__
        if name in _CLASSES:
            return _CLASSES[name]
        return "gpt2" if hasattr(model_or_block, "attn") and hasattr(model_or_block.attn, "c_attn") else "llama"

    # --- discovery -----------------------------------------------------------
    def layer_list(self, model) -> nn.ModuleList:
        return model.transformer.h if self.layout(model) == "gpt2" else model.model.layers

    def blocks(self, model):
        return list(self.layer_list(model))

    def real_shape(self, block) -> dict[str, int]:
        """Query heads, KV heads, head_dim and MLP width of one block."""
        if self.layout(block) == "gpt2":
            a = block.attn
            return {"heads": int(a.num_heads), "kv_heads": int(a.num_heads), "head_dim": int(a.head_dim),
                    "mlp_hidden": out_features(block.mlp.c_fc)}
        a = block.self_attn
        d = int(a.head_dim)
        return {"heads": out_features(a.q_proj) // d, "kv_heads": out_features(a.k_proj) // d, "head_dim": d,
                "mlp_hidden": int(block.mlp.down_proj.weight.shape[1])}

    def block_shape(self, block) -> BlockShape:
        s = self.real_shape(block)
        groups, rep = s["kv_heads"], s["heads"] // max(s["kv_heads"], 1)
        return BlockShape(heads=groups, head_dim=rep * s["head_dim"], mlp_hidden=s["mlp_hidden"], kv_heads=groups)

    def head_in(self, block):
        if self.layout(block) == "gpt2":
            return [block.attn.c_attn]
        a = block.self_attn
        return [a.q_proj, a.k_proj, a.v_proj]

    def head_out(self, block):
        return block.attn.c_proj if self.layout(block) == "gpt2" else block.self_attn.o_proj

    def mlp_in(self, block):
        if self.layout(block) == "gpt2":
            return [block.mlp.c_fc]
        return [block.mlp.gate_proj, block.mlp.up_proj]

    def mlp_out(self, block):
        return block.mlp.c_proj if self.layout(block) == "gpt2" else block.mlp.down_proj

    def branch_modules(self, block):
        # dropouts are identity in eval: the branch outputs are what enters the residual
        if self.layout(block) == "gpt2":
            return block.attn, block.mlp
        return block.self_attn, block.mlp

    def head_weight_view(self, block, lin, w: torch.Tensor) -> torch.Tensor:
        """``w`` (shaped like ``lin.weight`` as nn.Linear) with dim 1 indexing KV groups."""
        groups = self.block_shape(block).heads
        if self.layout(block) == "gpt2":  # fused c_attn: rows [3, H, D]
            return w.reshape(3, groups, -1, w.shape[-1])
        return w.reshape(1, groups, -1, w.shape[-1])  # q: n_rep*D rows per group, k/v: D rows

    # --- structural edits ------------------------------------------------------
    def prune_heads(self, block, keep: Sequence[int]) -> None:
        """Keep the KV groups ``keep`` (GPT-2: plain heads)."""
        keep = sorted(keep)
        if not keep:
            raise BadInput("the plan removes every attention head of a layer; use a larger --ratio "
                           "(or remove the whole block)")
        s = self.real_shape(block)
        d = s["head_dim"]
        if self.layout(block) == "gpt2":
            a, h = block.attn, s["heads"]
            hi = head_index(keep, d)
            keep_out(a.c_attn, torch.cat([hi + k * h * d for k in range(3)]))
            keep_in(a.c_proj, hi)
            a.num_heads = len(keep)
            a.split_size = len(keep) * d
            return
        a = block.self_attn
        rep = s["heads"] // s["kv_heads"]
        qi, kvi = head_index(keep, rep * d), head_index(keep, d)
        keep_out(a.q_proj, qi)
        keep_out(a.k_proj, kvi)
        keep_out(a.v_proj, kvi)
        keep_in(a.o_proj, qi)
        for attr, val in (("num_heads", len(keep) * rep), ("num_key_value_heads", len(keep))):
            if hasattr(a, attr):
                setattr(a, attr, val)

    def prune_mlp(self, block, keep: Sequence[int]) -> None:
        idx = torch.as_tensor(sorted(keep), dtype=torch.long)
        for mod in self.mlp_in(block):
            keep_out(mod, idx)
        keep_in(self.mlp_out(block), idx)

    def keep_blocks(self, model, keep: Sequence[int]) -> None:
        keep = sorted(keep)
        if (self.layout(model) == "gpt2" and getattr(model.config, "scale_attn_by_inverse_layer_idx", False)
                and keep != list(range(len(keep)))):
            raise BadInput("this GPT-2 scales attention by the layer index, which removing a block would change; "
                           "use a width-only method (e.g. --method activation)")
        layers = nn.ModuleList([self.layer_list(model)[i] for i in keep])
        if self.layout(model) == "gpt2":
            model.transformer.h = layers
        else:
            model.model.layers = layers
        for j, layer in enumerate(layers):  # KV caches are indexed by layer_idx
            for mod in (layer, getattr(layer, "self_attn", None), getattr(layer, "attn", None)):
                if mod is not None and hasattr(mod, "layer_idx"):
                    mod.layer_idx = j
        cfg = model.config
        if getattr(cfg, "layer_types", None) and len(cfg.layer_types) >= max(keep, default=-1) + 1:
            cfg.layer_types = [cfg.layer_types[i] for i in keep]
        cfg.num_hidden_layers = len(keep)

    # --- running -------------------------------------------------------------------
    def logits(self, model, x: torch.Tensor) -> torch.Tensor:
        # an explicit all-ones mask keeps torch.diff out of exported graphs
        return model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits

    # --- shapes and config --------------------------------------------------------
    def layer_shapes(self, model) -> list[dict[str, Any]]:
        return [self.real_shape(b) for b in self.blocks(model)]

    def resize_to(self, model, shapes: list[dict[str, Any]]) -> None:
        blocks = self.blocks(model)
        if len(shapes) != len(blocks):
            raise ValueError(f"shape record has {len(shapes)} blocks, model has {len(blocks)}")
        for block, s in zip(blocks, shapes):
            now = self.real_shape(block)
            if now["head_dim"] != s["head_dim"] or now["heads"] // now["kv_heads"] != s["heads"] // s["kv_heads"]:
                raise ValueError(f"shape record {s} does not fit the built layer {now}")
            self.prune_heads(block, list(range(s["kv_heads"])))
            self.prune_mlp(block, list(range(s["mlp_hidden"])))

    def is_uniform(self, model) -> bool:
        """True when the config can describe every layer (plain from_pretrained works)."""
        shapes = self.layer_shapes(model)
        if not shapes or any(s != shapes[0] for s in shapes):
            return False
        if self.layout(model) == "gpt2":  # GPT-2 derives head_dim = n_embd / n_head: heads cannot shrink
            return shapes[0]["heads"] == model.config.n_head
        return True

    def sync_config(self, model) -> None:
        """Write the layer widths into ``model.config``: exact when uniform, the
        widest layer otherwise (``build`` then shrinks each layer to its record)."""
        shapes = self.layer_shapes(model)
        cfg = model.config
        cfg.num_hidden_layers = len(shapes)
        if not shapes:
            return
        if self.layout(model) == "gpt2":
            cfg.n_inner = max(s["mlp_hidden"] for s in shapes)
            return
        wide = max(shapes, key=lambda s: (s["kv_heads"], s["heads"]))
        cfg.num_attention_heads = wide["heads"]
        cfg.num_key_value_heads = wide["kv_heads"]
        cfg.head_dim = wide["head_dim"]
        cfg.intermediate_size = max(s["mlp_hidden"] for s in shapes)

    # --- serialization -----------------------------------------------------------
    def describe(self, model) -> dict[str, Any]:
        self.sync_config(model)
        return {"class": type(model).__name__, "config": model.config.to_dict(), "uniform": self.is_uniform(model)}

    def build(self, record: dict[str, Any]) -> nn.Module:
        import transformers

        name = record["class"]
        if name not in _CLASSES:
            raise BadInput(f"unsupported causal LM class {name}; supported: {supported()}")
        cfg = config_from_dict(record["config"])
        shapes = record.get("layers") or []
        if shapes:
            cfg.num_hidden_layers = len(shapes)
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = list(cfg.layer_types)[: len(shapes)]
        model = getattr(transformers, name)(cfg)
        if shapes:
            self.resize_to(model, shapes)
        return model

    def save_extras(self, loaded, dest: Path) -> None:
        """Tokenizer next to the weights; for uniform widths also config.json
        and HF-layout safetensors, so plain ``from_pretrained(dest)`` loads it."""
        model = loaded.model
        self.sync_config(model)
        if self.is_uniform(model):
            model.save_pretrained(dest)  # overwrites model.safetensors with transformers' own layout
        tok = getattr(loaded, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(dest)

    def load_extras(self, loaded, path: Path) -> None:
        if any((Path(path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            from pocketsize.text import load_tokenizer

            loaded.tokenizer = load_tokenizer(path)

    # --- pipeline helpers -------------------------------------------------------
    def to_linear(self, model) -> None:
        """GPT-2: Conv1D -> nn.Linear (same function) for the shared pruning code."""
        _swap(model, to_linear=True)

    def to_stock(self, model) -> None:
        """Undo ``to_linear``: the stock Conv1D modules again."""
        _swap(model, to_linear=False)


def config_from_dict(d: dict[str, Any]):
    import transformers

    d = dict(d)
    model_type = d.pop("model_type", None)
    if model_type not in _BY_MODEL_TYPE:
        raise BadInput(f"model_type {model_type!r} is not supported; supported: {supported()}")
    for k in ("transformers_version", "architectures"):
        d.pop(k, None)
    cfg = transformers.AutoConfig.for_model(model_type, **d)
    return cfg


def load_causal_lm(ident: str, cfg, source: str, **kwargs: Any):
    """A stock transformers causal LM from a save_pretrained dir or hub id."""
    import transformers

    from .base import Loaded

    archs = [a for a in (getattr(cfg, "architectures", None) or []) if a in _CLASSES]
    cls_name = archs[0] if archs else _BY_MODEL_TYPE.get(getattr(cfg, "model_type", None))
    if cls_name is None:
        raise BadInput(f"{source} is a {getattr(cfg, 'model_type', '?')!r} model "
                       f"({', '.join(getattr(cfg, 'architectures', None) or []) or 'no architectures'}); "
                       f"pocketsize supports ViT/DeiT/Dinov2 image models and {supported()}")
    try:
        model = getattr(transformers, cls_name).from_pretrained(ident, dtype=torch.float32)
    except OSError as e:
        raise BadInput(f"{source}: weights could not be read ({' '.join(str(e).split())[:160]}); "
                       "re-save the model with save_pretrained") from None
    adapter = HFCausalLMAdapter()
    if adapter.layout(model) == "llama":  # record head_dim explicitly: pruning may change the head count
        model.config.head_dim = int(adapter.blocks(model)[0].self_attn.head_dim) if adapter.blocks(model) else None
    loaded = Loaded(model.eval(), adapter, {"source": source, "task": adapter.task})
    tok_dir = Path(ident) if Path(ident).exists() else ident
    try:
        from pocketsize.text import load_tokenizer

        loaded.tokenizer = load_tokenizer(tok_dir)
    except BadInput:
        loaded.tokenizer = None  # only needed with text data; the compress task says how to fix it
    loaded.meta["preprocessing"] = lm_io(model)
    return loaded


def lm_io(model) -> dict[str, Any]:
    """What an exporter / app needs to feed the model (no images: token ids)."""
    cfg = model.config
    positions = getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0)
    return {"input_name": "input_ids", "layout": "NT", "dtype": "int64",
            "vocab_size": int(cfg.vocab_size),
            "max_position_embeddings": int(positions),
            "bos_token_id": getattr(cfg, "bos_token_id", None), "eos_token_id": getattr(cfg, "eos_token_id", None)}
