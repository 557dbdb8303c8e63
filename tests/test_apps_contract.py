"""The phone apps and the Python drivers read one contract (benchmarks/app_contract.json).

No Android SDK or Xcode exists here, so these tests read the Kotlin, Swift,
Gradle and XcodeGen sources as text: the keys the apps read, the files they
write, the schema version and the runtime versions must be the contract's.
The build-pipeline hooks (the Xcode build-phase script, the Gradle task's
`pocketsize export` command line) run for real against a tiny model, and the
`pocketsize` commands in the app READMEs and examples/ci parse with the real
CLI. Syntax checks with real parsers are in tests/test_apps_static.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pocketsize.benchmarks.app_contract import check_params, load_contract
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
        assert re.search(rf'\.put\(\s*"{key}"', bench), key


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


SWIFTPM_RELEASE = {"1.5.1": "1.5.0"}  # Python executorch -> the Swift package release that runs its .pte


def test_runtime_versions_match_python_toolchain():
    catalog = (ANDROID / "gradle/libs.versions.toml").read_text()
    et = re.search(r'^executorch = "([^"]+)"', catalog, re.M).group(1)
    ort = re.search(r'^onnxruntime = "([^"]+)"', catalog, re.M).group(1)
    pin = _pyproject_pin("executorch")
    if pin:
        assert et == pin
    # iOS: the Swift package's release branch for that runtime. ExecuTorch has
    # no swiftpm-1.5.1 branch, and 1.5.1 changed no runtime source (ios-demo/README.md).
    swift = SWIFTPM_RELEASE.get(et, et)
    assert f"branch: swiftpm-{swift}" in (IOS / "project.yml").read_text()
    assert f'executorchVersion = "{swift}"' in (SWIFT / "ModelRunner.swift").read_text()
    try:
        from importlib.metadata import version

        installed = version("onnxruntime")
    except Exception:
        installed = None
    if installed:  # the phone runs the ONNX Runtime release that verified the export
        assert ort.split(".")[:2] == installed.split(".")[:2]


# Minimum Gradle per AGP minor, from the compatibility table of each
# "Android Gradle plugin 9.x.0" release-notes page on developer.android.com.
AGP_MIN_GRADLE = {"9.1": (9, 2, 1), "9.2": (9, 4, 1)}


def test_gradle_wrapper_satisfies_the_android_gradle_plugin():
    catalog = (ANDROID / "gradle/libs.versions.toml").read_text()
    agp = re.search(r'^agp = "([^"]+)"', catalog, re.M).group(1)
    wrapper = (ANDROID / "gradle/wrapper/gradle-wrapper.properties").read_text()
    gradle = re.search(r"gradle-([0-9.]+)-bin\.zip", wrapper).group(1)
    minor = ".".join(agp.split(".")[:2])
    assert minor in AGP_MIN_GRADLE, f"AGP {agp}: look up its minimum Gradle in the release notes, add it here"
    have = tuple(int(x) for x in gradle.split("."))
    assert have + (0,) * (3 - len(have)) >= AGP_MIN_GRADLE[minor], f"AGP {agp} needs Gradle >= {AGP_MIN_GRADLE[minor]}"
    for doc in (ANDROID / "README.md", ROOT / "examples/ci/android-emulator.yml"):
        assert gradle in doc.read_text(), f"{doc.name} names another Gradle version than the wrapper's {gradle}"


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
    export_cli = pytest.importorskip("pocketsize.cli.export")
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
    argv = json.loads(log.read_text())
    assert argv[:2] == ["export", "/models/compressed model"]
    assert (srcroot / "Generated/pocketsize/manifest.json").exists()
    args = _export_parser().parse_args(argv)
    assert args.to == "coreml,executorch" and args.quantize == "none"
    # a second build replaces the bundled export (pocketsize refuses a non-empty --out)
    (srcroot / "Generated/pocketsize/stale.txt").write_text("from the previous build")
    subprocess.run(["sh", str(IOS / "Scripts/pocketsize-export.sh")], env=env, check=True, capture_output=True)
    assert (srcroot / "Generated/pocketsize/manifest.json").exists()
    assert not (srcroot / "Generated/pocketsize/stale.txt").exists()
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


# ---------------------------------------------------------------------------
# The same two command lines, for real: the installed `pocketsize export` on a
# tiny random timm ViT (timm save_for_hf folder), ONNX only to keep it to
# seconds. What comes out must be what both apps' manifest readers require.

def _pocketsize_executable() -> str:
    exe = Path(sys.executable).with_name("pocketsize")
    if not exe.exists():
        exe = shutil.which("pocketsize")
        if exe is None:
            pytest.skip("no `pocketsize` executable beside this Python or on PATH (pip install -e .)")
    return str(exe)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_vit):
    pytest.importorskip("timm", reason="timm is needed to build the tiny model")
    pytest.importorskip("onnxruntime", reason="the export's parity check needs onnxruntime: pip install -e '.[onnx]'")
    from timm.models import save_for_hf

    d = tmp_path_factory.mktemp("apps_tiny_model") / "model"
    save_for_hf(tiny_vit("timm", num_classes=3), d, safe_serialization=True)
    return d


def app_manifest_requirements() -> dict[str, set[str]]:
    """Keys the apps' manifest readers cannot do without, per level (root / preprocessing / artifact).

    Kotlin: the keys ModelManifest.kt reads with getJSONObject/getJSONArray/getString
    (opt* reads have defaults); Swift: the non-optional properties of the
    Decodable structs in ModelManifest.swift.
    """
    kt = (KOTLIN / "ModelManifest.kt").read_text()
    required_kt = set(re.findall(r'\.get(?:JSONObject|JSONArray|String|Int|Double)\("(\w+)"\)', kt))
    swift = (SWIFT / "ModelManifest.swift").read_text()
    levels = {"root": set(), "preprocessing": set(), "artifact": set()}
    level = "root"
    for line in swift.splitlines():
        if "struct Preprocessing" in line:
            level = "preprocessing"
        elif "struct Artifact" in line:
            level = "artifact"
        elif line.strip() == "}" and line.startswith("    }"):
            level = "root"
        m = re.match(r"\s*var (\w+): ([^=/]+)", line)
        if m and not m.group(2).strip().endswith("?"):
            levels[level].add(m.group(1))
    for key in required_kt:  # place Kotlin's keys at the level where the exporter writes them
        where = "preprocessing" if key in ("input_size", "mean", "std") else \
            "artifact" if key in ("format", "path") else "root"
        levels[where].add(key)
    return levels


def check_manifest_readable_by_apps(folder: Path, fmt: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    need = app_manifest_requirements()
    assert need["root"] >= {"preprocessing", "artifacts"} and need["artifact"] >= {"format", "path"}
    assert need["root"] <= set(manifest), need["root"] - set(manifest)
    pre = manifest["preprocessing"]
    assert need["preprocessing"] <= set(pre), need["preprocessing"] - set(pre)
    # both apps feed 3-channel NCHW RGB and index mean/std per channel
    assert len(pre["input_size"]) == 3 and pre["input_size"][0] == 3
    assert len(pre["mean"]) == 3 and len(pre["std"]) == 3
    assert pre.get("layout", "NCHW") == "NCHW" and pre.get("color", "RGB") == "RGB"
    arts = [a for a in manifest["artifacts"] if a["format"] == fmt]
    assert arts, manifest["artifacts"]
    for a in arts:
        assert need["artifact"] <= set(a)
        assert (folder / a["path"]).is_file()  # the apps open folder/path


def test_xcode_build_phase_exports_a_real_model(tiny_model_dir, tmp_path):
    srcroot = tmp_path / "ios-demo"
    srcroot.mkdir()
    env = {"PATH": "/usr/bin:/bin", "SRCROOT": str(srcroot), "HOME": str(tmp_path),
           "POCKETSIZE_EXECUTABLE": _pocketsize_executable(), "POCKETSIZE_MODEL": str(tiny_model_dir),
           "POCKETSIZE_FORMATS": "onnx", "POCKETSIZE_QUANTIZE": "none"}
    r = subprocess.run(["sh", str(IOS / "Scripts/pocketsize-export.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = srcroot / "Generated/pocketsize"
    check_manifest_readable_by_apps(out, "onnx")
    assert not (srcroot / "Generated/.pocketsize-staging").exists()


def gradle_export_argv(values: dict[str, str]) -> list[str]:
    """The argv PocketsizeExport's commandLine(...) builds, with its Kotlin expressions
    (`executable.get()`, `staging.path`, ...) replaced by values; fails on anything else."""
    gradle = (ANDROID / "app/build.gradle.kts").read_text()
    call = re.search(r"commandLine\((.*?)\)\n", gradle, re.S).group(1)
    argv = []
    for token in (t.strip() for t in call.split(",")):
        if not token:
            continue
        if token.startswith('"'):
            argv.append(token.strip('"'))
        else:
            assert token in values, f"unexpected expression {token!r} in the Gradle commandLine"
            argv.append(values[token])
    return argv


def test_gradle_export_command_line_runs_for_real(tiny_model_dir, tmp_path):
    staging = tmp_path / "tmp/pocketsizeExportRelease/export"
    staging.parent.mkdir(parents=True)
    argv = gradle_export_argv({"executable.get()": _pocketsize_executable(), "model.get()": str(tiny_model_dir),
                               "formats.get()": "onnx", "quantize.get()": "none", "staging.path": str(staging)})
    assert argv[1:3] == ["export", str(tiny_model_dir)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    # the task then copies staging to <outputDir>/pocketsize, which AGP merges into assets/
    assets = tmp_path / "assets"
    shutil.copytree(staging, assets / "pocketsize")
    check_manifest_readable_by_apps(assets / "pocketsize", "onnx")


# ---------------------------------------------------------------------------
# Every `pocketsize ...` command line the app READMEs and the example CI
# workflows tell people to run parses with the real CLI parser.

DOC_FILES = [ANDROID / "README.md", IOS / "README.md", *sorted((ROOT / "examples/ci").glob("*.yml"))]


def documented_pocketsize_commands(path: Path) -> list[str]:
    """`pocketsize ...` lines (with `\\` continuations) in a workflow file, or in a
    README's fenced shell blocks."""
    cmds, current, in_code = [], None, path.suffix != ".md"
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if path.suffix == ".md" and line.startswith("```"):
            in_code = line in ("```sh", "```bash", "```shell") if not in_code else False
            continue
        if not in_code:
            continue
        for prefix in ("- run:", "run:", "$ "):
            if line.startswith(prefix):
                line = line[len(prefix):].strip()
        if current is None and line.startswith("pocketsize "):
            current = ""
        if current is not None:
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                cmds.append(current.strip())
                current = None
    return cmds


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_pocketsize_commands_parse(path):
    import shlex

    cli = pytest.importorskip("pocketsize.cli")
    if path.suffix == ".yml":
        yaml = pytest.importorskip("yaml")
        workflow = yaml.safe_load(path.read_text())
        assert isinstance(workflow.get("jobs"), dict) and workflow["jobs"], f"{path.name}: no jobs"
    cmds = documented_pocketsize_commands(path)
    assert cmds, f"no pocketsize command found in {path.name}"
    for cmd in cmds:
        argv = [t for t in shlex.split(cmd, comments=True) if t != "..."][1:]
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{path.relative_to(ROOT)}: `{cmd}` is refused by the pocketsize CLI (exit {e.code})")
