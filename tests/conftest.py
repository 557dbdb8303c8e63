"""Shared, generic fixtures: synthetic image folders and a single-threaded torch.

Kept light on purpose (no torch import at module level) so that collecting the
tests of other stages stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

# class-dependent base colours: a linear probe separates them easily
_COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220), (220, 40, 220)]


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 40, seed: int = 0,
                       noise: float = 30.0) -> Path:
    """An ImageFolder layout (root/class_k/*.png) of noisy solid-colour PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci in range(classes):
        d = root / f"class_{ci}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.array(_COLOURS[ci % len(_COLOURS)], dtype=np.float64)
        for i in range(per_class):
            a = base[None, None, :] + rng.normal(0.0, noise, (size, size, 3))
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"img_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder_factory(tmp_path_factory) -> Callable[..., Path]:
    """``make(classes=3, per_class=12, size=40, seed=0)`` -> a fresh ImageFolder path."""
    counter = {"n": 0}

    def make(**kw) -> Path:
        counter["n"] += 1
        return write_image_folder(tmp_path_factory.mktemp(f"images{counter['n']}"), **kw)

    return make


@pytest.fixture(scope="session")
def image_folder(image_folder_factory) -> Path:
    """3 classes x 12 synthetic PNGs (40 px), shared read-only by a session."""
    return image_folder_factory()


@pytest.fixture
def torch_one_thread():
    """Run a test on one torch thread (shared CI cores; also steadier timings)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# --- tiny random ViTs of every supported family --------------------------------

TINY = dict(img=32, patch=8, dim=64, depth=3, heads=4)
TINY_VIT_KINDS = ("timm", "timm-dinov2-reg", "hf-vit", "hf-vit-model", "hf-deit", "hf-dinov2", "hf-dinov2-cls")


def build_tiny_vit(kind: str, num_classes: int = 0, seed: int = 0):
    """A tiny randomly initialised ViT (img 32, patch 8, dim 64, depth 3, 4 heads).

    kind: ``timm`` (vit_tiny_patch16_224 layout), ``timm-dinov2-reg`` (timm's
    DINOv2 with register tokens and layer scale, patch 14 on 28 px), ``hf-vit``
    (ViTForImageClassification), ``hf-vit-model`` (bare ViTModel, with pooler), ``hf-deit``, ``hf-dinov2`` (bare Dinov2Model)
    or ``hf-dinov2-cls`` (Dinov2ForImageClassification). HF classifiers get
    ``max(num_classes, 2)`` labels.
    """
    import torch

    torch.manual_seed(seed)
    t = TINY
    if kind == "timm":
        import timm

        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=t["img"], patch_size=t["patch"],
                              embed_dim=t["dim"], depth=t["depth"], num_heads=t["heads"], num_classes=num_classes)
    elif kind == "timm-dinov2-reg":
        import timm

        m = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28, patch_size=14,
                              embed_dim=t["dim"], depth=t["depth"], num_heads=t["heads"], num_classes=num_classes)
    else:
        import transformers as tr

        n = max(num_classes, 2)
        common = dict(image_size=t["img"], patch_size=t["patch"], hidden_size=t["dim"], num_hidden_layers=t["depth"],
                      num_attention_heads=t["heads"])
        if kind == "hf-vit":
            m = tr.ViTForImageClassification(tr.ViTConfig(intermediate_size=128, num_labels=n, **common))
        elif kind == "hf-vit-model":
            m = tr.ViTModel(tr.ViTConfig(intermediate_size=128, **common))
        elif kind == "hf-deit":
            m = tr.DeiTForImageClassification(tr.DeiTConfig(intermediate_size=128, num_labels=n, **common))
        elif kind == "hf-dinov2":
            m = tr.Dinov2Model(tr.Dinov2Config(mlp_ratio=2, **common))
        elif kind == "hf-dinov2-cls":
            m = tr.Dinov2ForImageClassification(tr.Dinov2Config(mlp_ratio=2, num_labels=n, **common))
        else:
            raise ValueError(f"unknown tiny ViT kind {kind!r}; valid: {TINY_VIT_KINDS}")
    return m.eval()


@pytest.fixture(scope="session")
def tiny_vit():
    """Factory fixture: ``tiny_vit(kind, num_classes=0, seed=0)``, see build_tiny_vit."""
    return build_tiny_vit


# --- CI cannot pass by skipping ----------------------------------------------------
# scripts/setup.sh installs every real component the tests use (qemu-aarch64, the
# aarch64 cross-compiler, sshd, Chromium, Fashion-MNIST, fortunes, the zoo
# packages, the export toolchains, ktlint). Under CI=true a test that skips
# because one of them is missing would turn a broken setup green, so such a
# skip is reported as a failure. Only what CI can never have is allowed to skip.
_CI_MAY_SKIP = ("needs a CUDA device",)


def _ci() -> bool:
    import os

    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip_reason(report) -> str:
    lr = report.longrepr
    return str(lr[2]) if isinstance(lr, tuple) and len(lr) == 3 else str(lr)


def _fail_skip(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):  # an expected failure is not a skip
        return
    reason = _skip_reason(report)
    if _ci() and not any(ok in reason for ok in _CI_MAY_SKIP):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true ({reason}); scripts/setup.sh should have installed "
                           "this component: fix the setup, do not skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result())
