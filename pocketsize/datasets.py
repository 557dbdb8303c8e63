"""Personal data sets for the demo and the evaluation suites, built from data
that installs from the package registries (no hub downloads)."""

from __future__ import annotations

import gzip
import random
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from .errors import BadInput

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                  "Bag", "Ankle_boot"]


def _read_idx(path: Path):
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "train"):
    """(images uint8 N x 28 x 28, labels) from Debian's dataset-fashion-mnist."""
    prefix = "train" if split == "train" else "t10k"
    img, lab = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.exists():
        raise BadInput(f"Fashion-MNIST not found at {FASHION_DIR}; run: sudo apt-get install dataset-fashion-mnist")
    return _read_idx(img), _read_idx(lab)


def make_fashion_subset(out: str | Path, classes: Sequence[int] = (0, 1, 5, 9), per_class: int = 200,
                        seed: int = 0, split: str = "train") -> Path:
    """Write an ImageFolder of ``per_class`` PNGs for each of ``classes`` (atomically)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        return out  # already built: data sets are immutable inputs
    images, labels = fashion_mnist(split)
    return write_image_subset(out, images, labels, classes, per_class, seed,
                              folder=lambda c: f"{c}_{FASHION_LABELS[c]}")


def write_image_subset(out: Path, images, labels, classes: Sequence[int], per_class: int, seed: int,
                       folder=lambda c: f"class_{c}") -> Path:
    """An ImageFolder of up to ``per_class`` seeded-random images of each class,
    written in a temporary sibling and renamed at the end (never half-written)."""
    from PIL import Image

    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        for c in classes:
            idx = [i for i, y in enumerate(labels) if int(y) == c]
            rng.shuffle(idx)
            d = tmp / folder(c)
            d.mkdir()
            for i in idx[:per_class]:
                Image.fromarray(images[i]).save(d / f"{i:05d}.png")
        if out.exists():
            out.rmdir()
        shutil.move(str(tmp), str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
