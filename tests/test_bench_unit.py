"""Fast unit tests of the benchmark harness pieces (no models, no devices)."""

import json
import shlex

import pytest

from pocketsize.benchmarks import BenchConfig
from pocketsize.benchmarks.devices import get_device
from pocketsize.benchmarks.devices.base import (Job, RunnerCrashed, collect_output, memory_from_proc, parse_probe,
                                     read_times)
from pocketsize.benchmarks.report import render
from pocketsize.benchmarks.stats import latency_stats, stability_warnings
from pocketsize.errors import BadInput

STATUS = "Name:\tet_runner\nVmHWM:\t   22608 kB\nVmRSS:\t   20000 kB\nRssAnon:\t    9188 kB\nRssFile:\t   13420 kB\nRssShmem:\t0 kB\n"
SMAPS = "00400000-ffff ---p 00000000 00:00 0 [rollup]\nRss:  20000 kB\nPss:  15000 kB\nPss_Anon: 9000 kB\nPss_File: 6000 kB\nAnonymous: 9188 kB\n"


@pytest.mark.parametrize("kw", [dict(warmup=-1), dict(iterations=0), dict(threads=0), dict(timeout_s=0),
                                dict(min_duration_s=float("nan")), dict(eval_samples=-2), dict(iterations=1.5),
                                dict(formats=("tflite",)), dict(warmup=True)])
def test_config_rejects_bad_values_with_a_fix(kw):
    with pytest.raises(BadInput) as e:
        BenchConfig(**kw)
    assert "pass" in str(e.value)


def test_config_round_trips_through_json():
    c = BenchConfig(warmup=2, iterations=7, formats=["onnx"])
    d = json.loads(json.dumps(c.to_dict()))
    assert d["format_version"] == 1
    assert BenchConfig.from_dict(d) == c


def test_latency_stats_and_warnings():
    st = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert st["min"] == 1.0 and st["p50"] == 3.0 and st["max"] == 100.0
    assert st["p90"] == pytest.approx(61.6)
    assert st["mean"] == pytest.approx(22.0)
    w = stability_warnings(st, 5, 0.1)
    assert any("unstable" in x for x in w) and any("only 5" in x for x in w)
    assert stability_warnings(latency_stats([1.0] * 20), 20, 0.1) == []
    assert latency_stats([])["p50"] is None


def test_memory_split_from_proc():
    m = memory_from_proc(STATUS, SMAPS)
    assert m["peak_rss_mb"] == pytest.approx(22608 / 1024, abs=1e-3)
    assert m["anon_mb"] == pytest.approx(9188 / 1024, abs=1e-3)
    assert m["file_mb"] == pytest.approx(13420 / 1024, abs=1e-3)
    assert m["pss_mb"] == pytest.approx(15000 / 1024, abs=1e-3)
    assert memory_from_proc(None, None)["peak_rss_mb"] is None


def test_probe_parsing_x86_and_arm():
    x86 = ("@@uname\nLinux 6.1 x86_64\n@@os\nDebian GNU/Linux 12\n@@cpuinfo\nmodel name\t: Intel Xeon\n"
           "@@nproc\n2\n@@governor\nperformance\n@@thermal\n45000\n51000\n@@end\n")
    d = parse_probe(x86)
    assert (d["arch"], d["cpu"], d["cores"], d["governor"], d["thermal_c"]) == ("x86_64", "Intel Xeon", 2, "performance", 51.0)
    arm = "@@uname\nLinux 6.6 aarch64\n@@cpuinfo\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n@@nproc\n4\n@@end\n"
    d = parse_probe(arm)
    assert d["arch"] == "aarch64" and "0xd0b" in d["cpu"] and d["governor"] is None


def test_collect_output_keeps_partial_times_when_report_is_missing(tmp_path):
    (tmp_path / "times.txt").write_text("t 1.5\nt 2.5\nt 3.")  # torn last line
    job = Job(tmp_path / "m.pte", "executorch", (1, 3, 8, 8), 1, 1, 0.0, 1, 10.0)
    assert read_times(tmp_path / "times.txt") == [1.5, 2.5, 3.0]
    with pytest.raises(RunnerCrashed) as e:
        collect_output(tmp_path, job)
    assert e.value.partial_times == [1.5, 2.5, 3.0]


def test_runner_args_are_plain_argv():
    job = Job(tmp := __import__("pathlib").Path("/x/m o.pte"), "executorch", (1, 3), 2, 5, 0.5, 1, 9.0,
              eval_input=tmp, eval_count=3)
    args = job.runner_args("/d/m o.pte", "/d/out")
    assert args[:3] == ["/d/m o.pte", "--out-dir", "/d/out"]
    assert args[args.index("--min-duration-ms") + 1] == "500"
    assert args[args.index("--eval-count") + 1] == "3"


@pytest.mark.parametrize("spec", ["", "phone", "tcp://x", "qemu-aarch64:2"])
def test_unknown_device_lists_valid_ones(spec):
    with pytest.raises(BadInput) as e:
        get_device(spec)
    assert "local" in str(e.value) or "qemu-aarch64" in str(e.value)


def test_ssh_spec_parsing_and_quoting():
    dev = get_device("ssh://pi@board.local:2222?identity=/k/id%20key&python=/opt/py/bin/python3")
    assert (dev.user, dev.host, dev.port, dev.identity) == ("pi", "board.local", 2222, "/k/id key")
    argv = dev.ssh_argv("echo " + shlex.quote("a b; rm -rf /"))
    assert argv[-3:] == ["--", "pi@board.local", "echo 'a b; rm -rf /'"]  # options end before the destination
    assert ["-p", "2222"] == argv[argv.index("-p"):argv.index("-p") + 2]
    assert argv[argv.index("-i") + 1] == "/k/id key"
    for bad in ("ssh://", "ssh://h:port", "ssh://u@h?color=red"):
        with pytest.raises(BadInput):
            get_device(bad)


def _result(variant, fmt, p50, status="ok"):
    xs = [p50 * (1 + 0.01 * i) for i in range(20)]
    return {"variant": variant, "format": fmt, "quantize": "none", "status": status, "bytes": 2_000_000,
            "latency_ms": latency_stats(xs), "latency_samples_ms": xs, "accuracy": 0.9, "eval_samples": 10,
            "peak_rss_mb": 10.0, "memory": {}, "warnings": [], "error": None if status == "ok" else "boom",
            "load_ms": 1.0, "first_inference_ms": 2.0, "timed_runs": 20, "runtime": fmt, "threads": 1,
            "warmup": 0, "iterations": 20}


def test_report_is_self_contained_with_three_plots():
    doc = {"format_version": 1, "device": {"kind": "qemu-aarch64", "emulated": True, "cpu": "QEMU <script>",
                                           "name": "q", "os": "Linux", "arch": "aarch64"}, "config": {},
           "results": [_result("original", "executorch", 2.0), _result("compressed", "executorch", 1.0),
                       _result("original", "onnx", 3.0, status="failed")]}
    page = render(doc)
    for name in ("latency-distribution", "original-vs-compressed", "size-latency-accuracy"):
        assert f'data-plot="{name}"' in page
    assert "2.00x" in page and "Emulated device" in page
    assert "<script" not in page.replace("&lt;script", "")  # escaped, no scripts
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_an_artifact_this_device_cannot_run_reads_as_not_run_not_failed():
    from pocketsize.benchmarks.report import status_label, table_html

    base = {"variant": "original", "format": "coreml", "quantize": "none", "latency_ms": {}, "bytes": 10}
    never = {**base, "status": "failed", "error": "unsupported: Core ML prediction needs macOS", "unsupported": True}
    broke = {**base, "status": "failed", "error": "boom"}
    assert status_label(never) == "not run here" and status_label(broke) == "failed"
    html = table_html([never, broke])
    assert html.count('class="skipped"') == 1 and html.count('class="failed"') == 1
