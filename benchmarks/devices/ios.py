"""``ios[:udid]``: an iPhone/iPad running the pocketsize demo app (ios-demo/), via Xcode's tools.

Two ways to start the app's benchmark (``ios-demo/README.md``):

* ``method="app"`` (default, what ``--device ios`` uses): ``xcrun devicectl``
  copies the model into the app's data container, launches the app with one
  ``-pocketsize.<param> VALUE`` launch argument per contract parameter (iOS puts
  them in UserDefaults), polls for ``report.json`` and copies the output back.
* ``method="xctest"``: the same copy-in, then ``xcodebuild test-without-building
  -xctestrun FILE -only-testing:<test>`` with ``TEST_RUNNER_POCKETSIZE_*``
  variables (xcodebuild hands them to the test process without the prefix);
  the XCTest also records XCTClockMetric / XCTMemoryMetric in its .xcresult.

Nothing goes through a local shell: argv lists are passed to ``subprocess``
as they are, and logged with ``shlex.join`` so they can be pasted into one.
Needs macOS with Xcode 15+, a paired device with Developer Mode on, and the app
installed (signed with your team).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pocketsize.errors import BadInput

from ..app_contract import load_contract, plan_app_run
from .adb import collect_app_output
from .base import Device, DeviceUnavailable, Job, RunnerTimeout, RunOutput, Unsupported

log = logging.getLogger(__name__)

PLATFORM = "ios"
METHODS = ("app", "xctest")


class IosDevice(Device):
    kind = "ios"
    emulated = False
    poll_s: float = 1.0
    tool_timeout_s: float = 300.0

    def __init__(self, spec: str = "ios", *, method: str = "app", xctestrun: str | Path | None = None):
        super().__init__(spec)
        key, _, udid = spec.partition(":")
        if key != "ios":
            raise BadInput(f"--device {spec!r}: write ios or ios:UDID (from `xcrun devicectl list devices`)")
        if method not in METHODS:
            raise BadInput(f"ios method {method!r}: use one of {METHODS}")
        if method == "xctest" and not xctestrun:
            raise BadInput("the xctest method needs the .xctestrun file from "
                           "`xcodebuild build-for-testing` (see ios-demo/README.md)")
        if udid and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", udid):
            raise BadInput(f"--device {spec!r}: the UDID {udid!r} is not a device identifier (letters, digits "
                           "and '-', not first); write ios:UDID as `xcrun devicectl list devices` prints it")
        self.udid = udid or None
        self.method = method
        self.xctestrun = Path(xctestrun) if xctestrun else None
        self.contract = load_contract()
        self.ios = self.contract["ios"]

    # ------------------------------------------------------------------ commands

    def devicectl(self, *args: str) -> list[str]:
        return ["xcrun", "devicectl", *args]

    def copy_to_argv(self, local: Path, dest: str) -> list[str]:
        return self.devicectl("device", "copy", "to", "--device", self._udid(),
                              "--domain-type", "appDataContainer", "--domain-identifier", self.ios["bundle_id"],
                              "--source", str(local), "--destination", dest)

    def copy_from_argv(self, source: str, local: Path) -> list[str]:
        return self.devicectl("device", "copy", "from", "--device", self._udid(),
                              "--domain-type", "appDataContainer", "--domain-identifier", self.ios["bundle_id"],
                              "--source", source, "--destination", str(local))

    def launch_argv(self, params: dict[str, str]) -> list[str]:
        """``devicectl device process launch``; ``--`` keeps ``-pocketsize.*`` out of devicectl's options."""
        args = self.devicectl("device", "process", "launch", "--device", self._udid(),
                              "--terminate-existing", "--", self.ios["bundle_id"])
        for name, value in params.items():
            args += [f"-{self.ios['launch_arguments'][name]}", value]
        return args

    def xctest_argv_env(self, params: dict[str, str], result_bundle: Path) -> tuple[list[str], dict[str, str]]:
        argv = ["xcodebuild", "test-without-building", "-xctestrun", str(self.xctestrun),
                "-destination", f"id={self._udid()}", f"-only-testing:{self.ios['test_identifier']}",
                "-resultBundlePath", str(result_bundle)]
        env = {f"TEST_RUNNER_{self.ios['xctest_env'][k]}": v for k, v in params.items()}
        return argv, env

    def _call(self, argv: list[str], *, check: bool = True, env: dict[str, str] | None = None,
              timeout: float | None = None) -> subprocess.CompletedProcess:
        log.debug("exec %s", shlex.join(argv))
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.tool_timeout_s,
                                 env={**os.environ, **env} if env else None)
        except FileNotFoundError:
            raise DeviceUnavailable("xcrun is not available: the ios device needs macOS with Xcode 15+") from None
        except subprocess.TimeoutExpired:
            raise DeviceUnavailable(f"`{shlex.join(argv[:5])} ...` hung; is the device paired and unlocked?") from None
        if check and res.returncode != 0:
            msg = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeviceUnavailable(f"`{shlex.join(argv[:5])}` failed: {msg[0]}")
        return res

    def _json(self, *args: str) -> dict[str, Any]:
        """Run a devicectl command with ``--json-output`` and return the parsed file."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.json"
            self._call(self.devicectl(*args, "--json-output", str(path)))
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                raise DeviceUnavailable(f"devicectl {' '.join(args[:3])} wrote no JSON") from None

    def _udid(self) -> str:
        if self.udid:
            return self.udid
        devices = self._json("list", "devices").get("result", {}).get("devices", [])
        ids = [d.get("hardwareProperties", {}).get("udid") or d.get("identifier") for d in devices
               if d.get("connectionProperties", {}).get("tunnelState") != "unavailable"]
        ids = [i for i in ids if i]
        if len(ids) != 1:
            raise BadInput(f"found {len(ids)} available iOS devices {ids}; pass --device ios:UDID")
        self.udid = ids[0]
        return self.udid

    # ------------------------------------------------------------------ Device

    def describe(self) -> dict[str, Any]:
        info = self._json("device", "info", "details", "--device", self._udid()).get("result", {})
        dev, hw = info.get("deviceProperties", {}), info.get("hardwareProperties", {})
        return {
            "kind": "ios",
            "name": dev.get("name") or hw.get("marketingName"),
            "udid": self.udid,
            "os": f"iOS {dev.get('osVersionNumber', '?')}",
            "arch": (hw.get("cpuType") or {}).get("name") or "arm64",
            "cpu": hw.get("marketingName") or hw.get("productType"),
            "emulated": False,
            "cores": None, "governor": None, "thermal_c": None,
        }

    def unsupported_reason(self, fmt: str) -> str | None:
        if fmt not in self.contract["formats"][PLATFORM]:
            return f"{fmt} does not run in the iOS app; it runs {', '.join(self.contract['formats'][PLATFORM])}"
        if shutil.which("xcrun") is None:
            return "xcrun is not available: the ios device needs macOS with Xcode 15+"
        return None

    def run(self, job: Job, work: Path) -> RunOutput:
        reason = self.unsupported_reason(job.format)
        if reason:
            raise Unsupported(reason)
        # paths relative to the container home: the app resolves them with NSHomeDirectory()
        run = plan_app_run(job, self.ios["container_dir"], PLATFORM)
        self._call(self.copy_to_argv(job.artifact, run.model))
        if run.eval_input:
            self._call(self.copy_to_argv(Path(job.eval_input), run.eval_input))
        if self.method == "xctest":
            argv, env = self.xctest_argv_env(run.params, work / "result.xcresult")
            # A failing XCTest still leaves report.json (status failed): read it rather than the exit code.
            res = self._call(argv, check=False, env=env, timeout=job.timeout_s + 120)
            (work / "xcodebuild.log").write_text(res.stdout + res.stderr)
        else:
            self._call(self.launch_argv(run.params))
            self._wait(run.report, work / "poll", job.timeout_s)
        self._call(self.copy_from_argv(f"{run.remote}/out", work / "out"))
        return collect_app_output(work / "out", job, run.run_id, PLATFORM)

    def _wait(self, report: str, scratch: Path, timeout_s: float) -> None:
        """Poll by copying report.json out of the container until it exists."""
        deadline = time.monotonic() + timeout_s
        scratch.mkdir(parents=True, exist_ok=True)
        while self._call(self.copy_from_argv(report, scratch / "report.json"), check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RunnerTimeout(f"the app did not finish within {timeout_s:g} s; "
                                    "raise --timeout or lower --iterations")
            time.sleep(self.poll_s)
