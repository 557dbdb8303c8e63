"""split.json: compress records its split file by file; export parity and bench
accuracy evaluate exactly the recorded test files, and a --data folder that no
longer matches the record is bad input (exit 2, one line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pocketsize.cli import main

from cli_helpers import cli  # tests/ is on sys.path
from pocketsize.errors import BadInput
from pocketsize.data import class_spread
from pocketsize.splits import SPLIT_FILE, Entry, SplitRecord, check_data, load_chunks, record_of

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

QUICK = ["--steps", "2", "--recovery-steps", "2"]




@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_vit, image_folder_factory) -> tuple[Path, Path]:
    """(DIR written by `pocketsize compress`, its --data folder)."""
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("splits")
    save_for_hf(tiny_vit("timm", num_classes=3), root / "vit", safe_serialization=True)
    data = image_folder_factory(classes=3, per_class=12)
    rc = main([str(a) for a in ["compress", root / "vit", "--data", data, "--out", root / "c", "--ratio", "0.6",
                                "--seed", "3", *QUICK]])
    assert rc == 0
    return root / "c", data


@pytest.fixture(scope="module")
def exported(compressed, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    c, data = compressed
    out = tmp_path_factory.mktemp("exp") / "e"
    assert main(["export", str(c / "model"), "--to", "onnx", "--data", str(data), "--out", str(out)]) == 0
    return out


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}


def _spy(monkeypatch) -> list[list[str]]:
    """Every list of images pocketsize decodes through the recorded split."""
    import pocketsize.data

    calls: list[list[str]] = []
    real = pocketsize.data.load_image_files

    def spy(root, names, labels, pp):
        calls.append(list(names))
        return real(root, names, labels, pp)

    monkeypatch.setattr(pocketsize.data, "load_image_files", spy)
    return calls


def _edited(data: Path, tmp_path: Path) -> Path:
    """A copy of ``data`` with one image edited, one added to a class and one removed."""
    from PIL import Image

    d = tmp_path / "edited"
    shutil.copytree(data, d)
    with Image.open(d / "class_0" / "img_003.png") as im:
        im.convert("RGB").rotate(90).save(d / "class_0" / "img_003.png")
    shutil.copy(d / "class_1" / "img_000.png", d / "class_1" / "img_new.png")
    (d / "class_2" / "img_005.png").unlink()
    return d


# --- the record ---------------------------------------------------------------------------

def test_compress_records_a_disjoint_split_of_every_file(compressed):
    c, data = compressed
    assert (c / SPLIT_FILE).read_bytes() == (c / "model" / SPLIT_FILE).read_bytes()
    rec = SplitRecord.load(c / SPLIT_FILE)
    assert (rec.seed, rec.task, rec.labels) == (3, "image-classification", ["class_0", "class_1", "class_2"])
    parts = [set(rec.files(p)) for p in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts, rec.files("ignored")) == _files(data)
    assert all(len(e.sha256) == 64 for e in rec.test)
    check_data(rec, data)  # unchanged folder: no error


def test_record_round_trips(compressed, tmp_path):
    rec = SplitRecord.load(compressed[0] / SPLIT_FILE)
    assert SplitRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    text = SplitRecord(0, "causal-lm", [Entry("a.txt", "0" * 64, 2, (5, 21))], [],
                       [Entry("a.txt", "0" * 64, 0, (0, 16)), Entry("b.txt", "1" * 64, 1, (0, 16))], seq_len=16)
    text.save(tmp_path / SPLIT_FILE)
    assert SplitRecord.load(tmp_path / SPLIT_FILE) == text


@pytest.mark.parametrize("mutate", ["unknown-field", "missing-field", "bad-entry", "not-json", "version"])
def test_corrupt_split_json_is_bad_input(compressed, tmp_path, mutate):
    d = json.loads((compressed[0] / SPLIT_FILE).read_text())
    if mutate == "unknown-field":
        d["shuffle"] = True
    elif mutate == "missing-field":
        del d["test"]
    elif mutate == "bad-entry":
        d["test"][0] = {"file": "x.png", "sha256": "0", "colour": "red"}
    elif mutate == "version":
        d["format_version"] = 99
    path = tmp_path / SPLIT_FILE
    path.write_text("{not json" if mutate == "not-json" else json.dumps(d))
    with pytest.raises(BadInput, match=str(path)):
        SplitRecord.load(path)


def test_corrupt_split_json_exits_2_on_export(compressed, tmp_path, capsys):
    c, data = compressed
    model = tmp_path / "model"
    shutil.copytree(c / "model", model)
    d = json.loads((model / SPLIT_FILE).read_text())
    (model / SPLIT_FILE).write_text(json.dumps({**d, "extra": 1}))
    rc, _out, err = cli(["export", model, "--to", "onnx", "--data", data, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "extra" in err, err
    assert not (tmp_path / "o").exists()


# --- no training image reaches a held-out number ----------------------------------------

def test_export_parity_runs_on_exactly_the_recorded_test_files(compressed, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    c, data = compressed
    rec = SplitRecord.load(c / SPLIT_FILE)
    calls = _spy(monkeypatch)
    out = tmp_path / "e"
    assert main(["export", str(c / "model"), "--to", "onnx", "--quantize", "int8", "--data", str(data),
                 "--out", str(out), "--calib-samples", "5"]) in (0, 3)  # int8 parity may fail; the inputs count
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity_inputs"]["files"] == rec.files("test")
    assert m["parity_inputs"]["samples"] == len(rec.test)
    train = rec.files("train")
    spread = [train[i] for i in class_spread([f.split("/")[0] for f in train], 5)]
    assert calls[0] == rec.files("test") and calls[1] == spread
    assert len({f.split("/")[0] for f in calls[1]}) > 1  # calibrated on every class, not the first one's images
    assert not set(calls[0]) & set(rec.files("train"))
    assert m["parity_inputs"]["calibration"] == "training split"
    assert (out / SPLIT_FILE).read_bytes() == (c / SPLIT_FILE).read_bytes()  # bench finds it here


def test_bench_evaluates_exactly_the_recorded_test_files(compressed, exported, tmp_path, monkeypatch, capsys):
    c, data = compressed
    rec = SplitRecord.load(c / SPLIT_FILE)
    calls = _spy(monkeypatch)
    rc, _out, err = cli(["bench", exported, "--device", "local", "--data", data, "--warmup", "0",
                         "--iterations", "2", "--out", tmp_path / "b"], capsys)
    assert rc == 0, err
    evaluated = [n for call in calls for n in call]
    assert evaluated == rec.files("test") and not set(evaluated) & set(rec.files("train"))
    r = json.loads((tmp_path / "b" / "results.json").read_text())["results"][0]
    assert r["eval_samples"] == len(rec.test) and r["accuracy"] is not None


# --- a changed --data folder is bad input -------------------------------------------------

def _one_line_mismatch(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, err)
    return lines[0]


def test_changed_data_exits_2_on_export(compressed, tmp_path, capsys):
    c, data = compressed
    edited = _edited(data, tmp_path)
    rc, _out, err = cli(["export", c / "model", "--to", "onnx", "--data", edited, "--out", tmp_path / "o"], capsys)
    line = _one_line_mismatch(rc, err)
    assert "no longer matches" in line and "1 file changed, 1 file missing, 1 file added" in line, line
    assert "(first: class_0/img_003.png)" in line and "re-run pocketsize compress" in line
    assert not (tmp_path / "o").exists()


def test_changed_data_exits_2_on_bench(compressed, exported, tmp_path, capsys):
    edited = _edited(compressed[1], tmp_path)
    rc, _out, err = cli(["bench", exported, "--device", "local", "--data", edited, "--out", tmp_path / "b"], capsys)
    line = _one_line_mismatch(rc, err)
    assert "no longer matches" in line and str(exported / SPLIT_FILE) in line, line
    assert not (tmp_path / "b").exists()


# --- the seed is not a flag of export or bench any more --------------------------------------

@pytest.mark.parametrize("verb", ["export", "bench"])
def test_seed_flag_is_rejected(verb, compressed, tmp_path, capsys):
    c, data = compressed
    extra = ["--to", "onnx"] if verb == "export" else []
    rc, _out, err = cli([verb, c / "model", *extra, "--data", data, "--out", tmp_path / "o", "--seed", "3"], capsys)
    assert rc == 2 and "--seed" in err
    assert not (tmp_path / "o").exists()


# --- a stock model: all of --data is held out ---------------------------------------------

def test_without_split_json_all_data_is_held_out(compressed, tmp_path):
    pytest.importorskip("onnxruntime")
    c, data = compressed
    stock = c.parent / "vit"
    assert main(["export", str(stock), "--to", "onnx", "--data", str(data), "--out", str(tmp_path / "e")]) == 0
    m = json.loads((tmp_path / "e" / "manifest.json").read_text())
    rec = m["parity_inputs"]
    assert rec["split"].startswith("all of --data") and sorted(rec["files"]) == sorted(_files(data))
    assert not (tmp_path / "e" / SPLIT_FILE).exists()


# --- text: chunks traced to their files ---------------------------------------------------

class CharTokenizer:
    """One token per character: enough to check chunk bookkeeping without a model."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) % 1000 + 1 for ch in text]}


def test_text_record_reproduces_the_held_out_chunks(tmp_path):
    from pocketsize.text import load_text_data

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "some personal text. " * (20 + 7 * i))
    (corpus / "empty.txt").write_text("   \n")
    tok = CharTokenizer()
    data = load_text_data(corpus, tok, seed=5, seq_len=64)
    rec = record_of(data)
    assert rec.task == "causal-lm" and rec.seq_len == 64 and rec.files("ignored") == ["empty.txt"]
    rec = SplitRecord.from_json(json.loads(json.dumps(rec.to_json())))
    for part in ("train", "val", "test"):
        assert load_chunks(rec, corpus, tok, part).ids.equal(getattr(data, part).ids), part
    check_data(rec, corpus)
    (corpus / "doc1.txt").write_text("changed")
    with pytest.raises(BadInput, match=r"1 file changed \(first: doc1.txt\)"):
        check_data(rec, corpus)
