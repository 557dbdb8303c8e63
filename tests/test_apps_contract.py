"""The phone apps and the Python drivers read one contract (benchmarks/app_contract.json).

No Android SDK or Xcode exists here, so these tests read the Kotlin, Swift,
Gradle and XcodeGen sources as text: the keys the apps read, the files they
write, the schema version and the runtime versions must be the contract's.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.app_contract import check_params, load_contract
from pocketsize.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent
ANDROID = ROOT / "android-demo"
IOS = ROOT / "ios-demo"
KOTLIN = ANDROID / "app/src/main/java/dev/pocketsize/demo"
SWIFT = IOS / "PocketsizeDemo"


def _text(paths) -> str:
    return "\n".join(p.read_text() for p in paths)


def kotlin_consts(prefix: str) -> dict[str, str]:
    src = (KOTLIN / "Contract.kt").read_text()
    return dict(re.findall(rf'const val ({prefix}\w+) = "([^"]*)"', src))


def test_contract_is_packaged_and_consistent():
    c = load_contract()
    names = set(c["params"])
    assert set(c["android"]["extras"]) == names
    assert set(c["ios"]["launch_arguments"]) == names
    assert set(c["ios"]["xctest_env"]) == names
    for p in c["params"].values():
        assert p["type"] in ("string", "int")
    assert set(c["formats"]["android"]) | set(c["formats"]["ios"]) == {"executorch", "onnx", "coreml"}


def test_kotlin_reads_exactly_the_contract_extras():
    c = load_contract()
    consts = kotlin_consts("EXTRA_")
    assert sorted(consts.values()) == sorted(c["android"]["extras"].values())
    # every pocketsize.* string in any Kotlin source is a contract extra (no stray keys)
    used = set(re.findall(r'"(pocketsize\.[a-z_]+)"', _text(KOTLIN.glob("*.kt"))))
    assert used == set(c["android"]["extras"].values())
    # every extra is actually read from the intent, with the getter matching its type
    activity = (KOTLIN / "BenchmarkActivity.kt").read_text()
    by_value = {v: k for k, v in consts.items()}
    for name, key in c["android"]["extras"].items():
        const = by_value[key]
        getter = "getIntExtra" if c["params"][name]["type"] == "int" else r"(getStringExtra|str)"
        assert re.search(rf"{getter}\((Contract\.)?{const}\b", activity), f"{name} not read as {getter}"


def test_kotlin_files_and_schema_match_contract():
    c = load_contract()
    files = kotlin_consts("FILE_")
    expected = {k: v for k, v in c["files"].items() if k != "eval_input"}
    assert sorted(files.values()) == sorted(expected.values())
    src = (KOTLIN / "Contract.kt").read_text()
    assert f'RESULT_SCHEMA = "{c["result_schema"]}"' in src
    assert f"RESULT_SCHEMA_VERSION = {c['result_schema_version']}" in src
    for name, p in c["params"].items():
        if "default" in p:
            assert f"DEFAULT_{name.upper()} = {p['default']}" in src, name
    # every report key the driver requires is put by Benchmark.kt
    bench = (KOTLIN / "Benchmark.kt").read_text()
    for key in c["report_keys"]:
        assert f'.put("{key}"' in bench, key


def test_swift_reads_exactly_the_contract_arguments_and_env():
    c = load_contract()
    src = (SWIFT / "Contract.swift").read_text()
    rows = re.findall(r'"(\w+)": \("([^"]+)", "([^"]+)"\)', src)
    assert {n: a for n, a, _ in rows} == c["ios"]["launch_arguments"]
    assert {n: e for n, _, e in rows} == c["ios"]["xctest_env"]
    used = set(re.findall(r'"(pocketsize\.[a-z_]+)"', _text(SWIFT.glob("*.swift"))))
    assert used == set(c["ios"]["launch_arguments"].values())
    assert f'resultSchema = "{c["result_schema"]}"' in src
    assert f"resultSchemaVersion = {c['result_schema_version']}" in src
    for key in ("report", "times", "eval_outputs"):
        assert f'"{c["files"][key]}"' in src
    block = re.search(r"static let defaults[^=]*= \[(.*?)\]", src, re.S).group(1)
    defaults = dict(re.findall(r'"(\w+)": (\d+)', block))
    assert {k: int(v) for k, v in defaults.items()} == \
        {k: p["default"] for k, p in c["params"].items() if "default" in p}
    bench = (SWIFT / "Benchmark.swift").read_text()
    for key in c["report_keys"]:
        assert f'"{key}"' in bench, key


def test_app_ids_match_contract():
    c = load_contract()
    gradle = (ANDROID / "app/build.gradle.kts").read_text()
    assert f'applicationId = "{c["android"]["package"]}"' in gradle
    pkg, _, cls = c["android"]["benchmark_activity"].rpartition(".")
    assert pkg == c["android"]["package"]
    assert f'android:name=".{cls}"' in (ANDROID / "app/src/main/AndroidManifest.xml").read_text()
    assert (KOTLIN / f"{cls}.kt").exists()
    assert c["android"]["device_dir"].startswith(f"/sdcard/Android/data/{c['android']['package']}/files")
    project = (IOS / "project.yml").read_text()
    assert f"PRODUCT_BUNDLE_IDENTIFIER: {c['ios']['bundle_id']}" in project
    target, klass, method = c["ios"]["test_identifier"].split("/")
    assert f"{target}:" in project
    tests = (IOS / target / f"{klass}.swift").read_text()
    assert f"class {klass}" in tests and f"func {method}()" in tests
    assert f"  {c['ios']['scheme']}:" in project


def _pyproject_pin(name: str) -> str | None:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'"{name}==([0-9.]+)"', text)
    return m.group(1) if m else None


def test_runtime_versions_match_python_toolchain():
    catalog = (ANDROID / "gradle/libs.versions.toml").read_text()
    et = re.search(r'^executorch = "([^"]+)"', catalog, re.M).group(1)
    ort = re.search(r'^onnxruntime = "([^"]+)"', catalog, re.M).group(1)
    pin = _pyproject_pin("executorch")
    if pin:
        assert et == pin
    assert f"branch: swiftpm-{et}" in (IOS / "project.yml").read_text()
    assert f'executorchVersion = "{et}"' in (SWIFT / "ModelRunner.swift").read_text()
    try:
        from importlib.metadata import version

        installed = version("onnxruntime")
    except Exception:
        installed = None
    if installed:  # the phone runs the ONNX Runtime release that verified the export
        assert ort.split(".")[:2] == installed.split(".")[:2]


@pytest.mark.parametrize("platform,fmt", [("android", "coreml"), ("ios", "onnx")])
def test_check_params_refuses_format_the_app_cannot_run(platform, fmt):
    with pytest.raises(BadInput, match="does not run"):
        check_params({"artifact": "a", "format": fmt, "out_dir": "o", "input_shape": "1,3,8,8",
                      "run_id": "r"}, platform)


def test_check_params_refuses_unknown_and_missing():
    with pytest.raises(BadInput, match="unknown"):
        check_params({"artifact": "a", "format": "onnx", "bogus": 1}, "android")
    with pytest.raises(BadInput, match="required"):
        check_params({"artifact": "a", "format": "onnx"}, "android")
    with pytest.raises(BadInput, match="whole number"):
        check_params({"artifact": "a", "format": "onnx", "out_dir": "o", "input_shape": "1",
                      "run_id": "r", "warmup": -1}, "android")


# ---------------------------------------------------------------------------
# Build-pipeline integration: the scripts call `pocketsize export` with flags it has.

def _export_parser():
    export_cli = pytest.importorskip("export.cli")
    parser = argparse.ArgumentParser(prog="pocketsize")
    export_cli.register(parser.add_subparsers(dest="cmd"))
    return parser


def test_xcode_build_phase_calls_pocketsize_export(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "argv.txt"
    fake = bindir / "pocketsize"
    # records its argv and writes what an export folder holds (a test stand-in, not an export)
    fake.write_text(f"#!{sys.executable}\nimport sys, os, json\n"
                    f"open({str(log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                    "out = sys.argv[sys.argv.index('--out') + 1]\nos.makedirs(out)\n"
                    "open(os.path.join(out, 'manifest.json'), 'w').write('{}')\n")
    fake.chmod(0o755)
    srcroot = tmp_path / "ios"
    srcroot.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SRCROOT": str(srcroot),
           "POCKETSIZE_MODEL": "/models/compressed model", "POCKETSIZE_FORMATS": "coreml,executorch"}
    subprocess.run(["sh", str(IOS / "Scripts/pocketsize-export.sh")], env=env, check=True, capture_output=True)
    import json

    argv = json.loads(log.read_text())
    assert argv[:2] == ["export", "/models/compressed model"]
    assert (srcroot / "Generated/pocketsize/manifest.json").exists()
    args = _export_parser().parse_args(argv)
    assert args.to == "coreml,executorch" and args.quantize == "none"
    # without a model the phase is a no-op that still leaves the folder resource in place
    env.pop("POCKETSIZE_MODEL")
    log.unlink()
    subprocess.run(["sh", str(IOS / "Scripts/pocketsize-export.sh")], env=env, check=True, capture_output=True)
    assert not log.exists()


def test_gradle_task_calls_pocketsize_export_with_real_flags():
    gradle = (ANDROID / "app/build.gradle.kts").read_text()
    call = re.search(r"commandLine\((.*?)\)\n", gradle, re.S).group(1)
    words = re.findall(r'"([^"]+)"', call)
    assert words == ["export", "--to", "--quantize", "--out"]
    argv = ["export", "DIR", "--to", "executorch,onnx", "--quantize", "none", "--out", "OUT"]
    args = _export_parser().parse_args(argv)
    assert args.model_dir == "DIR" and args.out == "OUT"
    props = (ANDROID / "gradle.properties").read_text()
    for key in ("pocketsize.model", "pocketsize.executable", "pocketsize.formats", "pocketsize.quantize"):
        assert f"{key}=" in props and f'gradleProperty("{key}")' in gradle
