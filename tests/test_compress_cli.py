"""`pocketsize compress` in-process: local model directories (timm save_for_hf,
transformers save_pretrained) prune to --ratio 0.5 and reload; bad input exits
2 with one line on stderr, no traceback and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketsize import compress
from pocketsize.loading import load_model
from pocketsize.compress.plan import count_params

from cli_helpers import cli  # tests/ is on sys.path

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--steps", "2", "--recovery-steps", "2"]


def _env() -> dict[str, str]:
    # one thread: the shared CI cores are oversubscribed otherwise (10x slower)
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}




# --- model directories written by the libraries' own savers -------------------

@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory, tiny_vit) -> Path:
    """timm save_for_hf: config.json (architecture + model_args) + model.safetensors,
    with an ImageNet-style head for the wrong classes (5)."""
    from timm.models import save_for_hf

    d = tmp_path_factory.mktemp("timm_save_for_hf")
    save_for_hf(tiny_vit("timm", num_classes=5), d, safe_serialization=True)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and "model_args" in cfg
    return d


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory, tiny_vit) -> Path:
    d = tmp_path_factory.mktemp("hf_dinov2_cls")
    tiny_vit("hf-dinov2-cls", num_classes=5).save_pretrained(d)
    return d


def test_load_model_reads_timm_save_for_hf(timm_dir):
    loaded = load_model(timm_dir)
    assert loaded.adapter.name == "timm-vit"
    assert loaded.meta["preprocessing"]["input_size"] == [3, 32, 32]
    assert loaded.adapter.num_classes(loaded.model) == 5
    from safetensors.torch import load_file

    saved = load_file(str(timm_dir / "model.safetensors"))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_load_model_reads_save_pretrained(dinov2_dir):
    loaded = load_model(dinov2_dir)
    assert type(loaded.model).__name__ == "Dinov2ForImageClassification"
    assert loaded.meta["preprocessing"]["input_size"] == [3, 32, 32]
    assert loaded.adapter.logits(loaded.model, torch.zeros(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("which", ["timm_dir", "dinov2_dir"])
def test_cli_prunes_local_directory_to_half(which, request, image_folder, tmp_path, capsys):
    model_dir = request.getfixturevalue(which)
    out = tmp_path / "out"
    rc, stdout, err = cli(["compress", model_dir, "--data", image_folder, "--out", out, "--ratio", "0.5", *QUICK],
                           capsys)
    assert rc == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert 0.49 <= summary["params_ratio"] <= 0.51
    assert {p.name for p in out.iterdir()} == {"model", "plan.json", "compress_report.json", "split.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left

    report = json.loads((out / "compress_report.json").read_text())
    for key in ("params_before", "params_after", "macs_before", "macs_after", "metric", "before", "after", "steps"):
        assert key in report, key
    assert report["metric"] == "accuracy"
    assert 0.49 <= report["params_after"] / report["params_before"] <= 0.51
    assert all({"ratio", "metric", "accepted"} <= set(s) for s in report["steps"])

    plan = json.loads((out / "plan.json").read_text())
    assert (plan["method"], plan["seed"], plan["ratio"]) == ("hei", 0, 0.5)
    kinds = {u["kind"] for u in plan["units"]}
    assert kinds == {"personalized", "common"}
    assert all(isinstance(u["score"], float) for u in plan["units"])

    model = compress.load(out / "model")
    assert count_params(model) == report["params_after"]
    assert not list((out / "model").glob("*.bin")) and not list((out / "model").glob("*.pt*"))  # no pickles
    again = load_model(out)  # DIR of `pocketsize compress` is a MODEL too
    assert count_params(again.model) == report["params_after"]
    logits = again.logits_module()(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert again.meta["labels"] == ["class_0", "class_1", "class_2"]


# --- bad input ----------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_vit, image_folder_factory):
    """name -> (MODEL, DATA, extra flags); every one is a user error (exit 2)."""
    import transformers as tr

    root = tmp_path_factory.mktemp("bad")
    flat = root / "flat"  # images but no class subfolders
    flat.mkdir()
    src = next((image_folder_factory(classes=2, per_class=4)).glob("class_0/*.png"))
    for i in range(6):
        (flat / f"{i}.png").write_bytes(src.read_bytes())
    one_class = image_folder_factory(classes=1, per_class=12)
    too_few = image_folder_factory(classes=2, per_class=2)
    resnet = root / "hf_resnet"
    tr.ResNetForImageClassification(tr.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                    num_labels=2)).save_pretrained(resnet)
    timm_resnet = root / "timm_resnet"
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet", pretrained=False, num_classes=2), timm_resnet,
                safe_serialization=True)
    ok_model = root / "vit"
    save_for_hf(tiny_vit("timm", num_classes=2), ok_model, safe_serialization=True)
    a_file = root / "file.txt"
    a_file.write_text("not a model")
    return {
        "missing-model": (root / "does-not-exist", None, []),
        "model-is-file": (a_file, None, []),
        "unknown-timm": ("timm:not_a_model", None, []),
        "unknown-zoo": ("zoo:not-a-zoo-model", None, []),
        "missing-data": (ok_model, root / "no-such-data", []),
        "no-class-folders": (ok_model, flat, []),
        "one-class": (ok_model, one_class, []),
        "too-few-images": (ok_model, too_few, []),
        "ratio-0": (ok_model, None, ["--ratio", "0"]),
        "ratio-1.5": (ok_model, None, ["--ratio", "1.5"]),
        "ratio-not-a-number": (ok_model, None, ["--ratio", "half"]),
        "unknown-method": (ok_model, None, ["--method", "bogus"]),
        "hf-resnet": (resnet, None, []),
        "timm-resnet": (timm_resnet, None, []),
        "unknown-device": (ok_model, None, ["--torch-device", "tpu9"]),
        **({} if torch.cuda.is_available() else {"cuda-missing": (ok_model, None, ["--torch-device", "cuda"])}),
    }


BAD = ["missing-model", "model-is-file", "unknown-timm", "unknown-zoo", "missing-data", "no-class-folders",
       "one-class", "too-few-images", "ratio-0", "ratio-1.5", "ratio-not-a-number", "unknown-method", "hf-resnet",
       "timm-resnet", "unknown-device"] + ([] if torch.cuda.is_available() else ["cuda-missing"])


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_one_line(case, bad_inputs, image_folder, tmp_path, capsys):
    model, data, extra = bad_inputs[case]
    out = tmp_path / "out"
    rc, stdout, err = cli(["compress", model, "--data", data or image_folder, "--out", out, *QUICK, *extra], capsys)
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pocketsize: error:")
    assert "Traceback" not in err and stdout == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial sibling either


def test_bad_input_messages_name_the_fix(bad_inputs, image_folder, tmp_path, capsys):
    expect = {"unknown-method": "hei", "unknown-zoo": "zoo:dinov2-small", "one-class": "at least 2",
              "ratio-1.5": "(0, 1]", "no-class-folders": "subfolder", "hf-resnet": "ResNet"}
    for case, needle in expect.items():
        model, data, extra = bad_inputs[case]
        rc, _, err = cli(["compress", model, "--data", data or image_folder, "--out", tmp_path / case, *QUICK,
                           *extra], capsys)
        assert rc == 2 and needle in err, (case, err)


def test_existing_nonempty_out_is_refused_untouched(timm_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    rc, _, err = cli(["compress", timm_dir, "--data", image_folder, "--out", out, *QUICK], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bad_input_in_a_real_process_prints_one_line(bad_inputs, image_folder, tmp_path):
    """Outside pytest's log capture: logging and library warnings must not add
    lines. One case that fails early (config) and one that fails after loading."""
    for case in ("unknown-method", "too-few-images"):
        model, data, extra = bad_inputs[case]
        out = tmp_path / case
        p = subprocess.run([sys.executable, "-m", "pocketsize.cli", "compress", str(model), "--data",
                            str(data or image_folder), "--out", str(out), *extra],
                           capture_output=True, text=True, cwd=REPO, timeout=300,
                           env=_env())
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Traceback" not in p.stderr and not out.exists()


def test_unreachable_ratio_exits_4_and_writes_nothing(timm_dir, image_folder, tmp_path, capsys):
    """Embeddings and head alone are more than 5% of the tiny model: exit 4."""
    out = tmp_path / "out"
    rc, stdout, err = cli(["compress", timm_dir, "--data", image_folder, "--out", out, "--ratio", "0.05", *QUICK],
                           capsys)
    assert rc == 4, err
    assert len(err.strip().splitlines()) == 1 and "ratio" in err and "Traceback" not in err
    assert "smallest reachable" in err  # caught up front, before any scoring or recovery
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_output(timm_dir, image_folder, tmp_path, capsys, monkeypatch):
    """Atomic outputs: a crash half-way through writing leaves neither DIR nor a partial sibling."""
    from pocketsize.compress import outputs

    def half_then_crash(pruned, dest):
        (dest / "model").mkdir()
        (dest / "plan.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "write_outputs", half_then_crash)
    rc, _, err = cli(["compress", timm_dir, "--data", image_folder, "--out", tmp_path / "out", *QUICK], capsys)
    assert rc == 1
    assert err.strip().splitlines() == ["pocketsize: error: RuntimeError: disk full (rerun with --debug for the traceback)"]
    assert list(tmp_path.iterdir()) == []


def test_debug_flag_shows_the_traceback(bad_inputs, image_folder, tmp_path, capsys):
    model, _, _ = bad_inputs["missing-model"]
    rc, _, err = cli(["--debug", "compress", model, "--data", image_folder, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("pocketsize: error:")


def test_compress_flags_reach_the_config(timm_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = cli(["compress", timm_dir, "--data", image_folder, "--out", out, "--ratio", "0.6", "--method",
                       "magnitude", "--seed", "3", "--no-buffer", "--recovery-steps", "1"], capsys)
    assert rc == 0, err
    report = json.loads((out / "compress_report.json").read_text())
    cfg = report["config"]
    assert (cfg["ratio"], cfg["method"], cfg["seed"], cfg["buffer"], cfg["recovery_steps"]) == (
        0.6, "magnitude", 3, False, 1)
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["method"], plan["seed"], plan["ratio"]) == ("magnitude", 3, 0.6)
    assert abs(report["params_ratio"] - 0.6) <= 0.01


def test_real_process_warns_about_skipped_images(timm_dir, image_folder_factory, tmp_path):
    """The CLI's logging setup lets the library's warnings through (and the run still succeeds)."""
    data = image_folder_factory(classes=2, per_class=8)
    (data / "class_1" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "pocketsize.cli", "compress", str(timm_dir), "--data", str(data),
                        "--out", str(out), *QUICK], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=_env())
    assert p.returncode == 0, p.stderr
    assert "broken.png" in p.stderr and "Traceback" not in p.stderr
    report = json.loads((out / "compress_report.json").read_text())
    assert report["data"]["skipped_images"] == 1
    assert json.loads(p.stdout.strip().splitlines()[-1])["out"] == str(out)
