"""What export() accepts as a model, and the inputs it checks artifacts on.

A model reaches export as a MODEL spec / directory (loaded through
``pocketsize.loading``), an already-loaded ``pocketsize.loading.Loaded`` (or any
object with ``logits_module()`` and ``meta``), a stock timm/transformers module,
or an explicit :class:`Source`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pocketsize.errors import BadInput, PocketsizeError
from pocketsize.tasks import TASKS

log = logging.getLogger(__name__)


@dataclass
class Source:
    """A logits module plus the metadata an app needs to feed it."""

    module: nn.Module                    # forward(x) -> logits tensor
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = "in-process"
    loaded: Any = None                   # the compress.loading.Loaded behind it (causal LMs need model + tokenizer)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.meta.get("preprocessing") or {})

    @property
    def task(self) -> str:
        return str(self.meta.get("task", "image-classification"))

    def input_shape(self) -> tuple[int, ...]:
        size = self.preprocessing.get("input_size")
        if not size:
            raise BadInput(f"{self.name}: metadata has no preprocessing.input_size; "
                           "re-save the model with pocketsize compress or pass export.Source(module, meta)")
        return (1, *[int(s) for s in size])

    @property
    def input_name(self) -> str:
        return str(self.preprocessing.get("input_name") or "pixel_values")


def resolve(obj: Any) -> Source:
    """Turn whatever the caller passed into a :class:`Source`."""
    if isinstance(obj, Source):
        src = obj
    elif hasattr(obj, "logits_module") and hasattr(obj, "meta"):
        meta = dict(obj.meta)
        src = Source(obj.logits_module(), meta, str(meta.get("source", "in-process")), loaded=obj)
    elif isinstance(obj, nn.Module):
        src = _from_module(obj)
    elif isinstance(obj, (str, Path)):
        src = _from_spec(obj)
    else:
        raise BadInput(f"cannot export a {type(obj).__name__}; pass a model directory, a MODEL spec, "
                       "a loaded model or an nn.Module")
    if src.task not in TASKS:
        raise BadInput(f"{src.name} is a {src.task} model; pocketsize export handles image classifiers "
                       "and causal language models")
    if src.task == "causal-lm" and src.loaded is None:
        raise BadInput(f"{src.name}: pass a language model as a directory, MODEL spec or loaded model "
                       "(export.Source has no KV-cache interface)")
    src.module.eval()
    return src


def _from_module(model: nn.Module) -> Source:
    try:
        from pocketsize.loading import Loaded
        from pocketsize.models import adapter_for
    except ImportError:  # pragma: no cover - compress ships with pocketsize
        raise BadInput("pass export.Source(module, meta) for a bare module") from None
    adapter = adapter_for(model)  # BadInput listing the supported families
    loaded = Loaded(model.eval(), adapter, {"source": "in-process", "task": adapter.task})
    if hasattr(adapter, "preprocessing"):
        loaded.meta["preprocessing"] = adapter.preprocessing(model)
    return resolve(loaded)


def _from_spec(spec: str | Path) -> Source:
    from pocketsize.loading import load_model

    s = str(spec)
    local = not s.split(":", 1)[0] in ("timm", "hf", "zoo")
    if local and not Path(s).exists():
        raise BadInput(f"MODEL_DIR {s} does not exist; pass the DIR/model folder written by pocketsize compress "
                       "(or a save_pretrained / save_for_hf directory)")
    try:
        loaded = load_model(s)
    except PocketsizeError:
        raise
    except Exception as e:  # a corrupt local directory must read as bad input, not a crash
        if not local:
            raise
        raise BadInput(f"MODEL_DIR {s} could not be read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                       "re-create it with pocketsize compress") from None
    meta = dict(loaded.meta)
    meta.setdefault("source", s)
    meta.setdefault("task", getattr(loaded, "task", "image-classification"))
    return Source(loaded.logits_module(), meta, s, loaded=loaded)


@dataclass
class Inputs:
    """Inputs every artifact is checked on, and those int8 is calibrated on."""

    parity: torch.Tensor
    labels: torch.Tensor | None
    calib: torch.Tensor | None          # None: no user data, int8 falls back to dynamic
    record: dict[str, Any]
    class_names: list[str] | None = None
    split: Any = None                   # pocketsize.splits.SplitRecord copied beside the manifest (bench reads it)


NO_CALIBRATION = "none (int8 uses dynamic quantization)"


def make_inputs(src: Source, config: Any, data: Any = None) -> Inputs:
    """Held-out images of the user's data when given, else seeded random inputs.

    ``data`` may be an already-loaded ``pocketsize.data.ImageData`` (saves
    re-reading the folder when the caller has it); otherwise ``config.data``
    is read through the model folder's split.json (see :func:`read_data`).
    """
    from pocketsize.splits import record_of

    shape = src.input_shape()
    split, how = None, "in-process split"
    if data is None and config.data is not None:
        data, split, how = read_data(src, config)
    elif data is not None:
        split = record_of(data)  # compress's data in-process: its split travels with the artifacts
    if data is None:
        g = torch.Generator().manual_seed(int(config.seed))
        x = torch.randn((int(config.parity_samples), *shape[1:]), generator=g)
        return Inputs(x, None, None, {"kind": "random", "samples": int(x.shape[0]), "seed": int(config.seed),
                                      "calibration": NO_CALIBRATION})
    test = data.test
    n = min(int(config.parity_samples), len(test))
    if n == 0:
        raise BadInput("--data has no held-out images; add more images per class")
    test = test.spread(n)  # every class, not the first class's images only
    x = test.normalized()
    if tuple(x.shape[1:]) != shape[1:]:
        raise BadInput(f"--data images come out as {list(x.shape[1:])} but the model takes {list(shape[1:])}; "
                       "load the data with the model's preprocessing")
    labels = test.y.long()
    model_labels = src.meta.get("labels")
    if model_labels and list(model_labels) != list(data.labels):
        log.warning("model labels %s differ from data classes %s: accuracy not reported", model_labels, data.labels)
        labels = None
    # no training split (a stock model, all data held out): calibration needs no labels, so the
    # held-out images serve; nothing is trained on them
    pool, pool_name = (data.train, "training split") if len(data.train) else (data.test, "held-out images")
    m = min(int(config.calib_samples), len(pool)) if config.int8_activations == "static" else 0
    calib = pool.spread(m).normalized() if m else None
    record = {"kind": "held-out", "data": str(config.data) if config.data else "in-process", "samples": n,
              "split": how, "seed": getattr(data, "seed", None), "files": test.files or None,
              "calibration_samples": m, "calibration": pool_name if m else NO_CALIBRATION}
    return Inputs(x, labels, calib, record, class_names=list(data.labels), split=split)


def _model_dir(src: Source) -> Path | None:
    for p in (src.name, src.meta.get("source")):
        if p and Path(str(p)).is_dir():
            return Path(str(p))
    return None


def read_data(src: Source, config: Any) -> tuple[Any, Any, str]:
    """(ImageData, SplitRecord or None, how the split was chosen) for ``config.data``.

    With the model folder's split.json: --data must still match it, parity runs
    on its test files and int8 calibrates on its train files, exactly as listed.
    Without one (a stock model pocketsize never trained): all of --data is held out.
    """
    from pocketsize.data import ImageData, load_image_data
    from pocketsize.splits import SplitRecord, check_data, find_split, load_images

    pp = src.preprocessing
    path = find_split(_model_dir(src))
    if path is None:
        data = load_image_data(config.data, pp, val_fraction=0.0, test_fraction=1.0)
        data.seed = None
        return data, None, "all of --data (the model folder has no split.json: it was never trained on it)"
    record = SplitRecord.load(path)
    if record.task != "image-classification":
        raise BadInput(f"{path} records a {record.task} split but the model is an image classifier; "
                       "pass the model folder compress wrote")
    check_data(record, config.data, path)
    test = load_images(record, config.data, "test", pp, int(config.parity_samples))
    train = load_images(record, config.data, "train", pp, int(config.calib_samples))
    val = load_images(record, config.data, "val", pp, 0)
    return (ImageData(list(record.labels), train, val, test, root=str(config.data), seed=record.seed),
            record, f"test entries of {path.name} (seed {record.seed})")
