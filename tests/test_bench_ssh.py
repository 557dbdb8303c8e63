"""--device ssh://: against a real sshd started on loopback with a throwaway key."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("needs openssh-server and openssh-client", allow_module_level=True)
pytest.importorskip("executorch")
pytest.importorskip("onnxruntime")

import getpass  # noqa: E402
import sys  # noqa: E402

from pocketsize.benchmarks import BenchConfig, run  # noqa: E402
from bench_helpers import eager_accuracy, tiny_data, tiny_export  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nLogLevel ERROR\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation dir, as the package's service makes
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    known = d / "known_hosts"
    spec = (f"ssh://{getpass.getuser()}@127.0.0.1:{port}?identity={d / 'user'}&known_hosts={known}"
            f"&python={sys.executable}")
    for _ in range(100):
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-300:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield spec
    proc.terminate()
    proc.wait(timeout=10)


def test_ssh_runs_executorch_and_onnx(sshd, tmp_path):
    from bench_helpers import cached_exports

    art = cached_exports(tmp_path / "exp") / "original"
    data = tiny_data()
    before = set(Path("/tmp").glob("pocketsize.*"))
    doc = run(art, sshd, BenchConfig(warmup=1, iterations=5, eval_samples=12, timeout_s=120),
              data=data, out_dir=tmp_path / "o")
    assert doc["device"]["kind"] == "ssh" and doc["device"]["emulated"] is False
    assert doc["device"]["arch"] and doc["device"]["cpu"]
    for r in doc["results"]:
        assert r["status"] == "ok", r["error"]
        assert r["accuracy"] == pytest.approx(eager_accuracy("original", data, 12), abs=1e-9)
        assert r["peak_rss_mb"] > 0 and r["timed_runs"] >= 5
    assert json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert set(Path("/tmp").glob("pocketsize.*")) <= before  # the board's temporary folder was removed


def test_ssh_vanished_device_fails_every_result_cleanly(tmp_path):
    art = tiny_export(tmp_path / "exp", "original", formats=("executorch", "onnx"))
    spec = f"ssh://nobody@127.0.0.1:{_free_port()}?strict=no"
    doc = run(art, spec, BenchConfig(timeout_s=20), out_dir=tmp_path / "o")
    assert [r["status"] for r in doc["results"]] == ["failed", "failed"]
    assert all("unavailable" in r["error"] or "ssh" in r["error"] for r in doc["results"])
    assert (tmp_path / "o" / "results.json").exists()
