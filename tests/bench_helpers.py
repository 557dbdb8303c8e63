"""Tiny artifacts and data for tests of the benchmark harness (no downloads, seconds to build).

``tiny_export(out, variant)`` writes an export folder (model.pte, model.onnx,
manifest.json with the documented keys) for a small random timm ViT;
``tiny_data()`` gives a held-out split in the shape ``pocketsize.data`` returns.
Built once per process and cached, so several test modules can share them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from pocketsize.export.manifest import MANIFEST_VERSION, Manifest

IMG = 32
LABELS = ["a", "b", "c", "d"]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
PREPROCESSING = {"input_size": [3, IMG, IMG], "mean": MEAN, "std": STD, "interpolation": "bicubic",
                 "crop_pct": 1.0, "layout": "NCHW", "color": "RGB", "input_name": "pixel_values"}
_CACHE: dict[Any, Any] = {}


def tiny_model(variant: str = "original"):
    """A random-init timm ViT; ``compressed`` has half the heads and MLP width (like a pruned one)."""
    import timm
    import torch

    torch.manual_seed(0 if variant == "original" else 1)
    kw = dict(embed_dim=32, num_heads=2, mlp_ratio=4.0) if variant == "original" else \
        dict(embed_dim=32, num_heads=1, mlp_ratio=2.0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMG, patch_size=8,
                             depth=2, num_classes=len(LABELS), **kw).eval()


@dataclasses.dataclass
class Data:
    labels: list[str]
    test: Any  # pocketsize.data.Split


def tiny_data(n: int = 24) -> Data:
    """Random images; half the labels are the original model's predictions so accuracy is not trivial."""
    if ("data", n) in _CACHE:
        return _CACHE[("data", n)]
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, IMG, IMG), generator=g, dtype=torch.uint8)
    from pocketsize.data import Split

    split = Split(x, torch.zeros(n, dtype=torch.long), torch.tensor(MEAN), torch.tensor(STD))
    with torch.no_grad():
        pred = tiny_model("original")(split.normalized(0, n)).argmax(1)
    rand = torch.randint(0, len(LABELS), (n,), generator=g)
    split.y = torch.where(torch.arange(n) % 2 == 0, pred, rand)
    _CACHE[("data", n)] = Data(LABELS, split)
    return _CACHE[("data", n)]


def eager_accuracy(variant: str, data: Data, n: int | None = None) -> float:
    import torch

    shown = data.test.spread(n or len(data.test.y))  # what the bench evaluates: every class in turn
    with torch.no_grad():
        pred = tiny_model(variant)(shown.normalized()).argmax(1)
    return int((pred == shown.y).sum()) / len(shown.y)


def tiny_export(out: Path, variant: str = "original", formats: tuple[str, ...] = ("executorch", "onnx")) -> Path:
    """Write model.pte / model.onnx + manifest.json for ``tiny_model(variant)`` into ``out``."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model(variant)
    x = torch.randn(1, 3, IMG, IMG)
    arts = []
    if "executorch" in formats:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        ep = torch.export.export(model, (x,))
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        (out / "model.pte").write_bytes(prog.buffer)
        arts.append(("executorch", "model.pte"))
    if "onnx" in formats:
        torch.onnx.export(model, (x,), str(out / "model.onnx"), dynamo=True,
                          input_names=["pixel_values"], output_names=["logits"], verbose=False)
        arts.append(("onnx", "model.onnx"))
    manifest = {
        "format_version": MANIFEST_VERSION,
        "source": f"test:tiny-vit-{variant}", "variant": variant, "task": "image-classification",
        "preprocessing": PREPROCESSING, "labels": LABELS,
        "inputs": [{"name": "pixel_values", "shape": [1, 3, IMG, IMG], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [1, len(LABELS)], "dtype": "float32"}],
        "artifacts": [{"format": f, "path": p, "bytes": (out / p).stat().st_size,
                       "sha256": hashlib.sha256((out / p).read_bytes()).hexdigest(), "quantize": "none",
                       "parity": {"checked": False, "max_abs_diff": None, "top1_agreement": None,
                                  "reason": "test fixture"}, "delegation": {}} for f, p in arts],
    }
    Manifest.from_json(manifest, "tiny_export").write(out)  # through the record: the fixture stays in schema
    return out


def cached_exports(root: Path) -> Path:
    """``root/original`` and ``root/compressed`` export folders, built once per process and copied."""
    import shutil

    if "exports" not in _CACHE:
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="pocketsize-tiny-exports-"))
        for v in ("original", "compressed"):
            tiny_export(base / v, v)
        _CACHE["exports"] = base
    shutil.copytree(_CACHE["exports"], root, dirs_exist_ok=True)
    return root
