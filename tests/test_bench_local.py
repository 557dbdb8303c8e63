"""End to end on --device local: tiny ViT artifacts (original + compressed), executorch + onnx."""

import argparse
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("executorch")
pytest.importorskip("onnxruntime")

from pocketsize.benchmarks import BenchConfig, run  # noqa: E402
from bench_helpers import cached_exports, eager_accuracy, tiny_data  # noqa: E402

RESULT_KEYS = {"variant", "format", "runtime", "threads", "warmup", "iterations", "load_ms",
               "first_inference_ms", "latency_ms", "peak_rss_mb", "memory", "eval_samples", "status", "error"}
DEVICE_KEYS = {"kind", "name", "os", "arch", "cpu", "emulated"}
QUICK = dict(warmup=1, iterations=10, timeout_s=120)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return cached_exports(tmp_path_factory.mktemp("exports"))


def test_local_writes_every_contract_key_and_eager_accuracy(exports, tmp_path):
    data = tiny_data()
    out = tmp_path / "bench"
    doc = run(exports, "local", BenchConfig(**QUICK), data=data, out_dir=out)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(doc["results"]))
    assert DEVICE_KEYS <= set(on_disk["device"]) and on_disk["device"]["emulated"] is False
    assert {(r["variant"], r["format"]) for r in on_disk["results"]} == {
        (v, f) for v in ("original", "compressed") for f in ("executorch", "onnx")}
    for r in on_disk["results"]:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert r["status"] == "ok", r["error"]
        assert set(r["latency_ms"]) >= {"min", "p50", "p90", "p99", "mean", "std"}
        assert 0 < r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["timed_runs"] >= 10
        assert r["peak_rss_mb"] > 0 and r["memory"]["anon_mb"] > 0 and r["memory"]["file_mb"] > 0
        assert r["runtime"] == {"executorch": "executorch", "onnx": "onnxruntime"}[r["format"]]
        assert r["eval_samples"] == len(data.test.y)
        # fp32: the device computes the same top-1 as eager PyTorch on the same held-out images
        assert r["accuracy"] == pytest.approx(eager_accuracy(r["variant"], data), abs=1e-9)
    assert (out / "report.html").read_text().count('class="plot"') == 3


def test_cli_bench_command(exports, tmp_path, capsys):
    from pocketsize.cli import bench as cli

    parser = argparse.ArgumentParser(prog="pocketsize")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", str(exports / "compressed"), "--device", "local", "--warmup", "0",
                              "--iterations", "3", "--formats", "onnx", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 1
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["variant"] for r in doc["results"]] == ["compressed"]
    assert doc["results"][0]["accuracy"] is None and doc["results"][0]["eval_samples"] == 0


def test_bad_inputs_name_the_fix(tmp_path, exports):
    from pocketsize.errors import BadInput

    with pytest.raises(BadInput, match="pocketsize export"):
        run(tmp_path, "local", BenchConfig(**QUICK), out_dir=tmp_path / "o")
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "x").write_text("")
    with pytest.raises(BadInput, match="not empty"):
        run(exports, "local", BenchConfig(**QUICK), out_dir=tmp_path / "nonempty")
    with pytest.raises(BadInput, match="qemu-aarch64"):
        run(exports, "gpu", BenchConfig(**QUICK))


def test_crash_and_hang_fail_alone(exports, tmp_path):
    """A corrupt .pte (runner crash) and a hanging run (timeout) fail; the rest complete."""
    art = tmp_path / "arts"
    shutil.copytree(exports / "original", art)  # model.onnx may come with model.onnx.data
    (art / "broken.pte").write_bytes(b"\0" * 64)
    manifest = json.loads((exports / "original" / "manifest.json").read_text())
    # recorded with its own sha256: this checks the runner crash, not the integrity check (test_records.py)
    manifest["artifacts"].insert(0, dict(manifest["artifacts"][0], path="broken.pte", bytes=64,
                                         sha256=hashlib.sha256(b"\0" * 64).hexdigest()))
    (art / "manifest.json").write_text(json.dumps(manifest))
    doc = run(art, "local", BenchConfig(**QUICK), out_dir=tmp_path / "o")
    st = [r["status"] for r in doc["results"]]
    assert st == ["failed", "ok", "ok"], doc["results"][0]
    assert "exited" in doc["results"][0]["error"] or "killed" in doc["results"][0]["error"]
    # hang: far more iterations than the timeout allows
    doc = run(art, "local", BenchConfig(warmup=0, iterations=10**9, timeout_s=8, formats=("onnx",)),
              out_dir=tmp_path / "o2")
    r = doc["results"][0]
    assert r["status"] == "failed" and "did not finish within 8 s" in r["error"]
    assert r["timed_runs"] > 0 and r["latency_ms"]["p50"] > 0  # what it measured before the kill is kept


def _children_running(marker: str):
    """pids of processes whose command line mentions ``marker`` (our tmp folder): never anyone else's."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "et_runner" in cmd:
                pids.append(int(d.name))
    return pids


def test_killing_the_runner_mid_run(exports, tmp_path):
    root = tmp_path / "kill-me"
    cached_exports(root)
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for pid in _children_running(str(root / "original")):
                times = list(Path("/tmp").glob("pocketsize-bench-work-*/original-0-executorch/out/times.txt"))
                if any(t.stat().st_size > 0 for t in times):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    doc = run(root, "local", BenchConfig(warmup=0, iterations=40000, timeout_s=120), out_dir=tmp_path / "o")
    t.join()
    assert killed, "the runner finished before it could be killed"
    by = {(r["variant"], r["format"]): r for r in doc["results"]}
    dead = by[("original", "executorch")]
    assert dead["status"] == "failed" and "SIGKILL" in dead["error"]
    assert dead["timed_runs"] > 0  # the runs it finished before dying are kept
    others = [r for k, r in by.items() if k != ("original", "executorch")]
    assert len(others) == 3 and all(r["status"] == "ok" for r in others)
    assert json.loads((tmp_path / "o" / "results.json").read_text())["results"][0]["status"] == "failed"


def test_coreml_runner_speaks_the_protocol_with_a_stand_in_for_core_ml(tmp_path):
    """Core ML prediction needs macOS, so this runs coreml_runner.py against a
    stand-in ``coremltools`` (y = 2x on a (1, 3) input): it checks the runner's
    own code (arguments, timing loop, eval outputs, report), not Core ML."""
    import subprocess
    import sys

    import numpy as np

    fake = tmp_path / "fake" / "coremltools"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import types\n__version__ = 'stand-in'\n"
        "ComputeUnit = types.SimpleNamespace(CPU_ONLY='cpu')\n"
        "def _spec():\n"
        "    arr = types.SimpleNamespace(multiArrayType=types.SimpleNamespace(shape=[1, 3]))\n"
        "    d = types.SimpleNamespace(input=[types.SimpleNamespace(name='x', type=arr)],\n"
        "                              output=[types.SimpleNamespace(name='y')])\n"
        "    return types.SimpleNamespace(description=d)\n"
        "class _Model:\n"
        "    def __init__(self, path, compute_units=None): self.path = path\n"
        "    def get_spec(self): return _spec()\n"
        "    def predict(self, feeds): return {'y': feeds['x'] * 2}\n"
        "models = types.SimpleNamespace(MLModel=_Model)\n")
    out = tmp_path / "out"
    out.mkdir()
    evalf = tmp_path / "eval.bin"
    samples = np.arange(6, dtype="<f4").reshape(2, 3)
    samples.tofile(evalf)
    runner = Path(__file__).resolve().parents[1] / "benchmarks" / "runner" / "coreml_runner.py"
    res = subprocess.run([sys.executable, str(runner), str(tmp_path / "m.mlpackage"), "--out-dir", str(out),
                          "--warmup", "1", "--iterations", "4", "--eval-input", str(evalf), "--eval-count", "2"],
                         env={**os.environ, "PYTHONPATH": str(fake.parent)}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["runtime"] == "coreml" and report["output_shape"] == [1, 3] and report["memory"]["peak_rss_mb"] > 0
    assert len((out / "times.txt").read_text().split("\n")) - 1 == 4
    assert np.array_equal(np.fromfile(out / "eval_outputs.bin", dtype="<f4").reshape(2, 3), samples * 2)
