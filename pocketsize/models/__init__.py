"""Model adapters, one registry keyed by family name.

Adapters are listed here explicitly (no import-time registration side effects).
"""

from __future__ import annotations

import importlib
from typing import Any

from pocketsize.errors import BadInput

from .base import Adapter, BlockShape  # noqa: F401

# family name -> "module:Class"; modules are imported on first use so that
# `import compress` stays light.
_ADAPTERS: dict[str, str] = {
    "timm-vit": "pocketsize.models.timm_vit:TimmViTAdapter",
    "hf-vision": "pocketsize.models.hf_vision:HFVisionAdapter",
    "hf-causal-lm": "pocketsize.models.hf_causal_lm:HFCausalLMAdapter",
}


def adapter_names() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> Adapter:
    if name not in _ADAPTERS:
        raise BadInput(f"unknown model family {name!r}; valid: {', '.join(adapter_names())}")
    mod, cls = _ADAPTERS[name].split(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        raise BadInput(f"model family {name!r} is not available in this install ({e.name} missing)") from None
    return getattr(module, cls)()


def adapter_for(model: Any) -> Adapter:
    """The adapter that handles ``model``; BadInput naming what is supported."""
    for name in adapter_names():
        try:
            adapter = get_adapter(name)
        except BadInput:
            continue
        if adapter.matches(model):
            return adapter
    raise BadInput(
        f"no adapter handles {type(model).__name__}; supported: timm VisionTransformer (vit_*, deit_*, *_dinov2), "
        "transformers ViT/DeiT/Dinov2 (ForImageClassification or Model), and Llama/Qwen2/Qwen3/GPT-2 causal LMs")
