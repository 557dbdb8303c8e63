"""``ssh://user@host[:port]``: a Linux board (Raspberry Pi, Jetson) reached with OpenSSH.

Push the runner + artifact + eval inputs into a private temporary folder on the
board, run there under ``timeout``, pull the runner's output folder back, remove
the folder on close. Files travel as tar streams over the ssh channel (no scp or
sftp needed on the board). Every remote argument is ``shlex.quote``-d.

Optional query parameters: ``identity=PATH`` (private key), ``known_hosts=PATH``,
``strict=yes|no|accept-new`` (StrictHostKeyChecking, default accept-new),
``python=PATH`` (the board's Python for ONNX Runtime, default python3).
"""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pocketsize.errors import BadInput

from .base import (PROBE_SCRIPT, Device, DeviceUnavailable, Job, RunnerCrashed, RunnerTimeout, RunOutput,
                   Unsupported, collect_output, parse_probe, read_times)
from .process import describe_exit, tail

RUNNER_DIR = Path(__file__).resolve().parent.parent / "runner"
SSH_FAILED = 255  # ssh's own exit code for connection errors
KILLED = 137      # `timeout -s KILL` → 128 + 9
#: a user or host name that ssh cannot read as an option: no leading "-", no blanks or control characters
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\[\]:%][A-Za-z0-9_.\[\]:%@+~-]*")
#: what ``mktemp -d /tmp/pocketsize.XXXXXX`` prints, and nothing else: one absolute path in /tmp
REMOTE_DIR = re.compile(r"/tmp/pocketsize\.[A-Za-z0-9]{6,}")


class SshDevice(Device):
    kind = "ssh"
    emulated = False

    def __init__(self, spec: str):
        super().__init__(spec)
        u = urlsplit(spec)
        if u.scheme != "ssh" or not u.hostname:
            raise BadInput(f"--device {spec!r}: write ssh://user@host[:port]")
        try:
            port = u.port or 22
        except ValueError:
            raise BadInput(f"--device {spec!r}: the port must be a number") from None
        for what, value in (("user", u.username), ("host", u.hostname)):
            if value is not None and not _SAFE_NAME.fullmatch(value):
                raise BadInput(f"--device {spec!r}: the {what} {value!r} is not a plain name (it must not "
                               "start with '-' or contain spaces/control characters); write ssh://user@host[:port]")
        self.user, self.host, self.port = u.username, u.hostname, port
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = set(q) - {"identity", "known_hosts", "strict", "python"}
        if unknown:
            raise BadInput(f"--device {spec!r}: unknown option(s) {sorted(unknown)}; "
                           "use identity=, known_hosts=, strict=, python=")
        self.identity, self.known_hosts = q.get("identity"), q.get("known_hosts")
        self.strict = q.get("strict", "accept-new")
        self.python = q.get("python", "python3")
        self._remote: str | None = None
        self._arch: str | None = None
        self._pushed: set[str] = set()
        self._jobs = 0

    # -- transport ---------------------------------------------------------
    def ssh_argv(self, command: str) -> list[str]:
        """The local argv that runs the (already quoted) shell ``command`` on the board."""
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3", "-o", f"StrictHostKeyChecking={self.strict}",
                "-o", "LogLevel=ERROR", "-p", str(self.port)]
        if self.identity:
            argv += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        target = f"{self.user}@{self.host}" if self.user else self.host
        # "--" ends ssh's options *before* the destination: neither it nor the command can read as one
        return argv + ["--", target, command]

    def _ssh(self, command: str, timeout: float, data: bytes | None = None) -> subprocess.CompletedProcess:
        if shutil.which("ssh") is None:
            raise DeviceUnavailable("the ssh client is not installed (apt-get install openssh-client)")
        try:
            res = subprocess.run(self.ssh_argv(command), input=data, capture_output=True, timeout=timeout,
                                 stdin=None if data is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RunnerTimeout(f"ssh to {self.host} did not answer within {timeout:g} s") from None
        if res.returncode == SSH_FAILED:
            raise DeviceUnavailable(f"ssh to {self.host}:{self.port} failed: {tail(res.stderr.decode(errors='replace'))}")
        return res

    def sh(self, command: str, timeout: float = 60) -> str:
        """Run a shell command on the board; non-zero exit raises RunnerCrashed."""
        res = self._ssh(command, timeout)
        if res.returncode != 0:
            raise RunnerCrashed(f"remote command {describe_exit(res.returncode)}: "
                                f"{tail((res.stdout + res.stderr).decode(errors='replace'))}")
        return res.stdout.decode(errors="replace")

    def push(self, files: dict[str, Path], remote_dir: str, timeout: float = 300) -> None:
        """Copy host files/folders to ``remote_dir/<name>`` as one tar stream."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, path in files.items():
                tar.add(str(path), arcname=name)
        res = self._ssh(f"mkdir -p {shlex.quote(remote_dir)} && tar -C {shlex.quote(remote_dir)} -xf -",
                        timeout, data=buf.getvalue())
        if res.returncode != 0:
            raise DeviceUnavailable(f"copying to {self.host} failed: {tail(res.stderr.decode(errors='replace'))}")

    def pull(self, remote_dir: str, local_dir: Path, timeout: float = 300) -> None:
        """Copy the contents of ``remote_dir`` into ``local_dir`` (missing folder: nothing)."""
        q = shlex.quote(remote_dir)
        res = self._ssh(f"if [ -d {q} ]; then tar -C {q} -cf - .; fi", timeout)
        local_dir.mkdir(parents=True, exist_ok=True)
        if res.returncode != 0 or not res.stdout:
            return
        with tarfile.open(fileobj=io.BytesIO(res.stdout), mode="r") as tar:
            for m in tar.getmembers():  # only plain files and folders, never outside local_dir
                if (m.isfile() or m.isdir()) and not m.name.startswith(("/", "..")) and ".." not in Path(m.name).parts:
                    tar.extract(m, local_dir)

    # -- Device API ----------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info = parse_probe(self.sh(PROBE_SCRIPT, timeout=60))
        self._arch = info.get("arch")
        name = self.sh("hostname 2>/dev/null || uname -n", timeout=30).strip()
        return {"kind": self.kind, "name": name or self.host, "os": info.get("os"), "arch": info.get("arch"),
                "cpu": info.get("cpu"), "emulated": False, "cores": info.get("cores"),
                "governor": info.get("governor"), "thermal_c": info.get("thermal_c"),
                "kernel": info.get("kernel"), "address": f"{self.host}:{self.port}"}

    def unsupported_reason(self, fmt: str) -> str | None:
        if fmt == "coreml":
            return "Core ML needs Apple hardware; use --device ios or a Mac"
        if fmt not in ("executorch", "onnx"):
            return f"unknown format {fmt!r}"
        return None

    def _remote_dir(self) -> str:
        if self._remote is None:
            text = self.sh("mktemp -d /tmp/pocketsize.XXXXXX", timeout=30)
            lines = text.splitlines()
            # exactly one line, exactly the folder asked for: a banner, an empty answer or anything else
            # would make later jobs run (and be removed) outside a folder we created; remove nothing then
            if len(lines) != 1 or not REMOTE_DIR.fullmatch(lines[0]):
                raise DeviceUnavailable(
                    f"mktemp on {self.host} printed {tail(text, lines=2, chars=120)!r}, not one "
                    "/tmp/pocketsize.XXXXXX path; make the board's shell print nothing else for "
                    "non-interactive ssh (login banners, echo in .bashrc) and check that mktemp works")
            self._remote = lines[0]
        return self._remote

    def _runner_cmd(self, job: Job, rdir: str, jdir: str) -> list[str]:
        model = f"{jdir}/{job.artifact.name}"
        args = job.runner_args(model, f"{jdir}/out", f"{jdir}/eval.f32")
        if job.format == "executorch":
            from ..runner.build import build_runner

            arch = self._arch or self.sh("uname -m", timeout=30).strip()
            try:
                built = build_runner(arch)
            except BadInput as e:
                raise Unsupported(str(e)) from None
            if "et" not in self._pushed:
                self.push({"et_runner": built.exe, "lib": built.lib_dir}, f"{rdir}/et")
                self._pushed.add("et")
            return [f"{rdir}/et/et_runner", *args]
        if "ort" not in self._pushed:
            probe = self._ssh(f"{shlex.quote(self.python)} -c 'import numpy, onnxruntime'", 60)
            if probe.returncode != 0:
                raise Unsupported(f"{self.python} on {self.host} cannot import onnxruntime and numpy; "
                                  f"pip install onnxruntime numpy there (or pass ?python=PATH)")
            self.push({"ort_runner.py": RUNNER_DIR / "ort_runner.py"}, rdir)
            self._pushed.add("ort")
        return [self.python, f"{rdir}/ort_runner.py", *args]

    def run(self, job: Job, work: Path) -> RunOutput:
        reason = self.unsupported_reason(job.format)
        if reason:
            raise Unsupported(reason)
        rdir = self._remote_dir()
        self._jobs += 1
        jdir = f"{rdir}/job{self._jobs}"
        files = {job.artifact.name: job.artifact}
        sidecar = job.artifact.with_name(job.artifact.name + ".data")  # ONNX external weights
        if sidecar.exists():
            files[sidecar.name] = sidecar
        if job.eval_input is not None and job.eval_count:
            files["eval.f32"] = job.eval_input
        cmd = self._runner_cmd(job, rdir, jdir)
        self.push(files, jdir)
        secs = max(1, int(job.timeout_s + 0.999))
        remote = (f"mkdir -p {shlex.quote(jdir + '/out')} && "
                  f"timeout -s KILL {secs} {' '.join(shlex.quote(a) for a in cmd)}")
        try:
            res = self._ssh(remote, timeout=job.timeout_s + 60)
        finally:
            out = work / "out"
            try:
                self.pull(f"{jdir}/out", out)
            except (DeviceUnavailable, RunnerTimeout):
                pass  # the run's own error says more
        log_text = (res.stdout + res.stderr).decode(errors="replace")
        (work / "runner.log").write_text(log_text)
        if res.returncode == KILLED:
            err: Exception = RunnerTimeout(f"runner on {self.host} did not finish within {job.timeout_s:g} s "
                                           "and was killed; raise --timeout or lower --iterations")
        elif res.returncode != 0:
            err = RunnerCrashed(f"runner on {self.host} {describe_exit(res.returncode)}: {tail(log_text)}")
        else:
            self.sh(f"rm -rf {shlex.quote(jdir)}", timeout=60)
            return collect_output(out, job)
        err.partial_times = read_times(out / "times.txt")  # type: ignore[attr-defined]
        raise err

    def close(self) -> None:
        if self._remote is not None:
            try:
                if REMOTE_DIR.fullmatch(self._remote):  # only ever the folder mktemp made for us
                    self._ssh(f"rm -rf {shlex.quote(self._remote)}", timeout=60)
            except (DeviceUnavailable, RunnerTimeout):
                pass
            self._remote = None
            self._pushed.clear()
