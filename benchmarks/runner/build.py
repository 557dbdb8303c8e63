"""Build (once, cached) the native ExecuTorch runner for the host or for aarch64.

The runner is et_runner.cpp compiled with plain g++ against the headers and
runtime libraries shipped in the executorch wheel (ENVIRONMENT.md): no CMake,
no libtorch. For aarch64 the same source is cross-compiled with
aarch64-linux-gnu-g++ and linked against the libraries of the aarch64
executorch wheel of the *same version*, fetched with ``pip download``.

Cache: ``<user cache>/pocketsize/runner/<arch>-et<version>-<source hash>/``
holding ``et_runner`` and ``lib/`` (the shared libraries it needs). Builds go
to a temporary sibling and are renamed into place, so parallel builds are safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pocketsize.errors import BadInput

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("et_runner.cpp")
#: the libraries the runner links (the wheel also has QNN/OpenVINO backends we do not need)
LIBS = ("executorch", "executorch_kernels_optimized", "executorch_backend_xnnpack", "executorch_threadpool")
COMPILERS = {"x86_64": "g++", "aarch64": "aarch64-linux-gnu-g++"}
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}


@dataclasses.dataclass(frozen=True)
class BuiltRunner:
    """A runner binary and the folder of shared libraries it must find at run time."""

    exe: Path
    lib_dir: Path
    arch: str
    executorch_version: str


def cache_root() -> Path:
    """The per-user cache folder (XDG convention; ~/.cache when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pocketsize"


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def executorch_root() -> tuple[Path, str]:
    """(installed executorch package folder, version without local suffix)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("executorch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("executorch is not installed; pip install 'pocketsize[executorch]' to benchmark .pte files")
    root = Path(list(spec.submodule_search_locations)[0])
    from importlib.metadata import version

    return root, version("executorch").split("+")[0]


def build_runner(arch: str | None = None, cache: Path | None = None) -> BuiltRunner:
    """Return the cached runner for ``arch`` (default: host), building it if needed."""
    arch = arch or host_arch()
    if arch not in COMPILERS:
        raise BadInput(f"no ExecuTorch runner build for arch {arch!r}; supported: {', '.join(COMPILERS)}")
    et_root, et_version = executorch_root()
    src_hash = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    target = (cache or cache_root()) / "runner" / f"{arch}-et{et_version}-{src_hash}"
    built = BuiltRunner(target / "et_runner", target / "lib", arch, et_version)
    if built.exe.exists():
        return built
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        lib_dir = tmp / "lib"
        lib_dir.mkdir()
        if arch == host_arch():
            for name in LIBS:
                shutil.copy2(et_root / "lib" / f"lib{name}.so", lib_dir)
        else:
            _fetch_wheel_libs(arch, et_version, lib_dir, tmp)
        _compile(arch, et_root / "include", lib_dir, tmp / "et_runner", et_version)
        tmp.chmod(0o755)  # mkdtemp makes it private; the runner may be read by other users
        try:
            os.replace(tmp, target)
        except OSError:
            if not built.exe.exists():  # someone else won the race only if their build is there
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built ExecuTorch runner for %s in %s", arch, target)
    return built


def _compile(arch: str, include: Path, lib_dir: Path, out: Path, version: str) -> None:
    cxx = COMPILERS[arch]
    if shutil.which(cxx) is None:
        pkg = "g++" if arch == host_arch() else "g++-aarch64-linux-gnu"
        raise BadInput(f"{cxx} not found; install it (apt-get install {pkg}) to build the ExecuTorch runner")
    argv = [cxx, "-O2", "-std=c++17", "-w", "-DC10_USING_CUSTOM_GENERATED_MACROS",
            "-DET_EVENT_TRACER_ENABLED", f'-DET_RUNNER_VERSION="{version}"',
            f"-I{include}", f"-I{include / 'executorch/runtime/core/portable_type/c10'}",
            str(SOURCE), "-o", str(out), f"-L{lib_dir}", "-Wl,--no-as-needed",
            *[f"-l{n}" for n in LIBS], "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN/lib", "-lpthread"]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the ExecuTorch runner failed: {res.stderr.strip()[-800:]}")


def _fetch_wheel_libs(arch: str, version: str, lib_dir: Path, scratch: Path) -> None:
    """Download executorch==version for ``arch`` (no deps) and extract the runtime libraries."""
    dl = scratch / "wheel"
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
            "--platform", WHEEL_PLATFORMS[arch], "--python-version",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            f"executorch=={version}", "-d", str(dl), "-q"]
    res = subprocess.run(argv, capture_output=True, text=True)
    wheels = sorted(dl.glob("executorch-*.whl")) if dl.exists() else []
    if res.returncode != 0 or not wheels:
        raise BadInput(f"could not download the {arch} executorch=={version} wheel "
                       f"({res.stderr.strip()[-300:] or 'no wheel'}); check access to PyPI")
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in LIBS:
            member = f"executorch/lib/lib{name}.so"
            with zf.open(member) as src, open(lib_dir / f"lib{name}.so", "wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.rmtree(dl, ignore_errors=True)  # 18 MB we no longer need
