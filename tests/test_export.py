"""export/: parity per target on tiny in-process ViTs (timm, HF ViT, HF Dinov2),
pruned and unpruned; int8 on held-out data; manifest schema; byte determinism;
bad inputs. Artifacts are exported once per model (module-scoped fixtures)."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketsize.export import ExportConfig, Source, export, target_names
from pocketsize.io import digest
from pocketsize.errors import BadInput, ParityError

pytestmark = pytest.mark.filterwarnings("ignore")

IMG, PATCH, DIM, DEPTH, HEADS, CLASSES = 32, 8, 64, 2, 2, 4
LABELS = ["a", "b", "c", "d"]


# --- tiny models --------------------------------------------------------------

def _timm():
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMG, patch_size=PATCH, embed_dim=DIM,
                          depth=DEPTH, num_heads=HEADS, num_classes=CLASSES)
    # timm keeps the 224 px pretrained_cfg after an img_size override
    m.pretrained_cfg = {**m.pretrained_cfg, "input_size": (3, IMG, IMG)}
    return m


def _hf(kind: str):
    import transformers as tr

    common = dict(image_size=IMG, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH,
                  num_attention_heads=HEADS, num_labels=CLASSES)
    if kind == "hf-vit":
        return tr.ViTForImageClassification(tr.ViTConfig(intermediate_size=4 * DIM, **common))
    return tr.Dinov2ForImageClassification(tr.Dinov2Config(mlp_ratio=4, **common))


def _slice_rows(lin, idx):
    lin.weight = torch.nn.Parameter(lin.weight.data[idx].clone())
    if lin.bias is not None:
        lin.bias = torch.nn.Parameter(lin.bias.data[idx].clone())
    lin.out_features = len(idx)


def _slice_cols(lin, idx):
    lin.weight = torch.nn.Parameter(lin.weight.data[:, idx].clone())
    lin.in_features = len(idx)


def _prune(model) -> None:
    """Structured pruning by slicing (independent of compress): head 0 of
    block 0 removed, uneven MLP widths in both blocks."""
    hd = DIM // HEADS
    keep_head = list(range(hd, 2 * hd))
    widths = [list(range(0, 4 * DIM, 3)), list(range(40))]
    if hasattr(model, "blocks"):  # timm
        blocks = list(model.blocks)
        attn = blocks[0].attn
        _slice_rows(attn.qkv, [r + s * DIM for s in range(3) for r in keep_head])
        _slice_cols(attn.proj, keep_head)
        attn.num_heads = 1
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = hd
    else:  # transformers ViT (.layers) / Dinov2 (.encoder.layer)
        bb = getattr(model, "vit", None) or model.dinov2
        blocks = list(bb.layers if hasattr(bb, "layers") else bb.encoder.layer)
        attn = blocks[0].attention
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            _slice_rows(lin, keep_head)
        _slice_cols(attn.o_proj, keep_head)
        attn.num_attention_heads = 1
    for block, keep in zip(blocks, widths):
        _slice_rows(block.mlp.fc1, keep)
        _slice_cols(block.mlp.fc2, keep)


def make_loaded(name: str):
    from pocketsize.loading import Loaded
    from pocketsize.models import adapter_for

    torch.manual_seed(0)
    base = name.replace("-pruned", "")
    model = (_timm() if base == "timm" else _hf(base)).eval()
    if name.endswith("-pruned"):
        x = torch.randn(2, 3, IMG, IMG)
        _prune(model)
        assert model(x) is not None  # still runs after slicing
    adapter = adapter_for(model)
    loaded = Loaded(model, adapter, {"source": f"test:{name}", "task": "image-classification",
                                     "family": adapter.name, "labels": LABELS})
    loaded.meta["preprocessing"] = adapter.preprocessing(model)
    assert loaded.meta["preprocessing"]["input_size"] == [3, IMG, IMG]
    return loaded


def make_data(seed: int = 0):
    """Synthetic ImageFolder-like data: each class is a coloured image + noise."""
    from pocketsize.data import ImageData, Split

    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], dtype=torch.float)

    def split(n_per_class: int) -> Split:
        y = torch.arange(CLASSES).repeat_interleave(n_per_class)
        x = colours[y][:, :, None, None] + 40 * torch.randn(len(y), 3, IMG, IMG, generator=g)
        mean, std = torch.tensor([0.5] * 3), torch.tensor([0.5] * 3)
        return Split(x.clamp(0, 255).to(torch.uint8), y, mean, std)

    return ImageData(LABELS, split(12), split(2), split(8))


def _fit(loaded, data, steps: int = 200) -> None:
    """Fit the classifier head on frozen features, so predictions are confident
    (random nets give near ties that any rounding flips)."""
    with torch.no_grad():
        feats = loaded.adapter.features(loaded.model, data.train.normalized())
    head = loaded.adapter.classifier(loaded.model)
    opt = torch.optim.Adam(head.parameters(), lr=3e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), data.train.y).backward()
        opt.step()
    loaded.model.eval()


MODELS = ["timm", "timm-pruned", "hf-vit-pruned", "dinov2-pruned"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (name, out_dir, manifest), each model exported to all targets once."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp("exp") / name
            done[name] = (name, out, export(make_loaded(name), out,
                                            ExportConfig(targets=tuple(target_names()), parity_samples=8)))
        return done[name]

    return get


@pytest.fixture(params=MODELS)
def exported(request, exports):
    return exports(request.param)


# --- parity per target --------------------------------------------------------

def test_all_targets_written_and_checked(exported):
    name, out, manifest = exported
    arts = {a["format"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"executorch", "onnx", "coreml"}
    for fmt in ("executorch", "onnx"):
        p = arts[fmt]["parity"]
        assert arts[fmt]["status"] == "ok", arts[fmt]
        assert p["checked"] is True and p["passed"] is True, (name, fmt, p)
        assert p["max_abs_diff"] <= 1e-4, (name, fmt, p)
        assert p["top1_agreement"] == 1.0 and p["snr_db"] > 60
    cm = arts["coreml"]
    assert cm["status"] == "ok" and cm["precision"] == "fp16" and cm["deployment_target"] == "iOS17"
    if sys.platform != "darwin":
        assert cm["parity"]["checked"] is False and cm["parity"]["reason"] == "Core ML prediction needs macOS"
        assert cm["parity"]["passed"] is None
    s = cm["parity"]["structure"]
    assert s["inputs"] == [{"name": "pixel_values", "shape": [1, 3, IMG, IMG]}]
    assert s["outputs"][0]["name"] == "logits" and s["ops"].get("linear", 0) > 0


def test_sha256_and_bytes_match_files(exported):
    _, out, manifest = exported
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    for a in manifest["artifacts"]:
        path = out / a["path"]
        assert path.exists()
        assert (a["bytes"], a["sha256"]) == digest(path)
    pte = next(a for a in manifest["artifacts"] if a["format"] == "executorch")
    assert pte["sha256"] == hashlib.sha256((out / "model.pte").read_bytes()).hexdigest()


def test_manifest_schema(exported):
    _, out, m = exported
    for key in ("source", "compression", "artifacts", "preprocessing", "labels", "task", "inputs", "outputs", "tools",
                "config"):
        assert key in m, key
    assert m["labels"] == LABELS and m["task"] == "image-classification"
    assert m["inputs"][0]["shape"] == [1, 3, IMG, IMG] and m["outputs"][0]["shape"] == [1, CLASSES]
    assert {"mean", "std", "input_size"} <= set(m["preprocessing"])
    assert m["tools"]["torch"] and m["tools"]["executorch"] and m["tools"]["onnxruntime"]
    assert m["config"]["version"] == 1 and ExportConfig.from_dict(m["config"]).targets == tuple(target_names())
    for a in m["artifacts"]:
        for key in ("format", "path", "bytes", "sha256", "quantize", "parity", "delegation"):
            assert key in a, key
        assert a["parity"]["checked"] or a["parity"]["reason"]
        assert a["path"] == {"executorch": "model.pte", "onnx": "model.onnx", "coreml": "model.mlpackage"}[a["format"]]
    onnx = next(a for a in m["artifacts"] if a["format"] == "onnx")
    assert onnx["opset"] == 18


def test_delegation_report_covers_vit_compute(exported):
    _, _, m = exported
    d = next(a for a in m["artifacts"] if a["format"] == "executorch")["delegation"]
    assert d["compute_share"] >= 0.95, d["not_delegated"]
    # with the rewrites every compute op of a ViT runs on XNNPACK; only data movement stays out
    assert d["compute_share"] == 1.0
    assert all(x["kind"] == "layout" and x["why"] for x in d["not_delegated"]), d["not_delegated"]
    assert d["rewrites"] == ["layer_norm", "scaled_dot_product_attention", "mean"]


def test_delegation_report_names_what_blocks(tmp_path):
    """Without the rewrites LayerNorm stays on portable kernels; the report says so."""
    m = export(make_loaded("timm"), tmp_path / "o",
               ExportConfig(targets="executorch", parity_samples=2, xnnpack_rewrites=False))
    d = m["artifacts"][0]["delegation"]
    assert d["compute_share"] < 1.0 and d["rewrites"] == []
    kept = {x["op"]: x for x in d["not_delegated"]}
    assert kept["aten_native_layer_norm_default"]["kind"] == "compute"
    assert "no kernel" in kept["aten_native_layer_norm_default"]["why"]


# --- int8 ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    data = make_data()
    loaded = make_loaded("timm-pruned")
    _fit(loaded, data)
    root = tmp_path_factory.mktemp("int8")
    fp32 = export(loaded, root / "fp32", ExportConfig(targets="executorch,onnx", parity_samples=64), data=data)
    int8 = export(loaded, root / "int8", ExportConfig(targets="executorch,onnx,coreml", quantize="int8",
                                                      parity_samples=64, calib_samples=16), data=data)
    return root, fp32, int8


def test_int8_within_tolerance_on_held_out(int8_export):
    root, fp32, int8 = int8_export
    assert int8["parity_inputs"]["kind"] == "held-out" and int8["parity_inputs"]["samples"] == 32
    sizes = {a["format"]: a["bytes"] for a in fp32["artifacts"]}
    for a in int8["artifacts"]:
        assert a["path"].startswith("model.int8.") and (root / "int8" / a["path"]).exists()
        assert a["quantize"] == "int8" and a["status"] == "ok", a
        if a["format"] == "coreml":  # weight-only int8; Linux checks structure only
            assert a["quantization"]["scheme"] == "weight-only" and a["parity"]["passed"] is not False
            continue
        assert a["bytes"] < 0.6 * sizes[a["format"]], a["format"]
        p = a["parity"]
        assert p["passed"], p
        assert p["accuracy"]["artifact"] >= p["accuracy"]["eager"] - 0.05
        assert a["quantization"]["scheme"].startswith("static")
        assert a["quantization"]["calibration_samples"] == 16


def test_parity_and_calibration_inputs_cover_every_class():
    """The user's splits are stored class by class: the first N images would all be
    one class (int8 calibrated on one class, parity checked on one)."""
    from pocketsize.export.source import make_inputs, resolve

    data = make_data()
    loaded = make_loaded("timm")
    inputs = make_inputs(resolve(loaded), ExportConfig(parity_samples=CLASSES, calib_samples=CLASSES), data)
    assert sorted(inputs.labels.tolist()) == list(range(CLASSES))
    assert torch.equal(inputs.calib, data.train.spread(CLASSES).normalized())
    assert data.train.y[:CLASSES].unique().numel() == 1


def test_int8_dynamic_activations_with_data(tmp_path):
    """--int8-activations dynamic: no calibration even with the user's data, checked on it."""
    data = make_data()
    loaded = make_loaded("timm-pruned")
    _fit(loaded, data)
    m = export(loaded, tmp_path / "d", ExportConfig(targets="executorch,onnx", quantize="int8",
                                                   int8_activations="dynamic", parity_samples=16), data=data)
    assert m["parity_inputs"]["kind"] == "held-out" and m["parity_inputs"]["calibration_samples"] == 0
    for a in m["artifacts"]:
        assert a["quantization"]["scheme"] == "dynamic" and a["parity"]["passed"], a
    with pytest.raises(BadInput, match="--int8-activations"):
        ExportConfig(int8_activations="per-token")


def test_int8_without_data_is_dynamic(tmp_path):
    loaded = make_loaded("timm")
    m = export(loaded, tmp_path / "o", ExportConfig(targets="executorch,onnx", quantize="int8", parity_samples=4))
    for a in m["artifacts"]:
        assert a["quantization"]["scheme"] == "dynamic" and a["parity"]["passed"], a


# --- determinism ----------------------------------------------------------------

def test_same_inputs_same_bytes(exports, tmp_path):
    """A fresh build of the same model exported again gives identical .pte/.onnx bytes."""
    name, _, first = exports("hf-vit-pruned")
    again = export(make_loaded(name), tmp_path / "again", ExportConfig(targets="executorch,onnx", parity_samples=2))
    want = {a["format"]: a["sha256"] for a in first["artifacts"]}
    assert {a["format"]: a["sha256"] for a in again["artifacts"]} == {k: want[k] for k in ("executorch", "onnx")}


# --- failures -----------------------------------------------------------------

class _Trunc(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(48, CLASSES)

    def forward(self, x):
        return self.fc(torch.trunc(x * 3).flatten(1))


def test_backend_that_cannot_take_an_op(tmp_path):
    torch.manual_seed(0)
    src = Source(_Trunc().eval(), {"preprocessing": {"input_size": [3, 4, 4]}}, "trunc-net")
    with pytest.raises(ParityError) as e:
        export(src, tmp_path / "o", ExportConfig(targets="onnx,coreml", parity_samples=2))
    assert e.value.exit_code == 3 and "coreml" in str(e.value) and "trunc" in str(e.value)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    arts = {a["format"]: a for a in m["artifacts"]}
    assert arts["onnx"]["status"] == "ok" and arts["onnx"]["parity"]["passed"]
    assert (tmp_path / "o" / "model.onnx").exists() and not (tmp_path / "o" / "model.mlpackage").exists()
    assert arts["coreml"]["status"] == "failed" and arts["coreml"]["error"] == "Core ML (coremltools) cannot take op trunc"


def test_parity_failure_raises_after_writing(tmp_path):
    loaded = make_loaded("timm")
    with pytest.raises(ParityError):
        export(loaded, tmp_path / "o", ExportConfig(targets="onnx", fp32_atol=1e-30, parity_samples=2))
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["artifacts"][0]["parity"]["passed"] is False and "max_abs_diff" in m["artifacts"][0]["parity"]["reason"]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(targets="executorch,tflite"), "valid: executorch, onnx, coreml"),
    (dict(targets=""), "--to is empty"),
    (dict(quantize="int2"), "--quantize"),
    (dict(data="/nonexistent/data"), "--data"),
    (dict(parity_samples=0), "--parity-samples"),
    (dict(coreml_target="android"), "iOS17"),
])
def test_bad_config(kwargs, needle):
    with pytest.raises(BadInput, match=needle.replace("[", r"\[")):
        ExportConfig(**kwargs)


def test_bad_model_dir_and_out(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        export(tmp_path / "missing", tmp_path / "o", ExportConfig(targets="onnx"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(BadInput):
        export(corrupt, tmp_path / "o", ExportConfig(targets="onnx"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    with pytest.raises(BadInput, match="not empty"):
        export(make_loaded("timm"), busy, ExportConfig(targets="onnx", parity_samples=1))
    assert (busy / "x").read_text() == "keep me"
    assert not (tmp_path / "o").exists()


# --- CLI and packaging ----------------------------------------------------------

def test_cli_on_a_compressed_model_dir(tmp_path, capsys):
    from pocketsize.loading import save_model_dir
    from pocketsize.cli.export import register

    loaded = make_loaded("timm-pruned")
    save_model_dir(loaded, tmp_path / "c" / "model")
    parser = argparse.ArgumentParser(prog="pocketsize")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(tmp_path / "c" / "model"), "--to", "onnx", "--out",
                              str(tmp_path / "o"), "--parity-samples", "2"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["artifacts"][0]["parity"]["passed"] is True
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["source"].endswith("model") and m["preprocessing"]["input_size"] == [3, IMG, IMG]


def test_import_is_light():
    code = ("import export, sys; heavy = [m for m in ('executorch', 'onnxruntime', 'coremltools', 'onnx', "
            "'torchao', 'timm', 'transformers') if m in sys.modules]; print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("scheme", ["static", "dynamic"])
def test_onnx_int8_sums_do_not_saturate(tmp_path, scheme):
    """Full-range int8 weights against large positive activations: x86 int8 kernels
    without VNNI add product pairs in int16 and clip them (measured here: a pruned
    DINOv2-S fell to SNR 4 dB), so the ONNX quantizer keeps weights to 7 bits."""
    from types import SimpleNamespace

    import onnxruntime as ort

    from pocketsize.export.targets.onnx import _quantize, quantize_dynamic_int8

    lin = torch.nn.Linear(64, 8)
    with torch.no_grad():
        lin.weight.fill_(0.5)  # every weight quantizes to the top of its range
        lin.bias.zero_()
    x = torch.rand(16, 64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    fp32, dest = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    torch.onnx.export(lin, (x[:1],), str(fp32), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    if scheme == "static":
        info = _quantize(SimpleNamespace(calib=x, input_name="x"), fp32, dest, tmp_path)
    else:
        info = quantize_dynamic_int8(fp32, dest)
    assert "7-bit" in info["weights"]
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    want = lin(x).detach()
    assert ((got - want).abs() / want.abs()).max() < 0.03
