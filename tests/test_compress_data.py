"""compress.data: the ImageFolder reader and its seeded, stratified split (the
held-out split that export parity and on-device accuracy reuse)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketsize.data import list_image_folder, load_image_data
from pocketsize.errors import BadInput

PP = {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
      "crop_pct": 1.0}


def test_split_is_a_pure_function_of_folder_and_seed(image_folder):
    a, b = load_image_data(image_folder, PP, seed=0), load_image_data(image_folder, PP, seed=0)
    for name in ("train", "val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    c = load_image_data(image_folder, PP, seed=1)
    assert not torch.equal(a.test.x, c.test.x)


def test_split_is_stratified_and_complete(image_folder):
    d = load_image_data(image_folder, PP, seed=0)
    assert d.labels == ["class_0", "class_1", "class_2"]
    assert len(d.train) + len(d.val) + len(d.test) == 36
    for split in (d.train, d.val, d.test):
        assert sorted(split.y.unique().tolist()) == [0, 1, 2]
        assert split.x.dtype == torch.uint8 and tuple(split.x.shape[1:]) == (3, 32, 32)
    assert d.summary() == {"classes": 3, "train": len(d.train), "val": len(d.val), "test": len(d.test),
                           "skipped_images": 0}
    # no image is in two splits
    rows = lambda s: {bytes(x.numpy().tobytes()) for x in s.x}  # noqa: E731
    assert not (rows(d.train) & rows(d.test)) and not (rows(d.val) & rows(d.test))


def test_normalized_applies_mean_and_std(image_folder):
    d = load_image_data(image_folder, PP, seed=0)
    x = d.test.normalized(0, 2)
    ref = (d.test.x[:2].float() / 255 - 0.5) / 0.25
    assert x.dtype == torch.float32 and torch.allclose(x, ref)
    xb, yb = next(d.test.batches(2))
    assert torch.allclose(xb, ref) and torch.equal(yb, d.test.y[:2])


def test_class_spread_takes_every_class_in_turn(image_folder):
    from pocketsize.data import class_spread

    keys = ["a"] * 5 + ["b"] * 3 + ["c"] * 2          # stored class by class, as splits are
    assert class_spread(keys, 3) == [0, 5, 8]          # one of each, not three a's
    assert class_spread(keys, 7) == [0, 1, 2, 5, 6, 8, 9]
    assert class_spread(keys, None) == class_spread(keys, 99) == list(range(10))
    assert class_spread(keys, 0) == []
    d = load_image_data(image_folder, PP, seed=0)
    few = d.train.spread(3)
    assert sorted(few.y.tolist()) == [0, 1, 2] and len(few.files) == 3
    assert d.train.y[:3].unique().numel() == 1  # what the first three would have been


def test_corrupt_images_are_counted_and_skipped(image_folder_factory, caplog):
    caplog.set_level(logging.WARNING, logger="pocketsize.data")
    root = image_folder_factory(classes=2, per_class=6)
    (root / "class_0" / "broken.png").write_bytes(b"this is not a png")
    (root / "class_1" / "notes.txt").write_text("ignored: not an image suffix")
    d = load_image_data(root, PP, seed=0)
    assert d.skipped == 1 and len(d.train) + len(d.val) + len(d.test) == 12
    assert "broken.png" in caplog.text


@pytest.mark.parametrize("layout,needle", [("missing", "does not exist"), ("file", "is a file"),
                                           ("flat", "no class subfolders"), ("one-class", "at least 2")])
def test_bad_layouts_raise_bad_input(layout, needle, tmp_path):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "flat":
        root.mkdir()
        (root / "a.png").write_bytes(b"")
    elif layout == "one-class":
        (root / "only").mkdir(parents=True)
        (root / "empty").mkdir()
        (root / "only" / "a.png").write_bytes(b"")
    with pytest.raises(BadInput, match=needle):
        list_image_folder(root)


def test_import_compress_stays_lean():
    """`import pocketsize.compress` is instant and the compress stage never pulls in the export toolchains."""
    code = ("import sys, pocketsize.compress\n"
            "assert 'torch' not in sys.modules, 'import pocketsize.compress imported torch'\n"
            "from pocketsize.compress import prune, load\n"
            "import pocketsize.compress.pruning, pocketsize.loading, pocketsize.compress.methods\n"
            "heavy = [m for m in ('executorch', 'onnx', 'onnxruntime', 'coremltools', 'pocketsize.export',"
            " 'pocketsize.benchmarks', 'pocketsize.cli') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
