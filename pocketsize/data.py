"""User data: an ImageFolder-layout folder, preprocessed once, split seeded.

The split is a pure function of (folder contents, seed): compress, export
parity and on-device accuracy all see the same held-out images.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from pocketsize.errors import BadInput

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MIN_IMAGES_PER_CLASS = 4  # need at least one image in each of train/val/test (+1 spare)


@dataclass
class Split:
    """Images kept as uint8 (N, 3, H, W) to stay small; normalized per batch."""

    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    files: list[str] | None = None  # data-root-relative names, row for row (split.json records them)

    def __len__(self) -> int:
        return int(self.y.numel())

    def normalized(self, i: int = 0, j: int | None = None) -> torch.Tensor:
        x = self.x[i:j].float().div_(255.0)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for s in range(0, len(self), batch_size):
            idx = order[s:s + batch_size]
            x = self.x[idx].float().div_(255.0)
            yield (x - self.mean[:, None, None]) / self.std[:, None, None], self.y[idx]

    def subset(self, idx: torch.Tensor) -> "Split":
        files = None if self.files is None else [self.files[int(i)] for i in idx.reshape(-1)]
        return Split(self.x[idx], self.y[idx], self.mean, self.std, files)

    def spread(self, n: int) -> "Split":
        """``n`` samples drawn evenly from every class (see :func:`class_spread`), in split order."""
        return self.subset(torch.tensor(class_spread(self.y.tolist(), n), dtype=torch.long))


def class_of(name: str) -> str:
    """The class of a data-root-relative image name: its first folder."""
    return name.split("/", 1)[0]


def class_spread(keys: Sequence[Any], n: int | None) -> list[int]:
    """Positions of ``n`` items taken from every class in turn (each class in its own
    order), returned sorted. Splits are stored class by class, so their first ``n``
    items hold only the first classes: int8 calibrated on those alone and parity
    checked on one class (measured: 32 calibration images, all of one class)."""
    if n is None or n >= len(keys):
        return list(range(len(keys)))
    by: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        by.setdefault(k, []).append(i)
    turns = (i for rank in itertools.zip_longest(*by.values()) for i in rank if i is not None)
    return sorted(itertools.islice(turns, max(int(n), 0)))


@dataclass
class ImageData:
    labels: list[str]
    train: Split
    val: Split
    test: Split
    skipped: int = 0
    root: str | None = None       # the --data folder the files are relative to
    seed: int | None = None       # the seed that drew the split
    ignored: list[str] = field(default_factory=list)  # listed but unused: unreadable or over max_per_class

    def summary(self) -> dict[str, Any]:
        return {"classes": len(self.labels), "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "skipped_images": self.skipped}


def list_image_folder(path: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted subfolders) and (file, class index) pairs."""
    root = Path(path)
    if not root.exists():
        raise BadInput(f"--data {root} does not exist; pass a folder with one subfolder of images per class")
    if not root.is_dir():
        raise BadInput(f"--data {root} is a file; image models need a folder with one subfolder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInput(f"--data {root} has no class subfolders; put each class's images in its own subfolder (ImageFolder layout)")
    items = []
    for ci, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        items += [(f, ci) for f in files]
    nonempty = {ci for _, ci in items}
    if len(nonempty) < 2:
        raise BadInput(f"--data {root} has {len(nonempty)} class(es) with images; a classifier needs at least 2 class subfolders")
    return classes, items


def _resize_crop(img, size: tuple[int, int], crop_pct: float, interpolation: str):
    from PIL import Image

    interp = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(
        interpolation, Image.BICUBIC)
    h, w = size
    scale_h, scale_w = int(round(h / crop_pct)), int(round(w / crop_pct))
    # resize the short side, then center-crop (timm / HF processors do the same)
    iw, ih = img.size
    s = max(scale_h / ih, scale_w / iw)
    img = img.resize((max(w, int(round(iw * s))), max(h, int(round(ih * s)))), interp)
    iw, ih = img.size
    left, top = (iw - w) // 2, (ih - h) // 2
    return img.crop((left, top, left + w, top + h))


def to_8bit(im):
    """Scale 16-bit ("I;16*"), 32-bit int ("I") and float ("F") images to 8-bit
    grayscale; PIL's convert("RGB") would clip them (anything over 255 is white)."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return im
    a = np.asarray(im).astype(np.float64)
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"{mode} image with no pixels or non-finite values")
    lo, hi = float(a.min()), float(a.max())
    if mode.startswith("I;16"):
        a = a / 257.0                      # 0..65535 -> 0..255
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0                      # float in [0, 1]
    elif lo >= 0.0 and hi <= 255.0:
        pass                               # already 8-bit values in a wider type
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0                      # 16-bit PNGs that PIL opens as "I"
    else:                                  # any other range: stretch to 0..255
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def load_image(path: Path, preprocessing: dict[str, Any]) -> torch.Tensor:
    """One image -> uint8 (3, H, W) tensor, resized/cropped per ``preprocessing``."""
    import numpy as np
    from PIL import Image

    _, h, w = preprocessing["input_size"]
    with Image.open(path) as im:
        im = to_8bit(im).convert("RGB")
        im = _resize_crop(im, (h, w), float(preprocessing.get("crop_pct", 1.0)),
                          preprocessing.get("interpolation", "bicubic"))
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _stratified_split(ys: Sequence[int], fractions: tuple[float, float], seed: int):
    """Per-class shuffle, then cut into train/val/test (val, test fractions given)."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(ys):
        by_class.setdefault(y, []).append(i)
    train, val, test = [], [], []
    val_f, test_f = fractions
    for _, idx in sorted(by_class.items()):
        rng.shuffle(idx)
        n = len(idx)
        n_test = max(1, int(round(n * test_f)))
        n_val = max(1, int(round(n * val_f)))
        test += idx[:n_test]
        val += idx[n_test:n_test + n_val]
        train += idx[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test)


def load_image_data(path: str | Path, preprocessing: dict[str, Any], seed: int = 0,
                    val_fraction: float = 0.15, test_fraction: float = 0.35,
                    max_per_class: int | None = None, progress: bool = False) -> ImageData:
    """Read, preprocess and split an ImageFolder. Unreadable images are skipped
    with a warning; a class with too few usable images is an error."""
    classes, items = list_image_folder(path)
    listed = [f for f, _ in items]
    if max_per_class:
        rng = random.Random(seed)
        per: dict[int, list] = {}
        for it in items:
            per.setdefault(it[1], []).append(it)
        items = []
        for ci in sorted(per):
            lst = per[ci]
            rng.shuffle(lst)
            items += sorted(lst[:max_per_class])
    xs, ys, used, bad = [], [], [], 0
    bad_names: list[str] = []  # the first few, for the summary warning
    unused = set(listed) - {f for f, _ in items}
    it = items
    if progress:
        from tqdm import tqdm
        # disable=None: no bar when stderr is not a terminal (logs, CI, pipes)
        it = tqdm(items, desc="reading images", unit="img", leave=False, disable=None)
    for f, ci in it:
        try:
            xs.append(load_image(f, preprocessing))
            ys.append(ci)
            used.append(f)
        except Exception as e:  # corrupt/truncated/unsupported: count and go on
            bad += 1
            unused.add(f)
            if len(bad_names) < 3:
                bad_names.append(f"{relative_name(path, f)} ({type(e).__name__})")
    if bad:  # one summary, not one line per file
        more = f", and {bad - len(bad_names)} more" if bad > len(bad_names) else ""
        log.warning("skipped %d unreadable image(s) under %s: %s%s", bad, path, ", ".join(bad_names), more)
    counts = {c: ys.count(i) for i, c in enumerate(classes)}
    short = {c: n for c, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if short:
        raise BadInput(f"--data {path}: classes {short} have fewer than {MIN_IMAGES_PER_CLASS} usable images; add images or remove those folders")
    x = torch.stack(xs)
    y = torch.tensor(ys, dtype=torch.long)
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32)
    tr, va, te = _stratified_split(ys, (val_fraction, test_fraction), seed)
    names = [relative_name(path, f) for f in used]

    def mk(idx: list[int]) -> Split:
        t = torch.tensor(idx, dtype=torch.long)
        return Split(x[t], y[t], mean, std, [names[i] for i in idx])

    return ImageData(classes, mk(tr), mk(va), mk(te), skipped=bad, root=str(path), seed=seed,
                     ignored=sorted(relative_name(path, f) for f in unused))


def relative_name(root: str | Path, f: Path) -> str:
    """A file's name relative to --data (its own name when --data is the file)."""
    root = Path(root)
    return f.name if root.is_file() else f.relative_to(root).as_posix()


def load_image_files(root: str | Path, names: Sequence[str], labels: Sequence[str],
                     preprocessing: dict[str, Any]) -> Split:
    """Exactly the listed images (class = first folder of the name), in order.

    Used for recorded splits (pocketsize.splits): a file that cannot be read
    now is an error, not a skip, since the record says it was readable."""
    root = Path(root)
    index = {c: i for i, c in enumerate(labels)}
    xs, ys = [], []
    for name in names:
        try:
            xs.append(load_image(root / name, preprocessing))
        except Exception as e:
            raise BadInput(f"--data {root}: {name} cannot be read ({type(e).__name__}); "
                           "pass the data compress used or re-run pocketsize compress") from None
        ys.append(index[class_of(name)])
    _, h, w = preprocessing["input_size"]
    x = torch.stack(xs) if xs else torch.empty((0, 3, int(h), int(w)), dtype=torch.uint8)
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32)
    return Split(x, torch.tensor(ys, dtype=torch.long), mean, std, list(names))
