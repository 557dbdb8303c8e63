"""Core ML export of causal LMs: a stateful .mlpackage whose KV cache is Core
ML state, on tiny Llama (GQA) / Qwen2 / GPT-2 (2 layers, hidden 64) from
tests/lm_helpers.py.

Core ML predicts only on macOS. Elsewhere these tests check what can be
checked: the artifact converts, parity is reported as not checked with the
reason (never a pass), the saved spec has the promised interface (inputs,
flexible token count, logits, one key and one value state per layer with its
real width, iOS18), and the exact program handed to coremltools generates
eager's greedy tokens when run by torch. On macOS the same export tests
demand the real greedy parity.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from lm_helpers import write_corpus

pytest.importorskip("coremltools")

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("torch_one_thread")]

KINDS = ("llama", "qwen2", "gpt2")
CACHE = 96
ON_MAC = platform.system() == "Darwin"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("llm_coreml"), KINDS, layers=2, mlp=128)


def coreml_cfg(**kw):
    from pocketsize.export import ExportConfig

    return ExportConfig(**{"targets": "coreml", "lm_cache_len": CACHE, **kw})


@pytest.fixture(scope="module")
def exports(corpus, tmp_path_factory):
    """get(kind) -> manifest of its fp16 Core ML export (each kind exported once per module)."""
    from pocketsize import export

    done: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in done:
            done[kind] = export.export(corpus / kind, tmp_path_factory.mktemp(kind) / "out", coreml_cfg())
        return done[kind]

    return get


def assert_stateful_artifact(m: dict) -> dict:
    """The one Core ML artifact: ok, honest parity, and the interface of export.llm in its spec."""
    from pocketsize.export.targets.coreml import NO_PREDICT_REASON

    assert m["task"] == "causal-lm"
    (a,) = m["artifacts"]
    assert a["format"] == "coreml" and a["status"] == "ok" and a["path"].endswith(".mlpackage"), a.get("error")
    p = a["parity"]
    if ON_MAC:
        assert p["checked"] and p["passed"], p.get("reason")
        assert p["greedy"]["new_tokens"] == 16
    else:
        assert p["checked"] is False and p["passed"] is None and p["reason"] == NO_PREDICT_REASON
    s = p["structure"]
    kv = m["llm"]["kv_cache"]
    assert len(s["states"]) == 2 * m["llm"]["layers"] == 2 * len(kv)
    assert s["states"] == [{"name": f"{t}_cache_{i}", "shape": [1, k["kv_heads"], CACHE, k["head_dim"]]}
                           for i, k in enumerate(kv) for t in ("k", "v")]
    assert [(i["name"], i["ranges"][-1]) for i in s["inputs"]] == [("input_ids", [1, CACHE]),
                                                                   ("cache_position", [1, CACHE])]
    assert [o["name"] for o in s["outputs"]] == ["logits"]
    assert s["spec_version"] >= 9 and a["deployment_target"] == "iOS18"  # raised from the default iOS17
    assert s["ops"]["write_state"] == len(s["states"])
    return a


@pytest.mark.parametrize("kind", KINDS)
def test_export_stateful_mlpackage(exports, kind):
    m = exports(kind)
    a = assert_stateful_artifact(m)
    assert a["precision"] == "fp16" and a["compute_precision"] == "fp16" and a["input_dtype"] == "int32"
    assert "coreml" in m["llm"]["interface"]


def test_per_layer_widths_become_per_layer_states(corpus, tmp_path):
    """A hand-cut model whose layers keep different KV-head counts: each state has its layer's width."""
    from pocketsize import export
    from lm_helpers import save_per_layer_cut

    save_per_layer_cut(corpus / "llama", tmp_path / "model")
    m = export.export(tmp_path / "model", tmp_path / "out", coreml_cfg())
    assert_stateful_artifact(m)
    assert [s["shape"][1] for s in m["artifacts"][0]["parity"]["structure"]["states"]] == [1, 1, 2, 2]


def test_int8_weights(corpus, exports, tmp_path):
    from pocketsize import export

    fp = exports("qwen2")["artifacts"][0]
    m = export.export(corpus / "qwen2", tmp_path / "int8", coreml_cfg(quantize="int8"))
    a = assert_stateful_artifact(m)
    assert a["path"] == "model.int8.mlpackage" and a["precision"] == "int8"
    assert a["quantization"]["weights"] == "int8 symmetric per-channel" and a["bytes"] < fp["bytes"]


def test_converted_program_generates_eager_greedy_tokens(corpus):
    """What can be checked numerically off macOS: the program handed to
    coremltools (state-mode cache, aliases dropped), run by torch, prefills and
    decodes eager's 16 greedy tokens; a second, shorter sequence on the same
    (now stale) cache too: positions come from cache_position, no reset."""
    import torch

    from pocketsize.loading import load_model
    from pocketsize.export.llm import LMJob, compare_lm, frozen, greedy_reference, stepped_logits
    from pocketsize.export.targets.llm_coreml import _exported

    model = load_model(corpus / "qwen2").model.eval()
    prompt = torch.randint(2, int(model.config.vocab_size), (1, 9), generator=torch.Generator().manual_seed(0))
    with frozen(model):
        program = _exported(LMJob(model, CACHE, "none", coreml_cfg(), prompt)).module()
        for ids in (prompt, prompt[:, 3:8]):
            tokens, ref = greedy_reference(model, ids, 16)
            rec = compare_lm(ref, stepped_logits(program, ids, tokens), tokens, ids.shape[1], "fp32", coreml_cfg())
            assert rec["passed"] and rec["greedy"]["match"], rec.get("reason")


def test_unconvertible_graph_is_a_one_line_failure(corpus, tmp_path, monkeypatch):
    """A graph coremltools cannot take fails the artifact with one line naming the op."""
    from pocketsize import export
    from pocketsize.export.targets import llm_coreml
    from pocketsize.errors import ParityError

    monkeypatch.setattr(llm_coreml, "_drop_aliases", lambda ep: ep)  # leaves aten.alias, unknown to coremltools
    with pytest.raises(ParityError, match="coreml: Core ML"):
        export.export(corpus / "gpt2", tmp_path / "out", coreml_cfg())
    (a,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"]
    assert a["status"] == "failed" and a["path"] is None and "\n" not in a["error"]
    assert a["error"] == "Core ML (coremltools) cannot take op alias" and a["parity"]["checked"] is False
