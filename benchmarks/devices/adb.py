"""``adb[:serial]``: an Android phone running the pocketsize demo app (android-demo/).

The app's benchmark mode is the runner here. For each artifact the driver:

1. pushes the model (and the evaluation inputs) into the app's external files
   folder (``android.device_dir`` in ``benchmarks/app_contract.json``), which
   the adb shell may write and the app may read without any permission;
2. starts ``BenchmarkActivity`` with ``am start`` and one extra per contract
   parameter (``--es`` strings, ``--ei`` integers);
3. polls for ``report.json`` (the app writes it last, by rename), noticing a
   crashed app early with ``pidof``;
4. pulls the output folder and reads it with the same :func:`collect_output`
   as every other device, plus the app's PSS readings.

``adb shell`` hands its argument to the phone's shell, so every remote word is
``shlex.quote``-d. Requires the app installed (``adb install`` the APK built
from android-demo/, see its README) and ``adb`` on PATH.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from pocketsize.errors import BadInput

from ..app_contract import load_contract, memory_extras, plan_app_run, read_report
from .base import (PROBE_SCRIPT, Device, DeviceUnavailable, Job, RunnerCrashed, RunnerTimeout, RunOutput,
                   Unsupported, collect_output, parse_probe, read_times)

log = logging.getLogger(__name__)

PLATFORM = "android"


class AdbDevice(Device):
    kind = "adb"
    emulated = False  # set from the phone's build properties in describe()
    #: seconds between polls for report.json (tests lower it)
    poll_s: float = 1.0
    #: seconds any single adb call may take (push of a large model included)
    adb_timeout_s: float = 300.0

    def __init__(self, spec: str = "adb"):
        super().__init__(spec)
        key, _, serial = spec.partition(":")
        if key != "adb":
            raise BadInput(f"--device {spec!r}: write adb or adb:SERIAL (serial from `adb devices`)")
        if serial and not re.fullmatch(r"[A-Za-z0-9_.:\[\]%][A-Za-z0-9_.:\[\]%-]*", serial):
            raise BadInput(f"--device {spec!r}: the serial {serial!r} is not a plain adb serial (it must not "
                           "start with '-' or contain spaces); write adb:SERIAL as `adb devices` prints it")
        self.serial = serial or None
        self.contract = load_contract()
        self.android = self.contract["android"]

    # ------------------------------------------------------------------ commands

    def adb_argv(self, *args: str) -> list[str]:
        """``adb [-s SERIAL] ARGS`` as an argv list (run without a local shell)."""
        return ["adb", *(["-s", self.serial] if self.serial else []), *args]

    def shell_argv(self, remote: Sequence[str]) -> list[str]:
        """``adb shell`` with ``remote`` quoted for the phone's shell, one word per item."""
        return self.adb_argv("shell", " ".join(shlex.quote(str(w)) for w in remote))

    def am_start_argv(self, params: dict[str, str]) -> list[str]:
        """``am start`` of the benchmark activity with one extra per contract parameter."""
        extras = self.android["extras"]
        types = self.contract["params"]
        component = f"{self.android['package']}/{self.android['benchmark_activity']}"
        remote = ["am", "start", "-W", "-S", "-n", component]
        for name, value in params.items():
            flag = "--ei" if types[name]["type"] == "int" else "--es"
            remote += [flag, extras[name], value]
        return self.shell_argv(remote)

    def _call(self, argv: list[str], *, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        log.debug("exec %s", shlex.join(argv))
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.adb_timeout_s)
        except FileNotFoundError:
            raise DeviceUnavailable("adb is not on PATH; install Android platform-tools") from None
        except subprocess.TimeoutExpired:
            raise DeviceUnavailable(f"`{shlex.join(argv[:4])} ...` hung; is the phone connected and unlocked?") from None
        if check and res.returncode != 0:
            msg = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeviceUnavailable(f"`{shlex.join(argv[:5])}` failed: {msg[0]}")
        return res

    # ------------------------------------------------------------------ Device

    def describe(self) -> dict[str, Any]:
        props = ["ro.product.manufacturer", "ro.product.model", "ro.build.version.release",
                 "ro.build.version.sdk", "ro.product.cpu.abi", "ro.soc.manufacturer", "ro.soc.model",
                 "ro.hardware", "ro.kernel.qemu", "ro.boot.qemu"]
        script = "; ".join(f"echo {p}=$(getprop {p})" for p in props)
        values: dict[str, str] = {}
        for line in self._call(self.adb_argv("shell", script)).stdout.splitlines():
            k, sep, v = line.strip().partition("=")
            if sep:
                values[k] = v.strip()
        probe = parse_probe(self._call(self.adb_argv("shell", PROBE_SCRIPT), check=False).stdout)
        self.emulated = values.get("ro.kernel.qemu") == "1" or values.get("ro.boot.qemu") == "1" \
            or values.get("ro.hardware") in ("goldfish", "ranchu")
        soc = " ".join(v for v in (values.get("ro.soc.manufacturer"), values.get("ro.soc.model")) if v)
        return {
            "kind": "adb",
            "name": " ".join(v for v in (values.get("ro.product.manufacturer"), values.get("ro.product.model")) if v)
            or self.serial,
            "serial": self.serial,
            "os": f"Android {values.get('ro.build.version.release', '?')} (API {values.get('ro.build.version.sdk', '?')})",
            "arch": values.get("ro.product.cpu.abi") or probe.get("arch"),
            "cpu": soc or values.get("ro.hardware") or probe.get("cpu"),
            "emulated": self.emulated,
            "cores": probe.get("cores"),
            "governor": probe.get("governor"),
            "thermal_c": probe.get("thermal_c"),
        }

    def unsupported_reason(self, fmt: str) -> str | None:
        if fmt not in self.contract["formats"][PLATFORM]:
            return f"{fmt} does not run on Android; the app runs {', '.join(self.contract['formats'][PLATFORM])}" + \
                (" (use --device ios for Core ML)" if fmt == "coreml" else "")
        if shutil.which("adb") is None:
            return "adb is not on PATH; install Android platform-tools and connect the phone"
        return None

    def run(self, job: Job, work: Path) -> RunOutput:
        reason = self.unsupported_reason(job.format)
        if reason:
            raise Unsupported(reason)
        run = plan_app_run(job, self.android["device_dir"], PLATFORM)
        self._call(self.shell_argv(["mkdir", "-p", f"{run.remote}/out"]))
        try:
            self._call(self.adb_argv("push", str(job.artifact), run.model))
            if run.eval_input:
                self._call(self.adb_argv("push", str(job.eval_input), run.eval_input))
            self._call(self.am_start_argv(run.params))
            self._wait(run.report, job.timeout_s)
            self._call(self.adb_argv("pull", f"{run.remote}/out", str(work)))
        finally:
            self._call(self.shell_argv(["rm", "-rf", run.remote]), check=False)
        return collect_app_output(work / "out", job, run.run_id, PLATFORM)

    def _wait(self, report: str, timeout_s: float) -> None:
        """Poll until the app has written ``report``; raise early if the app process is gone."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._call(self.shell_argv(["test", "-e", report]), check=False).returncode == 0:
                return
            alive = self._call(self.shell_argv(["pidof", self.android["package"]]), check=False)
            if alive.returncode != 0 and \
                    self._call(self.shell_argv(["test", "-e", report]), check=False).returncode != 0:
                raise RunnerCrashed("the pocketsize app exited without writing report.json; "
                                    "see `adb logcat -s pocketsize AndroidRuntime`")
            if time.monotonic() > deadline:
                self._call(self.shell_argv(["am", "force-stop", self.android["package"]]), check=False)
                raise RunnerTimeout(f"the app did not finish within {timeout_s:g} s and was stopped; "
                                    "raise --timeout or lower --iterations")
            time.sleep(self.poll_s)


def collect_app_output(out_dir: Path, job: Job, run_id: str, platform: str) -> RunOutput:
    """An app's pulled output folder -> :class:`RunOutput` (shared by adb and ios).

    A report with ``status: failed`` becomes :class:`RunnerCrashed` carrying the
    app's own error and the timings it managed to write.
    """
    try:
        report = read_report(out_dir, run_id=run_id, platform=platform)
    except ValueError as e:
        raise RunnerCrashed(str(e)) from None
    if report is None:
        err = RunnerCrashed("the app wrote no report.json")
        err.partial_times = read_times(out_dir / "times.txt")  # type: ignore[attr-defined]
        raise err
    if report["status"] == "failed":
        err = RunnerCrashed(f"app: {report['error']}")
        err.partial_times = read_times(out_dir / "times.txt")  # type: ignore[attr-defined]
        raise err
    out = collect_output(out_dir, job)
    out.memory = {**out.memory, **memory_extras(report)}
    app = report.get("app") or {}
    out.notes.append(f"measured by {app.get('name', 'the app')} {app.get('version', '')}".strip())
    return out
