"""benchmarks: latency, memory and on-device accuracy of exported artifacts.

    from pocketsize.benchmarks import run, BenchConfig
    results = run("out/export", device="local", config=BenchConfig(iterations=50), data="photos/", out_dir="out/bench")

Devices: ``pocketsize.benchmarks.devices.get_device`` (local, qemu-aarch64, ssh://, adb, ios).
Heavy toolchains are imported only when a run needs them.
"""

from __future__ import annotations

from typing import Any

from .config import BenchConfig

__all__ = ["run", "BenchConfig"]


def run(artifact_dir: Any, device: Any = "local", config: BenchConfig | None = None,
        data: Any = None, out_dir: Any = None) -> dict:
    """Benchmark every artifact of ``artifact_dir`` on ``device``; see :func:`pocketsize.benchmarks.harness.run`."""
    from .harness import run as _run

    return _run(artifact_dir, device=device, config=config, data=data, out_dir=out_dir)
