"""Faults a hostile user found in model/data handling, one regression test each:
NaN/inf outputs never pass parity; model.safetensors is hash-verified; 16-bit
images are scaled, not clipped; broken model folders exit 2 with one line;
Ctrl-C while coremltools imports is not swallowed; messages name the right flag."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

from pocketsize.cli import main
from pocketsize.errors import BadInput

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore")]


def _cli(argv, capsys) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    _, err = capsys.readouterr()
    return rc, err


def _error_lines(err: str) -> list[str]:
    """stderr lines that are not log records (INFO/WARNING ... from logging)."""
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("INFO ", "WARNING ", "DEBUG "))]


def _one_line_error(err: str) -> str:
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "\x1b[" not in err, err
    assert lines[0].startswith("pocketsize: error: "), err
    return lines[0]


# --- a tiny pruned timm ViT saved as a pocketsize model folder --------------------

def _pocketsize_dir(root: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_export import make_loaded  # the tiny (pruned) timm ViT of the export tests

    from pocketsize.loading import save_model_dir

    save_model_dir(make_loaded("timm-pruned"), root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A pristine pocketsize model folder; tests copy it before damaging it."""
    return _pocketsize_dir(tmp_path_factory.mktemp("pocketsize_model"))


@pytest.fixture
def model_dir(saved, tmp_path) -> Path:
    import shutil

    d = tmp_path / "c" / "model"
    shutil.copytree(saved, d)
    return d


def _export(model: Path, out: Path, capsys) -> tuple[int, str]:
    return _cli(["export", model, "--to", "onnx", "--out", out, "--parity-samples", "2"], capsys)


def _meta(d: Path) -> dict:
    return json.loads((d / "pocketsize.json").read_text())


def _write_meta(d: Path, meta: dict) -> None:
    (d / "pocketsize.json").write_text(json.dumps(meta))


# --- 1. parity: NaN / inf never pass -------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_parity_fails_on_non_finite_artifact_output(precision, bad):
    from pocketsize.export import ExportConfig
    from pocketsize.export.parity import compare

    ref = torch.randn(8, 3)
    for out in (torch.full((8, 3), bad), ref.clone().index_put_((torch.tensor([3]), torch.tensor([1])),
                                                               torch.tensor(bad))):
        rec = compare(ref, out, precision, ExportConfig())
        assert rec["passed"] is False, rec
        assert "non-finite" in rec["reason"] and "artifact" in rec["reason"], rec
        json.dumps(rec, allow_nan=False)  # the manifest stays valid JSON
    rec = compare(torch.full((8, 3), bad), ref, precision, ExportConfig())  # a broken reference too
    assert rec["passed"] is False and "eager model" in rec["reason"]


def test_lm_parity_fails_on_nan_logits():
    from pocketsize.export import ExportConfig
    from pocketsize.export.llm import compare_lm

    torch.manual_seed(0)
    ref = torch.randn(6, 11)
    tokens = [int(t) for t in ref[2:].argmax(-1)]
    out = ref.clone()
    out[4, 3] = float("nan")  # argmax still agrees: only the NaN check can catch it
    rec = compare_lm(ref, out, tokens, 3, "fp32", ExportConfig())
    assert rec["passed"] is False and "non-finite" in rec["reason"], rec
    assert compare_lm(ref, ref.clone(), tokens, 3, "fp32", ExportConfig())["passed"] is True


# --- 2. weights integrity -----------------------------------------------------------

def test_compress_records_the_weights_sha256(saved):
    want = hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    assert _meta(saved)["weights_sha256"] == want


def test_flipped_bytes_in_the_weights_exit_2(model_dir, tmp_path, capsys):
    w = model_dir / "model.safetensors"
    b = bytearray(w.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 64] = bytes(x ^ 0xFF for x in b[mid:mid + 64])
    w.write_bytes(bytes(b))
    rc, err = _export(model_dir, tmp_path / "o", capsys)
    line = _one_line_error(err)
    assert rc == 2, err
    assert "model.safetensors does not match the sha256 in" in line and "pocketsize.json" in line, line
    assert "re-run pocketsize compress" in line
    assert not (tmp_path / "o").exists()


def test_folder_without_hash_still_loads_with_a_warning(model_dir, caplog):
    from pocketsize.loading import load_model

    meta = _meta(model_dir)
    del meta["weights_sha256"]
    _write_meta(model_dir, meta)
    with caplog.at_level(logging.WARNING, logger="pocketsize.loading"):
        loaded = load_model(model_dir)
    assert loaded.model is not None
    assert any("weights_sha256" in r.getMessage() for r in caplog.records), caplog.text


def test_a_nan_weight_fails_parity(model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    w = model_dir / "model.safetensors"
    tensors = load_file(str(w))
    key = next(k for k in tensors if k.endswith("mlp.fc1.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(w), metadata={"format": "pt"})
    meta = _meta(model_dir)
    meta["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()  # a consistent but poisoned folder
    _write_meta(model_dir, meta)
    rc, err = _export(model_dir, tmp_path / "o", capsys)
    assert rc == 3, err
    art = json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"][0]
    assert art["parity"]["passed"] is False and "non-finite" in art["parity"]["reason"], art["parity"]


# --- 3. 16-bit and float images -----------------------------------------------------

def test_16_bit_images_scale_like_8_bit(tmp_path):
    import numpy as np
    from PIL import Image

    from pocketsize.data import load_image

    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (24, 24)).astype(np.uint8)
    a8[0, 0], a8[0, 1] = 0, 255  # the full range
    Image.fromarray(a8).save(tmp_path / "8.png")
    Image.fromarray(a8.astype(np.uint16) * 257).save(tmp_path / "16.png")  # PIL mode "I;16"
    assert Image.open(tmp_path / "16.png").mode.startswith("I;16")
    Image.fromarray(a8.astype(np.int32) * 257, mode="I").save(tmp_path / "32.tif")
    Image.fromarray(a8.astype(np.float32) / 255.0, mode="F").save(tmp_path / "f.tif")
    pp = {"input_size": [3, 24, 24], "crop_pct": 1.0, "interpolation": "bilinear"}
    ref = load_image(tmp_path / "8.png", pp).float() / 255.0
    for name in ("16.png", "32.tif", "f.tif"):
        got = load_image(tmp_path / name, pp).float() / 255.0
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1 / 255 + 1e-6, name


# --- 4. broken model folders: exit 2, one line ------------------------------------------

@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory, tiny_vit) -> Path:
    d = tmp_path_factory.mktemp("hf_vit")
    tiny_vit("hf-vit", num_classes=3).save_pretrained(d)
    return d


def _compress_bad_model(model: Path, image_folder: Path, tmp_path: Path, capsys) -> str:
    rc, err = _cli(["compress", model, "--data", image_folder, "--out", tmp_path / "o", "--steps", "1",
                    "--recovery-steps", "1"], capsys)
    line = _one_line_error(err)
    assert rc == 2, err
    assert not (tmp_path / "o").exists()
    return line


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_config_without_model_type_exits_2(hf_saved, image_folder, tmp_path, capsys):
    d = _copy(hf_saved, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    line = _compress_bad_model(d, image_folder, tmp_path, capsys)
    assert "model_type" in line and "config.json" in line, line


def test_truncated_safetensors_exits_2(hf_saved, image_folder, tmp_path, capsys):
    d = _copy(hf_saved, tmp_path / "m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    line = _compress_bad_model(d, image_folder, tmp_path, capsys)
    assert "model.safetensors" in line and "truncated" in line, line


def test_pickle_only_checkpoint_is_refused_with_a_conversion_hint(hf_saved, image_folder, tmp_path, capsys):
    d = _copy(hf_saved, tmp_path / "m")
    from safetensors.torch import load_file

    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    line = _compress_bad_model(d, image_folder, tmp_path, capsys)
    assert "pytorch_model.bin" in line and "safetensors only" in line and "convert" in line, line
    for unsafe in ("weights_only", "trust", "pickle=", "allow"):
        assert unsafe not in line, line
    assert line.endswith("directory"), line  # whole, not cut mid-word


# --- 5. widths that disagree with the weights -------------------------------------------

def test_widths_disagreeing_with_weights_is_one_line(model_dir, tmp_path, capsys):
    meta = _meta(model_dir)
    meta["layers"][0]["mlp_hidden"] += 8
    _write_meta(model_dir, meta)
    rc, err = _export(model_dir, tmp_path / "o", capsys)
    line = _one_line_error(err)
    assert rc == 2, err
    assert "pocketsize.json" in line and "mlp" in line, line


# --- 6. Ctrl-C while coremltools imports ------------------------------------------------

FAKE_COREMLTOOLS = """
import os, signal, time
try:  # coremltools' own __init__ wraps imports like this
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
except:
    pass
class target:
    iOS17 = 17
"""


def test_ctrl_c_during_coremltools_import_is_not_swallowed(tmp_path, monkeypatch):
    import signal

    from pocketsize.export.targets import coreml

    fake = tmp_path / "fake" / "coremltools"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_COREMLTOOLS)
    for k in [k for k in sys.modules if k == "coremltools" or k.startswith("coremltools.")]:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.setattr(signal, "SIGINT", signal.SIGINT)  # (no-op: keeps monkeypatch's order simple)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            coreml.deployment_target("iOS17")
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.modules.pop("coremltools", None)  # the fake; monkeypatch puts the real one back


# --- 7. messages name the flag the user typed ---------------------------------------------

def test_torch_device_errors_name_torch_device():
    from pocketsize.compress.config import PruneConfig
    from pocketsize.compress.steps import resolve_device

    with pytest.raises(BadInput, match="--torch-device"):
        PruneConfig(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput) as e:
            resolve_device("cuda")
        assert "--torch-device" in str(e.value) and " --device" not in str(e.value)


@pytest.mark.parametrize("size", ["0", "-5"])
def test_image_size_zero_or_negative_exits_2(size, tmp_path, capsys):
    rc, err = _cli(["compress", tmp_path / "no-model", "--data", tmp_path, "--out", tmp_path / "o",
                    "--image-size", size], capsys)
    line = _one_line_error(err)
    assert rc == 2 and "--image-size" in line, err


def test_missing_generic_is_reported_as_generic(saved, image_folder, tmp_path, capsys):
    rc, err = _cli(["compress", saved, "--data", image_folder, "--out", tmp_path / "o", "--generic",
                    tmp_path / "nope", "--steps", "1", "--recovery-steps", "1"], capsys)
    line = _one_line_error(err)
    assert rc == 2 and line.startswith("pocketsize: error: --generic ") and "does not exist" in line, err


def test_unusable_generic_folder_is_reported_as_generic(saved, image_folder, tmp_path):
    from pocketsize.compress import prune
    from pocketsize.compress.config import PruneConfig

    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput) as e:
        prune(str(saved), str(image_folder), PruneConfig(steps=1, recovery_steps=1), generic=str(tmp_path / "empty"))
    assert str(e.value).startswith("--generic "), e.value


def test_parser_errors_do_not_double_the_program_name(capsys):
    rc, err = _cli(["pocketsize", "--help"], capsys)
    assert rc == 2 and "pocketsize pocketsize" not in err and "`pocketsize --help`" in err, err
    rc, err = _cli(["compress"], capsys)
    assert rc == 2 and "`pocketsize compress --help`" in err, err


@pytest.mark.parametrize("kw, flag", [
    (dict(timeout_s=0), "--timeout"), (dict(min_duration_s=float("nan")), "--min-duration"),
    (dict(eval_samples=-1), "--eval-samples"), (dict(formats=("tflite",)), "--formats"),
    (dict(warmup=-1), "--warmup"),
])
def test_bench_config_messages_name_the_flag(kw, flag):
    from pocketsize.benchmarks import BenchConfig

    with pytest.raises(BadInput) as e:
        BenchConfig(**kw)
    msg = str(e.value)
    assert flag in msg and "=" not in msg.split(":")[0], msg
    for internal in ("timeout_s", "min_duration_s", "eval_samples", "formats="):
        assert internal not in msg, msg


@pytest.mark.parametrize("kw, flag", [(dict(steps=0), "--steps"), (dict(recovery_steps=-1), "--recovery-steps")])
def test_prune_config_messages_name_the_flag(kw, flag):
    from pocketsize.compress.config import PruneConfig

    with pytest.raises(BadInput) as e:
        PruneConfig(**kw)
    assert str(e.value).startswith(flag + " "), e.value
    assert "steps=" not in str(e.value)


def test_a_corrupt_folder_gives_one_summary_warning(tmp_path, caplog):
    from conftest import write_image_folder

    from pocketsize.data import load_image_data

    root = write_image_folder(tmp_path / "d", classes=2, per_class=6, size=16)
    for i in range(120):
        (root / f"class_{i % 2}" / f"broken_{i:03d}.png").write_bytes(b"not a png" * 3)
    pp = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3}
    with caplog.at_level(logging.WARNING, logger="pocketsize.data"):
        data = load_image_data(root, pp)
    assert data.skipped == 120
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "pocketsize.data"]
    assert len(warnings) == 1, warnings[:5]
    assert "120" in warnings[0] and "broken_000.png" in warnings[0] and "more" in warnings[0], warnings[0]
    assert math.isfinite(len(warnings[0])) and len(warnings[0]) < 400
