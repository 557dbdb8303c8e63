"""transformers ViT / DeiT / Dinov2 (ForImageClassification or bare Model)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .base import BlockShape, ImageClassifierAdapter, head_index, keep_cols, keep_rows

# class name -> attribute holding the backbone (None: the model is the backbone)
_CLASSES = {
    "ViTForImageClassification": "vit",
    "ViTModel": None,
    "DeiTForImageClassification": "deit",
    "DeiTModel": None,
    "Dinov2ForImageClassification": "dinov2",
    "Dinov2Model": None,
}
# bare backbones get the library's own classification head on set_num_classes
_WITH_HEAD = {"ViTModel": "ViTForImageClassification", "DeiTModel": "DeiTForImageClassification",
              "Dinov2Model": "Dinov2ForImageClassification"}


def _cls(name: str):
    import transformers

    return getattr(transformers, name)


class HFVisionAdapter(ImageClassifierAdapter):
    name = "hf-vision"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__name__ in _CLASSES and type(model).__module__.startswith("transformers.")

    def backbone(self, model):
        attr = _CLASSES[type(model).__name__]
        return getattr(model, attr) if attr else model

    def _layer_owner(self, model) -> tuple[nn.Module, str]:
        """(module, attribute) of the block list: transformers 5 keeps ViT/DeiT
        blocks in ``backbone.layers`` and Dinov2's in ``backbone.encoder.layer``."""
        bb = self.backbone(model)
        if isinstance(getattr(bb, "layers", None), nn.ModuleList):
            return bb, "layers"
        return bb.encoder, "layer"

    def blocks(self, model):
        owner, attr = self._layer_owner(model)
        return list(getattr(owner, attr))

    def block_shape(self, block) -> BlockShape:
        a = block.attention
        return BlockShape(heads=a.num_attention_heads, head_dim=a.head_dim, mlp_hidden=self.mlp_out(block).in_features)

    def head_in(self, block):
        a = block.attention
        return [a.q_proj, a.k_proj, a.v_proj]

    def head_out(self, block):
        return block.attention.o_proj

    def mlp_in(self, block):
        return [block.mlp.fc1] if hasattr(block.mlp, "fc1") else [block.intermediate.dense]

    def mlp_out(self, block):
        return block.mlp.fc2 if hasattr(block.mlp, "fc2") else block.output.dense

    def branch_modules(self, block):
        if hasattr(block, "layer_scale1"):  # Dinov2
            return block.layer_scale1, block.layer_scale2
        return block.attention.o_proj, self.mlp_out(block)  # ViT/DeiT: no layer scale, dropout is identity in eval

    def embedding_params(self, model):
        return list(self.backbone(model).embeddings.parameters())

    def layer_scales(self, block):
        if hasattr(block, "layer_scale1"):
            return block.layer_scale1.lambda1, block.layer_scale2.lambda1
        return None, None

    def prune_heads(self, block, keep: Sequence[int]) -> None:
        a = block.attention
        hi = head_index(sorted(keep), a.head_dim)
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            keep_rows(lin, hi)
        keep_cols(a.o_proj, hi)
        a.num_attention_heads = len(keep)

    def keep_blocks(self, model, keep: Sequence[int]) -> None:
        owner, attr = self._layer_owner(model)
        layers = getattr(owner, attr)
        setattr(owner, attr, nn.ModuleList([layers[i] for i in sorted(keep)]))
        model.config.num_hidden_layers = len(keep)

    def logits(self, model, x):
        if _CLASSES[type(model).__name__] is None:
            raise ValueError(f"{type(model).__name__} has no classification head; call set_num_classes first")
        return model(pixel_values=x).logits

    def _pool(self, model, seq):
        if type(model).__name__.startswith("Dinov2"):
            return torch.cat([seq[:, 0], seq[:, 1:].mean(dim=1)], dim=1)
        return seq[:, 0]

    def features(self, model, x):
        seq = self.backbone(model)(pixel_values=x).last_hidden_state
        return self._pool(model, seq)

    def classifier(self, model):
        return model.classifier

    def num_classes(self, model) -> int:
        return int(model.config.num_labels) if _CLASSES[type(model).__name__] else 0

    def set_num_classes(self, model, labels: list[str]) -> nn.Module:
        """Returns the (possibly new) model: a bare backbone is wrapped into the
        library's own *ForImageClassification class, sharing its weights."""
        name = type(model).__name__
        cfg = model.config
        cfg.num_labels = len(labels)
        cfg.id2label = {i: l for i, l in enumerate(labels)}
        cfg.label2id = {l: i for i, l in enumerate(labels)}
        if name in _WITH_HEAD:
            wrapped = _cls(_WITH_HEAD[name])(cfg)
            if getattr(model, "pooler", None) is not None:
                # the *ForImageClassification classes build their backbone without the
                # (unused) pooler; keeping it would break reloading from the stock class
                model.pooler = None
            setattr(wrapped, _CLASSES[_WITH_HEAD[name]], model)
            model = wrapped
        in_f = model.classifier.in_features if isinstance(model.classifier, nn.Linear) else cfg.hidden_size * (
            2 if name.startswith("Dinov2") else 1)
        model.classifier = nn.Linear(in_f, len(labels))
        return model

    def preprocessing(self, model) -> dict[str, Any]:
        cfg = model.config
        size = int(cfg.image_size if not isinstance(cfg.image_size, (list, tuple)) else cfg.image_size[0])
        pp = getattr(model, "_pocketsize_preprocessing", None)
        if pp:
            return dict(pp)
        return {"input_size": [int(getattr(cfg, "num_channels", 3)), size, size],
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "interpolation": "bicubic", "crop_pct": 1.0,
                "layout": "NCHW", "color": "RGB", "input_name": "pixel_values"}

    # --- serialization ---------------------------------------------------
    def describe(self, model) -> dict[str, Any]:
        return {"class": type(model).__name__, "config": model.config.to_dict()}

    def build(self, record: dict[str, Any]) -> nn.Module:
        import transformers

        name = record["class"]
        if name not in _CLASSES:
            raise ValueError(f"unsupported class {name}")
        cfg_dict = dict(record["config"])
        shapes = record.get("layers") or []
        if shapes:
            cfg_dict["num_hidden_layers"] = len(shapes)
        # Dinov2's backbone bookkeeping (stage_names, out_features) is derived from the
        # original depth and fails validation once blocks are removed; these classes ignore it
        for k in ("stage_names", "out_features", "out_indices", "_out_features", "_out_indices"):
            cfg_dict.pop(k, None)
        cfg_cls = getattr(transformers, name.replace("ForImageClassification", "").replace("Model", "") + "Config")
        cfg = cfg_cls.from_dict(cfg_dict)
        if shapes:
            cfg.num_hidden_layers = len(shapes)
        model = _cls(name)(cfg)
        if shapes:
            self.resize_to(model, shapes)
        return model
