"""Run a command in its own process group with a timeout; map failures to DeviceError."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Mapping, Sequence

from .base import RunnerCrashed, RunnerTimeout

log = logging.getLogger(__name__)


def run_checked(argv: Sequence[str], timeout_s: float, *, env: Mapping[str, str] | None = None,
                cwd: str | None = None, what: str = "runner", input: bytes | None = None) -> str:
    """Run ``argv`` (no shell); return stderr+stdout text on exit 0.

    On timeout the whole process group is killed (the runner may have spawned
    threads/children) and :class:`RunnerTimeout` raised; a non-zero exit or a
    signal raises :class:`RunnerCrashed` with the tail of the output.
    """
    log.debug("exec %s", " ".join(argv))
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            env=dict(env) if env is not None else None, cwd=cwd,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(input=input, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise RunnerTimeout(f"{what} did not finish within {timeout_s:g} s and was killed; "
                            "raise --timeout or lower --iterations") from None
    except BaseException:
        _kill_group(proc)
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RunnerCrashed(f"{what} {describe_exit(proc.returncode)}: {tail(text)}")
    return text


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    if rc > 128 and rc - 128 in {s.value for s in signal.Signals}:
        return f"exited {rc} (signal {signal.Signals(rc - 128).name})"
    return f"exited with code {rc}"


def tail(text: str, lines: int = 3, chars: int = 400) -> str:
    """Last few meaningful lines, one line for error messages."""
    keep = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    s = " | ".join(keep) or "(no output)"
    return s[-chars:]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
