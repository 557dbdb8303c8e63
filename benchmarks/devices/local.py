"""``local``: this host. ExecuTorch via the native runner, ONNX Runtime via a Python
subprocess, Core ML on macOS only. Every artifact runs in its own process."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .base import (PROBE_SCRIPT, Device, DeviceError, Job, RunOutput, Unsupported, collect_output, parse_probe,
                   read_times)
from .process import run_checked

RUNNER_DIR = Path(__file__).resolve().parent.parent / "runner"


def runner_argv(fmt: str, job: Job, out_dir: Path) -> list[str]:
    """Host argv for ``fmt`` (builds the ExecuTorch runner on first use)."""
    args = job.runner_args(str(job.artifact), str(out_dir))
    if fmt == "executorch":
        from ..runner.build import build_runner

        return [str(build_runner().exe), *args]
    if fmt == "onnx":
        return [sys.executable, str(RUNNER_DIR / "ort_runner.py"), *args]
    if fmt == "coreml":
        return [sys.executable, str(RUNNER_DIR / "coreml_runner.py"), *args]
    raise Unsupported(f"unknown format {fmt!r}")


def run_job(argv: list[str], job: Job, work: Path, what: str) -> RunOutput:
    """Run a protocol runner in ``work/out`` and collect it; partial timings survive a crash."""
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    log_text = ""
    try:
        log_text = run_checked(argv, job.timeout_s, what=what)
    except DeviceError as e:  # crash or timeout: keep what the runner wrote before it died
        e.partial_times = read_times(out / "times.txt")  # type: ignore[attr-defined]
        raise
    finally:
        (work / "runner.log").write_text(log_text)
    return collect_output(out, job)


class LocalDevice(Device):
    kind = "local"
    emulated = False

    def __init__(self, spec: str = "local"):
        super().__init__(spec)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if platform.system() == "Linux":
            res = subprocess.run(["sh", "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=30)
            info = parse_probe(res.stdout)
        return {
            "kind": "local",
            "name": socket.gethostname(),
            "os": info.get("os") or f"{platform.system()} {platform.release()}",
            "arch": info.get("arch") or platform.machine(),
            "cpu": info.get("cpu") or platform.processor() or None,
            "emulated": False,
            "cores": info.get("cores"),
            "governor": info.get("governor"),
            "thermal_c": info.get("thermal_c"),
            "kernel": info.get("kernel"),
        }

    def unsupported_reason(self, fmt: str) -> str | None:
        if fmt == "coreml" and platform.system() != "Darwin":
            return "Core ML prediction needs macOS; run this bench on a Mac (or use --device ios)"
        if fmt == "executorch":
            if importlib.util.find_spec("executorch") is None:
                return "executorch is not installed; pip install 'pocketsize[executorch]'"
            if shutil.which("g++") is None:
                return "g++ is needed to build the ExecuTorch runner; install it (apt-get install g++)"
        if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed; pip install 'pocketsize[onnx]'"
        if fmt == "coreml" and importlib.util.find_spec("coremltools") is None:
            return "coremltools is not installed; pip install 'pocketsize[coreml]'"
        return None

    def run(self, job: Job, work: Path) -> RunOutput:
        reason = self.unsupported_reason(job.format)
        if reason:
            raise Unsupported(reason)
        argv = runner_argv(job.format, job, work / "out")
        return run_job(argv, job, work, f"{job.format} runner")
