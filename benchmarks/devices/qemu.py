"""``qemu-aarch64``: emulated ARM64 Linux through qemu-user.

The ExecuTorch runner is cross-compiled for aarch64 against the aarch64
executorch wheel of the same version (benchmarks.runner.build, cached) and run
under ``qemu-aarch64-static -L /usr/aarch64-linux-gnu``. The real ARM64 kernels
(XNNPACK's NEON paths) execute, so outputs and accuracy are meaningful; timings
and memory are the emulator's and are labelled ``"emulated": true``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from pocketsize.errors import BadInput

from .base import Device, DeviceUnavailable, Job, RunOutput, Unsupported
from .local import LocalDevice, run_job

QEMU = "qemu-aarch64-static"
SYSROOT = Path("/usr/aarch64-linux-gnu")
APT_HINT = "apt-get install qemu-user-static g++-aarch64-linux-gnu"


class QemuAarch64Device(Device):
    kind = "qemu-aarch64"
    emulated = True
    default_eval_samples = 16  # ~300x slower than native: keep the eval set small

    def __init__(self, spec: str = "qemu-aarch64"):
        super().__init__(spec)
        if spec != "qemu-aarch64":
            raise BadInput(f"--device {spec!r}: write exactly qemu-aarch64")

    def _qemu_version(self) -> str | None:
        exe = shutil.which(QEMU)
        if not exe:
            return None
        res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        first = (res.stdout.splitlines() or [""])[0]
        return first.replace("qemu-aarch64 version", "").strip() or None

    def describe(self) -> dict[str, Any]:
        host = LocalDevice().describe()
        version = self._qemu_version()
        return {
            "kind": self.kind, "name": f"qemu-aarch64 on {host['name']}", "os": "Linux (qemu-user)",
            "arch": "aarch64", "cpu": f"QEMU {version or '(not installed)'} emulating aarch64 on {host['cpu']}",
            "emulated": True, "cores": host.get("cores"), "governor": host.get("governor"),
            "thermal_c": host.get("thermal_c"), "host": host,
        }

    def unsupported_reason(self, fmt: str) -> str | None:
        if fmt == "onnx":
            return ("ONNX Runtime under qemu-aarch64 is not set up (optional: it needs a cpuinfo "
                    "bind-mount); run onnx on --device local or ssh://")
        if fmt == "coreml":
            return "Core ML needs Apple hardware; use --device ios or a Mac"
        if fmt != "executorch":
            return f"unknown format {fmt!r}"
        return None

    def _check_tools(self) -> None:
        if shutil.which(QEMU) is None:
            raise DeviceUnavailable(f"{QEMU} not found; {APT_HINT}")
        if not (SYSROOT / "lib").is_dir():
            raise DeviceUnavailable(f"{SYSROOT} (aarch64 glibc) not found; {APT_HINT}")

    def run(self, job: Job, work: Path) -> RunOutput:
        reason = self.unsupported_reason(job.format)
        if reason:
            raise Unsupported(reason)
        self._check_tools()
        from ..runner.build import build_runner

        built = build_runner("aarch64")
        argv = [shutil.which(QEMU) or QEMU, "-L", str(SYSROOT), "-E", f"LD_LIBRARY_PATH={built.lib_dir}",
                str(built.exe), *job.runner_args(str(job.artifact), str(work / "out"))]
        out = run_job(argv, job, work, "aarch64 ExecuTorch runner under qemu")
        out.notes.append("memory is the qemu process's (emulator + guest)")
        return out
