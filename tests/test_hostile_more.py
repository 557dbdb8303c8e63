"""More faults a hostile user found, one regression test each: a hand-edited input
size never runs at chance accuracy; clamped language-model token counts are said
out loud; the .mlpackage is byte-deterministic; SIGTERM mid-export leaves nothing
behind; docs/interfaces.md describes the language-model Core ML interface."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pocketsize.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore")]


# --- 1. preprocessing.input_size edited by hand ------------------------------------------

@pytest.fixture(scope="module")
def tiny_art(tmp_path_factory) -> Path:
    from bench_helpers import tiny_export

    return tiny_export(tmp_path_factory.mktemp("hm_art") / "art", formats=("executorch",))


def _edited(tiny_art: Path, tmp_path: Path, size: int, shape_too: bool) -> Path:
    import shutil

    d = tmp_path / "art"
    shutil.copytree(tiny_art, d)
    m = json.loads((d / "manifest.json").read_text())
    m["preprocessing"]["input_size"] = [3, size, size]
    if shape_too:
        m["inputs"][0]["shape"] = [1, 3, size, size]
    (d / "manifest.json").write_text(json.dumps(m))  # the artifacts' sha256 stay valid
    return d


def test_edited_input_size_is_refused_naming_the_mismatch(tiny_art, tmp_path):
    from pocketsize.benchmarks import harness
    from pocketsize.export.manifest import Manifest

    d = _edited(tiny_art, tmp_path, 48, shape_too=False)
    with pytest.raises(BadInput) as e:
        harness.resolve_artifact_sets(d)
    msg = str(e.value)
    assert "\n" not in msg and "input_size [3, 48, 48]" in msg and "[1, 3, 32, 32]" in msg, msg
    with pytest.raises(BadInput):
        Manifest.load(d)


def test_edited_input_size_and_shape_fail_each_row(tiny_art, tmp_path):
    """Both edited consistently: the artifact itself (.pte method meta; .onnx graph input) says 32 px."""
    from pocketsize.benchmarks import BenchConfig, run

    d = _edited(tiny_art, tmp_path, 48, shape_too=True)
    res = run(d, "local", BenchConfig(warmup=0, iterations=1, min_duration_s=0.0))
    rows = {r["format"]: r for r in res["results"]}
    assert set(rows) == {"executorch"}
    for fmt, r in rows.items():
        assert r["status"] == "failed", (fmt, r)
        assert "[1, 3, 32, 32]" in r["error"] and "[1, 3, 48, 48]" in r["error"], r["error"]


# --- 2. language-model token counts are never clamped silently -----------------------------

def test_prompt_and_decode_clamps_are_warned(caplog):
    from pocketsize.benchmarks import BenchConfig
    from pocketsize.benchmarks.harness import lm_token_counts

    with caplog.at_level(logging.WARNING):
        assert lm_token_counts(BenchConfig(prompt_tokens=8, decode_tokens=4), 64) == (8, 4)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert lm_token_counts(BenchConfig(prompt_tokens=64, decode_tokens=32), 40) == (39, 1)
    text = caplog.text
    assert "--prompt-tokens 64: using 39" in text and "--decode-tokens 32: using 1" in text, text
    assert "cache_len" in text
    with pytest.raises(BadInput, match="cache_len is 1"):
        lm_token_counts(BenchConfig(), 1)


def test_eval_chunks_cut_to_the_cache_are_warned(tmp_path, caplog):
    import types

    import torch

    from pocketsize.benchmarks import BenchConfig
    from pocketsize.benchmarks.harness import prepare_lm_eval

    data = types.SimpleNamespace(test=types.SimpleNamespace(ids=torch.zeros(3, 64, dtype=torch.long)))
    dev = types.SimpleNamespace(default_eval_samples=None)
    with caplog.at_level(logging.WARNING):
        ev = prepare_lm_eval(data, {"llm": {"cache_len": 16}}, tmp_path, BenchConfig(), dev, tmp_path)
    assert ev.length == 16
    assert "64 tokens are cut to 16" in caplog.text, caplog.text


def test_export_cache_len_clamp_is_warned(caplog):
    import types

    from pocketsize.export import ExportConfig
    from pocketsize.export.llm import cache_len

    model = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=32))
    with caplog.at_level(logging.WARNING):
        assert cache_len(model, ExportConfig(lm_cache_len=128, lm_new_tokens=4), 8) == 32
    assert "lm_cache_len 128: using 32" in caplog.text, caplog.text


# --- 3. the .mlpackage is byte-deterministic ---------------------------------------------

def test_coreml_export_twice_gives_the_same_sha256(tmp_path):
    pytest.importorskip("coremltools")
    from test_export import make_loaded

    from pocketsize.export import ExportConfig, export
    from pocketsize.io import digest

    shas = []
    for name in ("a", "b"):
        m = export(make_loaded("timm"), tmp_path / name, ExportConfig(targets="coreml", parity_samples=2))
        (art,) = m["artifacts"]
        assert art["sha256"] == digest(tmp_path / name / art["path"])[1]
        shas.append(art["sha256"])
    assert shas[0] == shas[1]
    a, b = (tmp_path / n / "model.mlpackage" for n in ("a", "b"))
    assert (a / "Manifest.json").read_bytes() == (b / "Manifest.json").read_bytes()
    import coremltools

    doc = json.loads((a / "Manifest.json").read_text())
    assert doc["rootModelIdentifier"] in doc["itemInfoEntries"]
    spec = coremltools.models.MLModel(str(a), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"


# --- 4. SIGTERM mid-export leaves nothing behind -----------------------------------------

@pytest.fixture(scope="module")
def timm_saved(tmp_path_factory) -> Path:
    from conftest import build_tiny_vit
    from timm.models import save_for_hf

    d = tmp_path_factory.mktemp("hm_timm") / "model"
    d.mkdir()
    save_for_hf(build_tiny_vit("timm", num_classes=3), d, safe_serialization=True)
    return d


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
@pytest.mark.parametrize("to, after", [("executorch", None), ("onnx,coreml", "model.onnx")],
                         ids=["executorch", "coreml"])
def test_timeout_term_mid_export_leaves_nothing(timm_saved, tmp_path, to, after):
    """SIGTERM while the first target exports, and while Core ML converts (after model.onnx)."""
    outs = tmp_path / "outs"
    outs.mkdir()
    (outs / "keep.txt").write_text("the user's")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    before_tmp = set(os.listdir(tmpdir))
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketsize", "-q", "export", str(timm_saved), "--to", to,
         "--parity-samples", "2", "--out", str(outs / "o")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and \
                not any(".partial-" in p for p in os.listdir(outs)):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        partial = next(outs / p for p in os.listdir(outs) if ".partial-" in p)
        while after and proc.poll() is None and time.monotonic() < deadline + 60 and not (partial / after).exists():
            time.sleep(0.05)
        time.sleep(1.0)  # well inside the export
        assert proc.poll() is None, "the export finished before the signal; make the test model slower"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for _ in range(50):
        if not _group_alive(proc.pid):
            break
        time.sleep(0.1)
    leftover = _group_alive(proc.pid)
    if leftover:
        os.killpg(proc.pid, signal.SIGKILL)
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err[-800:]
    assert "terminated by SIGTERM" in err, err[-800:]
    assert not leftover, "a child process of the export was left running"
    assert sorted(os.listdir(outs)) == ["keep.txt"]
    # torch's per-user compile cache folder (torchinductor_USER) is a persistent cache any torch
    # program creates in TMPDIR, not an export temp folder; anything else new is ours
    new = set(os.listdir(tmpdir)) - before_tmp
    assert sorted(n for n in new if not n.startswith("torchinductor_") and n != ".ses") == [], new


# --- 5. docs: the Core ML interface of language models -------------------------------------

def test_interfaces_doc_describes_the_lm_coreml_package():
    text = (ROOT / "docs" / "interfaces.md").read_text()
    assert "Core ML for LLMs is not implemented" not in text
    start = text.index("### Causal language models")
    lm = text[start:text.index("\n## ", start)]
    assert "llm_coreml.py" in lm
    for needle in ("iOS18", "int32", "stateful", "k_cache_", "checked: false"):
        assert needle in lm, needle
