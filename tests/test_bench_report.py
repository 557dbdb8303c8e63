"""report.html renders in headless Chromium and shows its three plots."""

import shutil
import subprocess

import pytest

from pocketsize.benchmarks.report import write_report
from pocketsize.benchmarks.stats import latency_stats

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if CHROMIUM is None:
    pytest.skip("needs chromium (apt-get install chromium)", allow_module_level=True)

PLOTS = ("latency-distribution", "original-vs-compressed", "size-latency-accuracy")


def _doc():
    res = []
    for v, scale in (("original", 2.0), ("compressed", 1.0)):
        for f, k in (("executorch", 1.0), ("onnx", 1.3)):
            xs = [scale * k * (1 + 0.02 * (i % 7)) for i in range(40)]
            res.append({"variant": v, "format": f, "quantize": "none", "status": "ok", "bytes": int(scale * 3e6),
                        "latency_ms": latency_stats(xs), "latency_samples_ms": xs, "accuracy": 0.9 if v == "original" else 0.85,
                        "eval_samples": 100, "peak_rss_mb": 30.0, "memory": {"anon_mb": 10.0, "file_mb": 20.0},
                        "warnings": [], "error": None, "load_ms": 5.0, "first_inference_ms": 3.0, "timed_runs": 40,
                        "runtime": f, "threads": 1, "warmup": 1, "iterations": 40})
    return {"format_version": 1, "config": {"warmup": 1}, "results": res,
            "device": {"kind": "local", "name": "host", "emulated": False, "os": "Linux", "arch": "x86_64", "cpu": None}}


def _chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-dev-shm-usage", *args], capture_output=True, timeout=timeout)


def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    write_report(_doc(), page)
    dom = _chromium("--dump-dom", page.as_uri()).stdout.decode()
    for name in PLOTS:
        assert f'data-plot="{name}"' in dom
    assert dom.count("<circle") >= 160 and dom.count('class="bar"') == 4
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1000,1400", "--hide-scrollbars", page.as_uri())
    assert shot.exists(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20) or []
    # the plot colours (original blue, compressed red) are really painted
    def painted(rgb, tol=30):
        return sum(n for n, c in colours if all(abs(a - b) <= tol for a, b in zip(c, rgb)))
    assert painted((0x4e, 0x79, 0xa7)) > 200 and painted((0xe1, 0x57, 0x59)) > 200
