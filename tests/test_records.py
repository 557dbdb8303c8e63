"""Typed cross-stage records (manifest.json, results.json) and bench's artifact integrity check.

Tiny in-process artifacts (bench_helpers.tiny_export: a random 2-block ViT as
.pte + .onnx), so the whole file runs in well under a minute once they exist.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest

from pocketsize.benchmarks.results import Result, Results
from pocketsize.errors import BadInput
from pocketsize.export.manifest import Artifact, ArtifactMismatch, Manifest, Parity

pytest.importorskip("executorch")
pytest.importorskip("onnxruntime")

from bench_helpers import cached_exports  # noqa: E402
from pocketsize.benchmarks import BenchConfig, run  # noqa: E402

QUICK = dict(warmup=0, iterations=3, timeout_s=120)


@pytest.fixture()
def art(tmp_path) -> Path:
    """A fresh copy of one tiny export folder (model.pte, model.onnx, manifest.json)."""
    cached_exports(tmp_path / "exports")
    return tmp_path / "exports" / "original"


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write(folder: Path, d: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(d))


def _flip_middle(path: Path, n: int = 256) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2 - n // 2
    assert mid > 0, f"{path} is too small to corrupt"
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def _cli_bench(folder: Path, out: Path, *extra: str) -> int:
    from pocketsize.cli import bench as cli

    parser = argparse.ArgumentParser(prog="pocketsize")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", str(folder), "--device", "local", "--warmup", "0",
                              "--iterations", "3", "--out", str(out), *extra])
    return args.func(args)


# --- round trips -------------------------------------------------------------------------

def test_manifest_round_trips_and_verifies(art):
    m = Manifest.load(art)
    assert m.version == 1 and m.task == "image-classification"
    assert {a.format for a in m.artifacts} == {"executorch", "onnx"}
    assert isinstance(m.artifacts[0].parity, Parity)
    assert Manifest.from_json(m.to_json(), "again") == m
    assert m.to_json() == _manifest(art)  # exactly the keys on disk, nothing added or lost
    for a in m.artifacts:
        a.verify(art)  # untouched files match
    # the contract keys are always written
    a = m.to_json()["artifacts"][0]
    assert {"format", "path", "bytes", "sha256", "quantize", "parity", "delegation"} <= set(a)
    assert {"checked", "max_abs_diff", "top1_agreement", "reason"} <= set(a["parity"])


def test_target_facts_stay_flat_and_known():
    d = {"format": "onnx", "path": "model.onnx", "bytes": 1, "sha256": "0" * 64, "quantize": "none",
         "parity": {"checked": False, "max_abs_diff": None, "top1_agreement": None, "reason": "x"},
         "opset": 18, "ops": ["Add"]}
    a = Artifact.from_json(d, "m.json")
    assert a.target_info == {"opset": 18, "ops": ["Add"]}
    assert a.to_json()["opset"] == 18 and Artifact.from_json(a.to_json(), "again") == a
    with pytest.raises(BadInput, match="unknown field 'made_up'"):
        Artifact.from_json({**d, "made_up": 1}, "m.json")


def test_results_round_trip(art, tmp_path):
    doc = run(art, "local", BenchConfig(formats=("onnx",), **QUICK), out_dir=tmp_path / "o")
    res = Results.load(tmp_path / "o")
    assert res.to_json() == json.loads((tmp_path / "o" / "results.json").read_text()) == json.loads(json.dumps(doc))
    assert Results.from_json(res.to_json(), "again") == res
    r = res.results[0]
    assert isinstance(r, Result) and r.ok and r.integrity == "verified" and r.latency_ms["p50"] > 0
    assert r["latency_ms"] is r.latency_ms and r.get("nope", 7) == 7  # the dict view report.py uses
    assert {"kind", "name", "os", "arch", "cpu", "emulated"} <= set(res.to_json()["device"])


# --- strictness: exit 2 naming the file and the field --------------------------------------

@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(surprise=1), "unknown field 'surprise'"),
    (lambda d: d.pop("source"), "required field 'source'"),
    (lambda d: d["artifacts"][0].pop("sha256"), "required field 'sha256'"),
    (lambda d: d["artifacts"][0]["parity"].update(extra=True), "unknown field 'extra'"),
    (lambda d: d.pop("format_version"), "required field 'format_version'"),
    (lambda d: d.update(format_version=99), "upgrade pocketsize"),
])
def test_bad_manifest_is_exit_2_naming_file_and_field(art, tmp_path, edit, field):
    d = _manifest(art)
    edit(d)
    _write(art, d)
    with pytest.raises(BadInput, match=field) as e:
        Manifest.load(art)
    msg = str(e.value)
    assert e.value.exit_code == 2 and str(art / "manifest.json") in msg and "\n" not in msg
    if "upgrade" not in field:
        assert "pocketsize export" in msg
    with pytest.raises(BadInput):  # bench refuses it before anything runs
        run(art, "local", BenchConfig(**QUICK), out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bad_results_is_exit_2_naming_the_file(art, tmp_path):
    run(art, "local", BenchConfig(formats=("onnx",), **QUICK), out_dir=tmp_path / "o")
    path = tmp_path / "o" / "results.json"
    d = json.loads(path.read_text())
    d["results"][0]["latency"] = d["results"][0].pop("latency_ms")
    path.write_text(json.dumps(d))
    with pytest.raises(BadInput, match="results.json.*latency_ms.*pocketsize bench") as e:
        Results.load(path)
    assert e.value.exit_code == 2


# --- integrity: the file bench runs is the file export checked -------------------------------

@pytest.mark.parametrize("name", ["model.onnx", "model.pte"])
def test_corrupted_artifact_fails_its_row_and_the_cli_exits_3(art, tmp_path, capsys, name):
    _flip_middle(art / name)
    a = next(a for a in Manifest.load(art).artifacts if a.path == name)
    with pytest.raises(ArtifactMismatch, match=f"{name} does not match manifest.json's sha256"):
        a.verify(art)
    assert _cli_bench(art, tmp_path / "o") == 3  # before: 0, the corrupted file was timed as the model
    rows = {r["artifact"].rsplit("/", 1)[-1]: r for r in json.loads((tmp_path / "o" / "results.json").read_text())["results"]}
    bad = rows[name]
    assert bad["status"] == "failed" and bad["integrity"] == "mismatch" and bad["timed_runs"] == 0
    assert bad["error"] == (f"{name} does not match manifest.json's sha256: the artifact was modified or "
                            "corrupted; re-run pocketsize export")
    other = next(r for n, r in rows.items() if n != name)
    assert other["status"] == "ok" and other["integrity"] == "verified"  # the others still run
    assert json.loads(capsys.readouterr().out)["failed"] == 1


def test_missing_artifact_fails_its_row(art, tmp_path):
    (art / "model.pte").unlink()
    doc = run(art, "local", BenchConfig(**QUICK), out_dir=tmp_path / "o")
    r = next(r for r in doc["results"] if r["format"] == "executorch")
    assert r["status"] == "failed" and "missing" in r["error"] and r["integrity"] == "mismatch"


@pytest.mark.parametrize("path", ["../x.onnx", "/etc/passwd", "sub/../../x.onnx", "C:\\x.onnx", "link.onnx"])
def test_paths_outside_the_folder_are_exit_2_before_anything_runs(art, tmp_path, path):
    if path == "link.onnx":  # a symlink that leaves the folder
        outside = tmp_path / "outside.onnx"
        shutil.copy(art / "model.onnx", outside)
        os.symlink(outside, art / "link.onnx")
    d = _manifest(art)
    d["artifacts"][1]["path"] = path
    _write(art, d)
    with pytest.raises(BadInput, match="inside the export folder") as e:
        Manifest.load(art)
    assert e.value.exit_code == 2 and "manifest.json" in str(e.value)
    with pytest.raises(BadInput):
        _cli_bench(art, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --- causal LMs -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore")
def test_llm_manifest_loads(tmp_path, torch_one_thread):
    from lm_helpers import write_corpus

    from pocketsize import export

    corpus = write_corpus(tmp_path / "c", ("llama",), layers=2, mlp=128)
    d = export.export(corpus / "llama", tmp_path / "out", export.ExportConfig(targets="onnx", lm_cache_len=32))
    m = Manifest.load(tmp_path / "out")
    assert m.task == "causal-lm" and m.llm["cache_len"] == 32 and m.llm["tokenizer"] == "tokenizer"
    assert m.to_json() == d == _manifest(tmp_path / "out")
    a = m.artifacts[0]
    assert a.parity.greedy["match"] and a.parity.passed
    a.verify(tmp_path / "out")
    bad = {**d, "llm": {k: v for k, v in d["llm"].items() if k != "vocab_size"}}
    with pytest.raises(BadInput, match="llm lacks the required field 'vocab_size'"):
        Manifest.from_json(bad, "m.json")
