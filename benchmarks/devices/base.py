"""The Device interface every benchmark target implements, and the runner protocol.

A *device* is somewhere an artifact can be executed: this host, emulated ARM64,
a board over ssh, a phone over adb, an iPhone through Xcode. The harness in
``pocketsize.benchmarks.harness`` never talks to a device directly; it builds a
:class:`Job`, hands it to :meth:`Device.run`, and gets a :class:`RunOutput`
back (or a :class:`DeviceError`, which becomes ``"status": "failed"``).

The runner protocol (the contract between the harness and whatever executes a
model on the device: the C++ ExecuTorch runner, the Python ONNX Runtime runner,
the phone apps' benchmark modes) is fixed here so that every device reports the
same things:

``RUNNER MODEL --out-dir DIR --warmup W --iterations N --min-duration-ms D
--threads T [--eval-input FILE --eval-count K]``

* ``MODEL``: the artifact file (``.pte``, ``.onnx``, ``.mlpackage``).
* The runner loads the model (timing it: ``load_ms``), runs one inference on a
  fixed input (``first_inference_ms``, cold), ``W`` warmup inferences (not
  recorded), then timed inferences until both ``N`` runs and ``D`` ms have been
  reached. Each timed run is one line ``t <ms>`` appended to ``DIR/times.txt``
  *as it happens*, so a runner that crashes mid-run loses nothing measured.
* If ``--eval-input`` is given: ``FILE`` holds ``K`` inputs as raw little-endian
  float32 (``K * prod(input_shape)`` values); the runner writes the ``K``
  outputs, raw little-endian float32, to ``DIR/eval_outputs.bin``.
* At the end it writes ``DIR/report.json``: ``{"runtime", "runtime_version",
  "load_ms", "first_inference_ms", "output_shape", "eval_count", "threads"}``
  and copies ``/proc/self/status`` and ``/proc/self/smaps_rollup`` (where the
  OS has them) to ``DIR/status.txt`` and ``DIR/smaps_rollup.txt``; the harness
  parses those (peak RSS = VmHWM; anonymous vs file-backed = RssAnon/RssFile).
  A device without /proc may instead put ``"memory": {...}`` in report.json.

:func:`collect_output` turns such a folder into a :class:`RunOutput`; a device
implementation only has to get the folder back onto the host.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

FORMATS = ("executorch", "onnx", "coreml")


class DeviceError(RuntimeError):
    """A run on a device failed; the harness records it as ``status: failed``."""


class RunnerCrashed(DeviceError):
    """The runner exited non-zero or was killed by a signal."""


class RunnerTimeout(DeviceError):
    """The runner did not finish within ``BenchConfig.timeout_s``."""


class DeviceUnavailable(DeviceError):
    """The device cannot be reached (ssh refused, adb device gone, no qemu)."""


class Unsupported(DeviceError):
    """This device cannot run this format at all (e.g. Core ML off macOS)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What to run: one artifact, how long, and the evaluation inputs.

    Paths are on the host; a remote device copies what it needs.
    """

    artifact: Path              # model file on the host (.pte / .onnx / .mlpackage)
    format: str                 # "executorch" | "onnx" | "coreml"
    input_shape: tuple[int, ...]  # one sample incl. batch 1, e.g. (1, 3, 32, 32)
    warmup: int
    iterations: int
    min_duration_s: float
    threads: int
    timeout_s: float
    eval_input: Path | None = None  # raw float32, eval_count * prod(input_shape) values
    eval_count: int = 0
    extra_args: tuple[str, ...] = ()  # mode flags every runner copy accepts (the LLM decode loop's)

    def runner_args(self, model: str, out_dir: str, eval_input: str | None = None) -> list[str]:
        """The runner's argv after the executable, with device-side paths.

        Devices pass the paths *as the device sees them*; the list is meant for
        ``subprocess`` (no shell) or to be joined with ``shlex.quote``.
        """
        args = [model, "--out-dir", out_dir, "--warmup", str(self.warmup),
                "--iterations", str(self.iterations),
                "--min-duration-ms", str(int(round(self.min_duration_s * 1000))),
                "--threads", str(self.threads)]
        if self.eval_input is not None and self.eval_count > 0:
            args += ["--eval-input", eval_input or str(self.eval_input),
                     "--eval-count", str(self.eval_count)]
        return args + list(self.extra_args)


@dataclasses.dataclass
class RunOutput:
    """What came back from one run (raw; statistics are computed by the harness)."""

    runtime: str
    runtime_version: str | None
    load_ms: float | None
    first_inference_ms: float | None
    times_ms: list[float]
    memory: dict[str, Any]           # peak_rss_mb, anon_mb, file_mb, ... (None where unknown)
    eval_outputs: Any = None         # numpy float32 array (eval_count, ...) or None
    threads: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


class Device(abc.ABC):
    """A place to run artifacts. Subclasses register in ``pocketsize.benchmarks.devices``.

    Lifecycle: ``dev = get_device("ssh://pi@board")``; ``dev.describe()`` once;
    ``dev.run(job, work)`` per artifact (each run in its own process on the
    device); ``dev.close()`` at the end. ``run`` raises :class:`DeviceError`
    subclasses for every expected failure; anything else is a bug.
    """

    #: registry key prefix ("local", "qemu-aarch64", "ssh", "adb", "ios")
    kind: str = ""
    #: True when timings do not come from real hardware (labelled in reports)
    emulated: bool = False
    #: eval samples when BenchConfig.eval_samples is None (None = the whole test split);
    #: slow devices (emulators) use a small default
    default_eval_samples: int | None = None

    def __init__(self, spec: str):
        self.spec = spec

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """``{"kind", "name", "os", "arch", "cpu", "emulated"}`` plus whatever is
        readable: ``"governor"``, ``"thermal_c"``, ``"cores"``. Must not raise for
        a reachable device; unknown values are None."""

    def unsupported_reason(self, fmt: str) -> str | None:
        """None if this device can run ``fmt``; otherwise why not (one line)."""
        return None

    @abc.abstractmethod
    def run(self, job: Job, work: Path) -> RunOutput:
        """Execute ``job`` in a fresh process on the device.

        ``work`` is an empty host folder for this job: put the pulled runner
        output folder there and return :func:`collect_output` of it. Enforce
        ``job.timeout_s`` (kill the process, raise :class:`RunnerTimeout`).
        """

    def close(self) -> None:
        """Release connections and temporary files on the device."""

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# Shared parsing: runner output folder -> RunOutput; /proc text -> dicts.

def parse_proc_kb(text: str) -> dict[str, int]:
    """Parse ``Key:   123 kB`` lines (/proc/<pid>/status, smaps_rollup) into kB ints."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def memory_from_proc(status: str | None, smaps_rollup: str | None) -> dict[str, Any]:
    """Peak RSS and the anonymous / file-backed split, in MB (None where unknown)."""
    st = parse_proc_kb(status or "")
    sm = parse_proc_kb(smaps_rollup or "")

    def mb(kb: int | None) -> float | None:
        return None if kb is None else round(kb / 1024.0, 3)

    return {
        "peak_rss_mb": mb(st.get("VmHWM")),
        "rss_mb": mb(st.get("VmRSS", sm.get("Rss"))),
        "anon_mb": mb(st.get("RssAnon", sm.get("Anonymous"))),
        "file_mb": mb(st.get("RssFile")),
        "shmem_mb": mb(st.get("RssShmem")),
        "pss_mb": mb(sm.get("Pss")),
        "pss_anon_mb": mb(sm.get("Pss_Anon")),
        "pss_file_mb": mb(sm.get("Pss_File")),
        "source": "/proc/self/status" + (" + smaps_rollup" if sm else "") if st else None,
    }


def read_times(path: Path) -> list[float]:
    """Timed runs from ``times.txt`` (``t <ms>`` per line); tolerates a torn last line."""
    times: list[float] = []
    if not path.exists():
        return times
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "t":
            try:
                v = float(parts[1])
            except ValueError:
                continue
            if math.isfinite(v):
                times.append(v)
    return times


def collect_output(out_dir: Path, job: Job) -> RunOutput:
    """Read a runner output folder (see module docstring) into a :class:`RunOutput`.

    Raises :class:`RunnerCrashed` if ``report.json`` is missing or broken (the
    runner died before finishing); the partial ``times.txt`` is attached to the
    error as ``err.partial_times`` so nothing measured is lost.
    """
    report_path = out_dir / "report.json"
    times = read_times(out_dir / "times.txt")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as e:
        err = RunnerCrashed(f"runner wrote no valid report.json ({e.__class__.__name__})")
        err.partial_times = times  # type: ignore[attr-defined]
        raise err from None
    memory = report.get("memory") or memory_from_proc(
        _read_opt(out_dir / "status.txt"), _read_opt(out_dir / "smaps_rollup.txt"))
    outputs = None
    eval_path = out_dir / "eval_outputs.bin"
    if job.eval_count and eval_path.exists():
        import numpy as np

        flat = np.fromfile(eval_path, dtype="<f4")
        if flat.size == 0 or flat.size % job.eval_count:
            raise RunnerCrashed(f"eval_outputs.bin has {flat.size} floats, "
                                f"not a multiple of {job.eval_count} samples")
        outputs = flat.reshape(job.eval_count, -1)
    return RunOutput(
        runtime=str(report.get("runtime", job.format)),
        runtime_version=report.get("runtime_version"),
        load_ms=_float(report.get("load_ms")),
        first_inference_ms=_float(report.get("first_inference_ms")),
        times_ms=times or [float(t) for t in report.get("times_ms", [])],
        memory=memory,
        eval_outputs=outputs,
        threads=report.get("threads"),
        notes=list(report.get("notes", [])),
    )


def _read_opt(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------
# Shared probing of a Linux (or Android) system through any shell.

#: One shell script that prints every fact :func:`parse_probe` understands.
#: Devices run it through their own shell (local sh, ssh, adb shell).
PROBE_SCRIPT = r"""
echo "@@uname"; uname -srm 2>/dev/null
echo "@@os"; (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") || getprop ro.build.fingerprint 2>/dev/null
echo "@@cpuinfo"; grep -E '^(model name|Hardware|CPU part|Processor|CPU implementer)' /proc/cpuinfo 2>/dev/null | sort -u
echo "@@nproc"; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null
echo "@@governor"; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null
echo "@@thermal"; cat /sys/class/thermal/thermal_zone*/temp 2>/dev/null
echo "@@end"
"""


def parse_probe(text: str) -> dict[str, Any]:
    """Parse :data:`PROBE_SCRIPT` output into ``describe()`` fields."""
    sections: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("@@"):
            cur = line[2:].strip()
            sections[cur] = []
        elif cur is not None and line.strip():
            sections[cur].append(line.strip())
    uname = (sections.get("uname") or [""])[0].split()
    fields: dict[str, str] = {}
    for line in sections.get("cpuinfo", []):
        key, _, val = line.partition(":")
        fields.setdefault(key.strip(), val.strip())
    cpu = fields.get("model name") or fields.get("Hardware") or fields.get("Processor")
    if not cpu and fields.get("CPU part"):  # ARM: no model name, only implementer/part ids
        cpu = f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    temps = []
    for t in sections.get("thermal", []):
        try:
            temps.append(int(t) / 1000.0)
        except ValueError:
            pass
    nproc = (sections.get("nproc") or [None])[0]
    return {
        "os": (sections.get("os") or [" ".join(uname[:2]) or None])[0],
        "kernel": " ".join(uname[:2]) or None,
        "arch": uname[2] if len(uname) > 2 else None,
        "cpu": cpu,
        "cores": int(nproc) if nproc and nproc.isdigit() else None,
        "governor": (sections.get("governor") or [None])[0],
        "thermal_c": max(temps) if temps else None,
    }


ShellFn = Callable[[str], str]
