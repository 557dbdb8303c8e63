"""The house rules: one installed name, a neutral core, stages side by side.

The package is installed (not editable) into a temporary folder, as a user's
``pip install .`` would lay it out, and checked there: only ``pocketsize`` at
the top, every source folder shipped, and the import-linter contracts in
pyproject.toml kept. A probe then adds a forbidden import to the installed
copy to show the check really fails on one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"compress": "pocketsize/compress", "export": "pocketsize/export", "benchmarks": "pocketsize/benchmarks",
          "pocketsize": "pocketsize"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --target`` of this checkout (no deps: they are in this venv already)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("src")
    src = build / "pocketsize-src"
    # build from a copy so the test never writes build/ or *.egg-info into the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", ".tools", "build", "*.egg-info",
                                                             "__pycache__", "docs", "android-demo", "ios-demo"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, text=True)
    return target


def _python(site: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], cwd=site.parent, env=env, capture_output=True, text=True)


def test_only_pocketsize_is_installed_at_the_top(installed):
    tops = sorted(p.name for p in installed.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert tops == ["pocketsize"]
    ok = _python(installed, "import pocketsize.compress, pocketsize.export, pocketsize.benchmarks, pocketsize.cli;"
                            "print(pocketsize.compress.__file__)")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(str(installed))
    for generic in ("compress", "export", "benchmarks"):
        r = _python(installed, f"import {generic}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"`import {generic}` must fail"


def test_every_source_module_is_shipped(installed):
    """pyproject lists the packages by hand (discovery would add top-level names):
    a new subpackage missing from that list would silently not install."""
    for folder, dest in STAGES.items():
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in (".py", ".cpp", ".sh", ".json", ".html") and "__pycache__" not in f.parts:
                rel = f.relative_to(ROOT / folder)
                assert (installed / dest / rel).exists(), f"{folder}/{rel} is not installed: list its package in pyproject.toml"


def _lint(site: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([str(exe), "--no-cache", str(ROOT / "pyproject.toml")], cwd=site.parent, env=env,
                          capture_output=True, text=True)


def test_import_contracts_are_kept(installed):
    r = _lint(installed)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("probe, contract", [
    ("pocketsize/export/_probe.py", "The stages stand side by side"),            # export -> compress
    ("pocketsize/data_probe.py", "The core imports no stage"),                 # core -> a stage
    ("pocketsize/compress/_probe.py", "No stage imports the CLI"),               # stage -> CLI
])
def test_a_forbidden_import_breaks_the_check(installed, tmp_path, probe, contract):
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    body = {"pocketsize/export/_probe.py": "import pocketsize.compress.plan\n",
            "pocketsize/data_probe.py": "from pocketsize.benchmarks import harness\n",
            "pocketsize/compress/_probe.py": "from pocketsize.cli import main\n"}[probe]
    (site / probe).write_text(body)
    if probe == "pocketsize/data_probe.py":  # make the probe part of the core's source modules
        (site / "pocketsize" / "data.py").write_text((site / "pocketsize" / "data.py").read_text()
                                                     + "\nfrom pocketsize import data_probe  # noqa\n")
    r = _lint(site)
    assert r.returncode != 0 and contract in r.stdout and "BROKEN" in r.stdout, r.stdout[-2000:]


def test_an_import_loop_breaks_the_check(installed, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    plan = site / "pocketsize" / "compress" / "plan.py"
    plan.write_text(plan.read_text() + "\n\ndef _loop():\n    from . import pruning  # noqa\n")
    r = _lint(site)
    assert r.returncode != 0 and "No import loops" in r.stdout, r.stdout[-2000:]
