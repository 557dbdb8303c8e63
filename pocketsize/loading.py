"""MODEL specs -> a stock timm/transformers model plus its adapter and metadata.

Specs (docs/interfaces.md): ``timm:<name>``, ``hf:<id>``, ``zoo:<name>``, or a local
directory written by transformers' save_pretrained, timm's save_for_hf, or
``pocketsize compress`` (DIR or DIR/model).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from pocketsize.errors import BadInput, PocketsizeError
from pocketsize.io import digest

from .models import Adapter, adapter_for, get_adapter
from .models.base import Loaded  # noqa: F401  (the loaded-model record lives with the adapters)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "pocketsize.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA_KEY = "weights_sha256"  # sha256 of WEIGHTS_FILE, in META_FILE


# --- spec resolution -------------------------------------------------------

def load_model(spec: str | Path, **kwargs: Any) -> Loaded:
    """Resolve a MODEL spec (see module doc). Raises BadInput naming the fix."""
    s = str(spec)
    if s.startswith("zoo:"):
        from .zoo import zoo_entry, zoo_path

        entry = zoo_entry(s[4:])
        loaded = _load_dir(zoo_path(entry.name), **kwargs)
        loaded.meta["source"] = s
        return loaded
    if s.startswith("timm:"):
        return _load_timm_hub(s[5:])
    if s.startswith("hf:"):
        return _load_hf(s[3:], source=s, **kwargs)
    path = Path(s)
    if not path.exists():
        raise BadInput(f"MODEL {s!r} is neither an existing directory nor a timm:/hf:/zoo: name; "
                       "check the path or run `pocketsize models`")
    if not path.is_dir():
        raise BadInput(f"MODEL {s} is a file; pass the directory that holds config.json and model.safetensors")
    return _load_dir(path, **kwargs)


def _load_dir(path: Path, **kwargs: Any) -> Loaded:
    if (path / "model" / META_FILE).exists():  # the DIR of `pocketsize compress`
        path = path / "model"
    if (path / META_FILE).exists():
        return load_pocketsize_dir(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise BadInput(f"{path} has no config.json; pass a directory written by save_pretrained, "
                       "timm's save_for_hf, or pocketsize compress")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{cfg_file} is not valid JSON ({e.msg}); re-save the model") from None
    if not isinstance(cfg, dict) or ("architecture" not in cfg and "model_type" not in cfg):
        raise BadInput(f"{cfg_file} has neither model_type (transformers) nor architecture (timm); "
                       "re-save the model with save_pretrained or timm's save_for_hf")
    _check_local_weights(path)
    if "architecture" in cfg and "model_type" not in cfg:
        return _load_timm_dir(path, cfg)
    return _load_hf(str(path), source=str(path), **kwargs)


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_local_weights(path: Path) -> None:
    """A local model directory must hold readable safetensors: a pickle-only
    checkpoint is refused (never unpickled), a truncated file is bad input."""
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        pickles = sorted(f.name for f in path.iterdir() if f.suffix in _PICKLE_SUFFIXES and f.is_file())
        if pickles:
            raise BadInput(f"{path} has only a pickle checkpoint ({pickles[0]}) and no {WEIGHTS_FILE}; pocketsize "
                           "loads safetensors only, so convert it with the safetensors converter "
                           "(huggingface.co/spaces/safetensors/convert) and pass the converted directory")
        raise BadInput(f"{path} has no {WEIGHTS_FILE}; re-save the model with save_pretrained or timm's save_for_hf")
    from safetensors import SafetensorError, safe_open

    for f in shards:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except (SafetensorError, OSError) as e:
            raise BadInput(f"{f} is not a readable safetensors file ({_one_line(e)}); it is truncated or corrupt, "
                           "copy or re-save the model again") from None


def _load_timm_dir(path: Path, cfg: dict[str, Any]) -> Loaded:
    import timm

    arch = cfg["architecture"]
    if not timm.is_model(arch):
        raise BadInput(f"{path}/config.json names timm architecture {arch!r}, which this timm does not know")
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise BadInput(f"{path} has no {WEIGHTS_FILE}; re-save it with timm.models.save_for_hf (safetensors)")
    model_args = dict(cfg.get("model_args") or {})
    # timm >= 1.0.20 records num_classes inside model_args too
    model_args.setdefault("num_classes", cfg.get("num_classes", 1000))
    pp = cfg.get("pretrained_cfg") or {}
    # the saved pretrained_cfg carries the checkpoint's own preprocessing (mean/std/size)
    model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=dict(pp), **model_args)
    _load_safetensors(model, weights)
    adapter = _adapter(model)
    meta = {"source": str(path), "labels": cfg.get("label_names") or pp.get("label_names")}
    loaded = Loaded(model.eval(), adapter, meta)
    loaded.meta["preprocessing"] = adapter.preprocessing(model)
    return loaded


def _load_timm_hub(name: str) -> Loaded:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BadInput(f"unknown timm model {name!r}{hint}; see timm.list_models()")
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # hub unreachable, gated, ...
        raise PocketsizeError(f"could not download timm:{name} ({type(e).__name__}); without network, "
                              "save it elsewhere with timm's save_for_hf and pass that directory") from None
    adapter = _adapter(model)
    loaded = Loaded(model.eval(), adapter, {"source": f"timm:{name}"})
    loaded.meta["preprocessing"] = adapter.preprocessing(model)
    return loaded


_HF_VISION = ("ViTForImageClassification", "ViTModel", "DeiTForImageClassification", "DeiTModel",
              "Dinov2ForImageClassification", "Dinov2Model")


def _load_hf(ident: str, source: str, **kwargs: Any) -> Loaded:
    import transformers

    try:
        cfg = transformers.AutoConfig.from_pretrained(ident)
    except OSError as e:
        if Path(ident).exists():
            raise BadInput(f"{ident} is not a transformers model directory ({e}); re-save it with save_pretrained") from None
        raise PocketsizeError(f"could not fetch hf:{ident} from the hub; without network, pass a local "
                              "save_pretrained directory instead") from None
    archs = list(getattr(cfg, "architectures", None) or [])
    vision = [a for a in archs if a in _HF_VISION]
    if vision or cfg.model_type in ("vit", "deit", "dinov2"):
        cls_name = vision[0] if vision else {"vit": "ViTModel", "deit": "DeiTModel", "dinov2": "Dinov2Model"}[cfg.model_type]
        local = Path(ident).is_dir()  # local: safetensors only (checked by _check_local_weights), never a pickle
        model = getattr(transformers, cls_name).from_pretrained(ident, **({"use_safetensors": True} if local else {}))
        adapter = _adapter(model)
        loaded = Loaded(model.eval(), adapter, {"source": source})
        loaded.meta["preprocessing"] = _hf_preprocessing(ident, adapter, model)
        labels = getattr(cfg, "id2label", None) or {}
        names = [labels[i] for i in sorted(labels)] if labels else []
        if names and not all(str(n).startswith("LABEL_") for n in names):
            loaded.meta["labels"] = names
        return loaded
    if not (any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)
            or cfg.model_type in ("llama", "qwen2", "qwen3", "gpt2", "mistral")):
        raise BadInput(f"no adapter handles {archs[0] if archs else cfg.model_type!r} models; supported: "
                       "ViT/DeiT/Dinov2 image models and Llama/Qwen2/Qwen3/GPT-2 causal LMs")
    try:
        from .models.hf_causal_lm import load_causal_lm  # LLMs: separate module
    except ModuleNotFoundError as e:
        if e.name != "pocketsize.models.hf_causal_lm":
            raise
        raise BadInput(f"{source} ({cfg.model_type}) is not a vision transformer and language-model support is "
                       "not installed; pass a ViT/DeiT/Dinov2 or timm VisionTransformer") from None

    return load_causal_lm(ident, cfg, source=source, **kwargs)


def _hf_preprocessing(ident: str, adapter, model) -> dict[str, Any]:
    pp = adapter.preprocessing(model)
    p = Path(ident) / "preprocessor_config.json"
    if p.exists():
        d = json.loads(p.read_text())
        if "image_mean" in d:
            pp["mean"] = list(d["image_mean"])
            pp["std"] = list(d["image_std"])
        size = d.get("crop_size") or d.get("size") or {}
        if isinstance(size, dict) and "height" in size:
            pp["input_size"] = [3, int(size["height"]), int(size["width"])]
        if d.get("resample") == 2:
            pp["interpolation"] = "bilinear"
    return pp


def _size_mismatches(text: str) -> str:
    """'blocks.0.mlp.fc1.weight: file [96, 64] vs model [128, 64], +2 more' from torch's load error."""
    import re

    found = re.findall(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) "
                       r"from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)", text)
    if not found:
        return ""
    name, a, b = found[0]
    more = f", +{len(found) - 1} more" if len(found) > 1 else ""
    return f"{name}: file {a} vs model {b}{more}"


def _adapter(model: nn.Module) -> Adapter:
    return adapter_for(model)


def _one_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text, cut at a word boundary (for one-line errors)."""
    text = " ".join(str(e).strip().splitlines()[:1]) or type(e).__name__
    text = text.rstrip(":").strip()
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def _load_safetensors(model: nn.Module, path: Path, meta_file: Path | None = None) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model as st_load

    try:
        missing, unexpected = st_load(model, str(path), strict=False)
    except SafetensorError as e:  # truncated / not safetensors at all
        raise BadInput(f"{path} is not a readable safetensors file ({_one_line(e)}); it is truncated or corrupt, "
                       "re-save the model") from None
    except RuntimeError as e:  # torch's multi-line "size mismatch for ..." list
        shapes = _size_mismatches(str(e))
        where = f"the widths in {meta_file}" if meta_file is not None else "the architecture in config.json"
        raise BadInput(f"{path} does not match {where} ({shapes or _one_line(e)}); the directory is corrupt or "
                       "mixes two models, re-save it" + (" with pocketsize compress" if meta_file else "")) from None
    except Exception as e:
        raise BadInput(f"{path} could not be read as safetensors matching the architecture ({_one_line(e)}); "
                       "re-save the model") from None
    if missing or unexpected:
        raise BadInput(f"{path} does not match the recorded architecture (missing {list(missing)[:3]}, "
                       f"unexpected {list(unexpected)[:3]}); the directory is corrupt or from another model")


# --- the pocketsize model directory ---------------------------------------

def save_model_dir(loaded: Loaded, dest: Path) -> None:
    """model.safetensors + pocketsize.json; no pickles."""
    from safetensors.torch import save_model

    from pocketsize.io import write_json

    dest.mkdir(parents=True, exist_ok=True)
    loaded.refresh_meta()
    meta = dict(loaded.meta)
    meta["format_version"] = FORMAT_VERSION
    save_model(loaded.model, str(dest / WEIGHTS_FILE))
    loaded.adapter.save_extras(loaded, dest)  # may rewrite the weights (LLMs: transformers' own layout)
    meta[WEIGHTS_SHA_KEY] = digest(dest / WEIGHTS_FILE)[1]  # every load verifies it (load_pocketsize_dir)
    write_json(dest / META_FILE, meta)



def _verify_weights(path: Path, meta: dict[str, Any]) -> None:
    """model.safetensors must hash to the sha256 that pocketsize compress recorded."""
    weights = path / WEIGHTS_FILE
    want = meta.get(WEIGHTS_SHA_KEY)
    if not want:  # written before the hash existed: still loads, unverified
        log.warning("%s has no %s (written by an older pocketsize); %s is not verified, re-run "
                    "pocketsize compress to record it", path / META_FILE, WEIGHTS_SHA_KEY, weights)
        return
    got = digest(weights)[1]
    if got != str(want).lower():
        raise BadInput(f"{weights} does not match the sha256 in {path / META_FILE}: expected {str(want)[:16]}..., "
                       f"got {got[:16]}...; the file is corrupt or was replaced, re-run pocketsize compress")


def load_pocketsize_dir(path: Path) -> Loaded:
    meta_file = path / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{meta_file} is not valid JSON ({type(e).__name__}); re-run pocketsize compress") from None
    if not isinstance(meta, dict) or not all(k in meta for k in ("family", "architecture", "layers")):
        raise BadInput(f"{meta_file} lacks family/architecture/layers; re-run pocketsize compress")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise BadInput(f"{path} was written by a newer pocketsize (format {meta['format_version']}); upgrade pocketsize")
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise BadInput(f"{path} has no {WEIGHTS_FILE}; the model directory is incomplete, run pocketsize compress again")
    _verify_weights(path, meta)
    meta.pop(WEIGHTS_SHA_KEY, None)  # recomputed by save_model_dir; never carried stale
    adapter = get_adapter(meta["family"])
    record = dict(meta["architecture"])
    record["layers"] = meta["layers"]
    try:
        model = adapter.build(record)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise BadInput(f"{meta_file} describes an architecture that cannot be built ({_one_line(e)}); "
                       "re-run pocketsize compress") from None
    _load_safetensors(model, weights, meta_file)
    loaded = Loaded(model.eval(), adapter, meta)
    adapter.load_extras(loaded, path)
    return loaded


def load(path: str | Path) -> nn.Module:
    """The torch model saved by ``pocketsize compress`` (path = DIR/model)."""
    return load_model(path).model
