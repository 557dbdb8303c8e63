"""timm VisionTransformer (vit_*, deit_*, timm's DINOv2 variants)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from pocketsize.errors import BadInput

from .base import BlockShape, ImageClassifierAdapter, head_index, keep_cols, keep_rows


class TimmViTAdapter(ImageClassifierAdapter):
    name = "timm-vit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            from timm.models.vision_transformer import VisionTransformer
        except ImportError:
            return False
        return isinstance(model, VisionTransformer)

    def blocks(self, model):
        return list(model.blocks)

    def block_shape(self, block) -> BlockShape:
        attn = block.attn
        return BlockShape(heads=attn.num_heads, head_dim=attn.head_dim, mlp_hidden=block.mlp.fc2.in_features)

    def head_in(self, block):
        return [block.attn.qkv]

    def head_out(self, block):
        return block.attn.proj

    def mlp_in(self, block):
        return [block.mlp.fc1]

    def mlp_out(self, block):
        return block.mlp.fc2

    def branch_modules(self, block):
        # ls1/ls2 are LayerScale or Identity: their output is what enters the residual
        return block.ls1, block.ls2

    def embedding_params(self, model):
        ps = list(model.patch_embed.parameters())
        for name in ("cls_token", "reg_token", "pos_embed"):
            p = getattr(model, name, None)
            if isinstance(p, nn.Parameter):
                ps.append(p)
        return ps

    def layer_scales(self, block):
        g = lambda m: getattr(m, "gamma", None)  # noqa: E731  (timm LayerScale)
        return g(block.ls1), g(block.ls2)

    def prune_heads(self, block, keep: Sequence[int]) -> None:
        attn = block.attn
        if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
            raise BadInput("this timm ViT normalizes or gates the attention output across heads; head pruning is not supported for it (use a width-only method)")
        keep = sorted(keep)
        H, D = attn.num_heads, attn.head_dim
        hi = head_index(keep, D)
        qkv_rows = torch.cat([hi + s * H * D for s in range(3)])  # layout [3, H, D]
        keep_rows(attn.qkv, qkv_rows)
        keep_cols(attn.proj, hi)
        attn.num_heads = len(keep)
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = len(keep) * D

    def keep_blocks(self, model, keep: Sequence[int]) -> None:
        model.blocks = nn.Sequential(*[model.blocks[i] for i in sorted(keep)])

    def logits(self, model, x):
        return model(x)

    def features(self, model, x):
        return model.forward_head(model.forward_features(x), pre_logits=True)

    def classifier(self, model):
        return model.get_classifier()

    def num_classes(self, model) -> int:
        return int(model.num_classes)

    def set_num_classes(self, model, labels: list[str]) -> None:
        model.reset_classifier(len(labels))

    def preprocessing(self, model) -> dict[str, Any]:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        input_size = list(cfg["input_size"])
        img_size = getattr(model.patch_embed, "img_size", None)
        if img_size is not None and not getattr(model, "dynamic_img_size", False):
            # create_model(img_size=...) keeps the pretrained_cfg's size; a fixed-size
            # patch embed only accepts its own img_size
            input_size = [input_size[0], int(img_size[0]), int(img_size[1])]
        return {"input_size": input_size, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                "interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": float(cfg.get("crop_pct", 1.0)),
                "layout": "NCHW", "color": "RGB", "input_name": "pixel_values"}

    # --- serialization ---------------------------------------------------
    def describe(self, model) -> dict[str, Any]:
        """Constructor kwargs read back from the module tree (timm does not keep
        them), so any VisionTransformer can be rebuilt with create_model."""
        from timm.layers import LayerScale

        pe = model.patch_embed
        b0 = model.blocks[0] if len(model.blocks) else None
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or "vit_base_patch16_224"
        kwargs: dict[str, Any] = {
            "img_size": list(pe.img_size), "patch_size": list(pe.patch_size), "embed_dim": model.embed_dim,
            "depth": len(model.blocks), "num_classes": model.num_classes,
            "global_pool": model.global_pool, "class_token": model.cls_token is not None,
            "reg_tokens": int(getattr(model, "num_reg_tokens", 0)),
            "no_embed_class": bool(getattr(model, "no_embed_class", False)),
            "pre_norm": not isinstance(model.norm_pre, nn.Identity),
            "fc_norm": not isinstance(model.fc_norm, nn.Identity),
            "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False)),
        }
        if b0 is not None:
            kwargs.update({
                "num_heads": b0.attn.num_heads,
                "mlp_ratio": b0.mlp.fc1.out_features / model.embed_dim,
                "qkv_bias": b0.attn.qkv.bias is not None,
                "init_values": 1e-5 if isinstance(b0.ls1, LayerScale) else None,
                "qk_norm": not isinstance(b0.attn.q_norm, nn.Identity),
            })
        # per-block widths can differ after pruning: build with the first
        # block's original widths, then `resize_to` the recorded shapes
        return {"architecture": arch, "kwargs": kwargs}

    def build(self, record: dict[str, Any]) -> nn.Module:
        import timm

        kw = dict(record["kwargs"])
        kw["img_size"] = tuple(kw["img_size"])
        kw["patch_size"] = tuple(kw["patch_size"])[0]
        shapes = record.get("layers") or []
        if shapes:  # build with the original widths, then shrink block by block
            # timm derives head_dim = embed_dim // num_heads, so the original
            # head count is the one that reproduces the real head_dim
            kw["num_heads"] = kw["embed_dim"] // shapes[0]["head_dim"]
            max_mlp = max(s["mlp_hidden"] for s in shapes)
            kw["mlp_ratio"] = (max_mlp + 0.5) / kw["embed_dim"]  # int() in timm rounds down
        model = timm.create_model(record["architecture"], pretrained=False, **kw)
        if shapes:
            self.resize_to(model, shapes)
        return model

