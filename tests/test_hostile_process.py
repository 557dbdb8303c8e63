"""Hostile surroundings: a lying board, option-shaped device specs, SIGTERM/SIGHUP
mid-run, all-failed runs, odd --out folders, file modes. Small and fast: stand-ins
on PATH (a fake ``ssh``) instead of real devices, a tiny hand-built ONNX model."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pocketsize.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent

# --- a fake ``ssh``: logs its argv and the remote command, runs nothing ----------------

FAKE_SSH = r'''#!{python}
import json, os, sys
argv = sys.argv[1:]
cmd = argv[-1]
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(json.dumps({{"argv": argv, "cmd": cmd}}) + "\n")
if not sys.stdin.isatty():
    try:
        sys.stdin.buffer.read()
    except Exception:
        pass
if cmd.startswith("mktemp"):
    sys.stdout.write(os.environ.get("FAKE_MKTEMP", ""))
sys.exit(0)
'''


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ssh"
    exe.write_text(FAKE_SSH.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "ssh.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


def _onnx_job(tmp_path: Path):
    from pocketsize.benchmarks.devices import Job

    art = tmp_path / "model.onnx"
    art.write_bytes(b"not really onnx")
    return Job(artifact=art, format="onnx", input_shape=(1, 3, 8, 8), warmup=0, iterations=1,
               min_duration_s=0.0, threads=1, timeout_s=10)


@pytest.mark.parametrize("mktemp_out", [
    "",                                          # prints nothing
    "\n",
    "Welcome to the board!\n",                   # a login banner instead of the path
    "Welcome to the board!\n/tmp/pocketsize.AbC123\n",  # banner + path: more than one line
    "/tmp/pocketsize.AbC123\n/etc\n",
    "tmp/pocketsize.AbC123\n",                   # not absolute
    "/tmp/pocketsize.AbC123/../..\n",            # escapes the temp folder
    "/var/lib/stuff\n",                          # not the pattern we asked for
])
def test_ssh_refuses_bad_mktemp_output_and_removes_nothing(fake_ssh, tmp_path, monkeypatch, mktemp_out):
    """Fault 1: a board whose mktemp lies must never make us run jobs in /jobN or rm them."""
    from pocketsize.benchmarks.devices import DeviceError, get_device

    monkeypatch.setenv("FAKE_MKTEMP", mktemp_out)
    dev = get_device("ssh://pi@board")
    job = _onnx_job(tmp_path)
    for k in range(2):  # the second job must not reuse a half-set remote folder
        work = tmp_path / f"w{k}"
        work.mkdir()
        with pytest.raises(DeviceError, match="mktemp"):
            dev.run(job, work)
    dev.close()
    cmds = [c["cmd"] for c in fake_ssh()]
    assert all(c.startswith("mktemp") for c in cmds), cmds  # nothing pushed, run or removed


def test_ssh_good_mktemp_only_removes_its_own_folder(fake_ssh, tmp_path, monkeypatch):
    from pocketsize.benchmarks.devices import DeviceError, get_device

    monkeypatch.setenv("FAKE_MKTEMP", "/tmp/pocketsize.AbC123\n")
    dev = get_device("ssh://pi@board")
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(DeviceError):  # the fake runs nothing: no report.json comes back
        dev.run(_onnx_job(tmp_path), work)
    dev.close()
    rms = [c["cmd"] for c in fake_ssh() if "rm " in c["cmd"]]
    assert rms and all(c.startswith("rm -rf /tmp/pocketsize.AbC123") for c in rms), rms


@pytest.mark.parametrize("spec", [
    "ssh://-oProxyCommand=touch%20pwned@board",
    "ssh://pi@-oProxyCommand=x",
    "ssh://-oProxyCommand=x",
    "ssh://pi@bo ard",
    "adb:-H",
    "adb:-s evil",
    "ios:-h",
    "ios:--help",
])
def test_option_shaped_device_specs_are_refused(spec):
    """Fault 2: a user/host/serial/udid that reads as an option is BadInput at parse time."""
    from pocketsize.benchmarks.devices import get_device

    with pytest.raises(BadInput):
        get_device(spec)


def test_ssh_destination_follows_double_dash(fake_ssh, tmp_path, monkeypatch):
    """Fault 2: options end before the destination, so it can never be read as one."""
    from pocketsize.benchmarks.devices import get_device

    monkeypatch.setenv("FAKE_MKTEMP", "/tmp/pocketsize.AbC123\n")
    dev = get_device("ssh://pi@board:2222")
    argv = dev.ssh_argv("echo hi")
    i = argv.index("--")
    assert argv[i + 1:] == ["pi@board", "echo hi"], argv
    assert "pi@board" not in argv[:i]


def test_bench_cli_refuses_option_shaped_ssh_spec(tmp_path):
    from pocketsize.cli import main

    art = _tiny_export(tmp_path / "art")
    assert main(["bench", str(art), "--device", "ssh://-oProxyCommand=x@h", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


# --- a tiny ONNX export (no torch): input (1, 3, 8, 8) -> GlobalAveragePool ------------

def _tiny_export(out: Path) -> Path:
    import hashlib

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    out.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "model.onnx"))
    data = (out / "model.onnx").read_bytes()
    try:
        from pocketsize.export.manifest import MANIFEST_VERSION
    except ImportError:  # before the typed records
        MANIFEST_VERSION = 1
    manifest = {
        "format_version": MANIFEST_VERSION,
        "source": "test:tiny-pool", "variant": "original", "task": "image-classification",
        "preprocessing": {"input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3,
                          "interpolation": "bicubic", "crop_pct": 1.0, "layout": "NCHW", "color": "RGB",
                          "input_name": "pixel_values"},
        "labels": ["a", "b", "c"],
        "inputs": [{"name": "pixel_values", "shape": [1, 3, 8, 8], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"}],
        "artifacts": [{"format": "onnx", "path": "model.onnx", "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest(), "quantize": "none",
                       "parity": {"checked": False, "max_abs_diff": None, "top1_agreement": None,
                                  "reason": "test fixture"}, "delegation": {}}],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _procs_mentioning(marker: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
            st = (p / "stat").read_text()
        except OSError:
            continue
        if marker.encode() in cmd and st.rsplit(")", 1)[-1].split()[0] != "Z":
            pids.append(int(p.name))
    return pids


def _signal_once_the_runner_runs(argv: list[str], env: dict, tmpdir: Path, sig: int,
                                 start_s: float) -> tuple[subprocess.Popen, str, list[int]]:
    """Start ``argv`` in its own session, send ``sig`` once a process mentioning
    ``tmpdir`` (the bench runner) is up, and return (process, stderr, runner
    processes still alive). Whatever is left is killed before returning."""
    # the default action for ``sig`` in the child: a suite started under nohup ignores SIGHUP, and
    # pocketsize deliberately keeps ignoring what its parent ignored, so the test would test nohup
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + start_s
        while not _procs_mentioning(str(tmpdir)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        assert _procs_mentioning(str(tmpdir)), "the bench runner never started"
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # reaped even when the test fails above: a runner left behind would eat a core
        # for the rest of the suite (it was started with --min-duration 600)
        leftover = _kill_leftover_runners(tmpdir)
    return proc, err.decode(), leftover


def _kill_leftover_runners(tmpdir: Path) -> list[int]:
    """Processes still mentioning ``tmpdir`` after a moment (a killed group may take
    a moment to be reaped by init); they are killed, even when the test then fails."""
    for _ in range(50):
        if not _procs_mentioning(str(tmpdir)):
            break
        time.sleep(0.1)
    leftover = _procs_mentioning(str(tmpdir))
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    return leftover


def _bench_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tiny export, an empty parent for --out, and a TMPDIR the bench's runner will mention."""
    art = _tiny_export(tmp_path / "art")
    outs, tmpdir = tmp_path / "outs", tmp_path / "tmp"
    outs.mkdir()
    tmpdir.mkdir()
    return art, outs, tmpdir


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_bench_cleans_up(tmp_path, sig):
    """Fault 3: SIGTERM/SIGHUP behave like Ctrl-C: no .partial-*, no work folder, no runner left."""
    pytest.importorskip("onnxruntime")
    art, outs, tmpdir = _bench_folders(tmp_path)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT / "tests")}
    proc, err, leftover = _signal_once_the_runner_runs(
        [sys.executable, "-m", "pocketsize", "-q", "bench", str(art), "--device", "local", "--formats", "onnx",
         "--warmup", "0", "--iterations", "100000000", "--min-duration", "600", "--out", str(outs / "o")],
        env, tmpdir, sig, start_s=60)
    assert not leftover, "runner process left running"
    assert proc.returncode == 128 + sig, err[-500:]
    assert sorted(p.name for p in outs.iterdir()) == [], list(outs.iterdir())
    # no folder of ours (onnxruntime's import leaves a small .ses file there; not a folder, not ours)
    assert [p for p in tmpdir.iterdir() if p.is_dir() or "pocketsize" in p.name] == []
    assert "interrupted" in err or "terminated" in err


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_timeout_term_mid_bench_cleans_up(tmp_path):
    """Fault 3, as CI does it: ``timeout -s TERM N pocketsize bench ...``."""
    import shutil

    pytest.importorskip("onnxruntime")
    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils timeout")
    art, outs, tmpdir = _bench_folders(tmp_path)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    res = subprocess.run(
        ["timeout", "-s", "TERM", "10", sys.executable, "-m", "pocketsize", "-q", "bench", str(art),
         "--formats", "onnx", "--warmup", "0", "--iterations", "100000000", "--min-duration", "600",
         "--out", str(outs / "o")], env=env, capture_output=True, text=True, timeout=120)
    leftover = _kill_leftover_runners(tmpdir)
    assert res.returncode == 124, res.stderr[-500:]  # timeout's own code: the command was stopped
    assert not leftover, "runner process left running"
    assert list(outs.iterdir()) == []
    assert [p for p in tmpdir.iterdir() if p.is_dir() or "pocketsize" in p.name] == []
    assert "terminated by SIGTERM" in res.stderr


# --- pocketsize run: all rows failed is a failure ----------------------------------------

def test_run_exits_nonzero_when_every_bench_row_failed(tmp_path, capsys):
    """Fault 4."""
    from pocketsize.cli.run import _finish

    (tmp_path / "bench").mkdir()
    fail = {"status": "failed", "error": "device unavailable", "latency_ms": {}, "bytes": 1}
    (tmp_path / "bench" / "results.json").write_text(json.dumps({"results": [
        {**fail, "variant": "original", "format": "onnx"}, {**fail, "variant": "compressed", "format": "onnx"}]}))
    summary = {"params_ratio": 0.5, "metric": "accuracy", "before": 0.9, "after": 0.8, "speedup": {},
               "seconds": 1.0, "parity_errors": []}
    rc = _finish(summary, tmp_path)
    assert rc != 0
    err = capsys.readouterr().err
    assert "failed" in err.splitlines()[-1]


# --- --out '.' / a symlink ---------------------------------------------------------------

def test_out_dot_in_empty_folder_is_refused_up_front(tmp_path, monkeypatch):
    """Fault 5: refused before any work, with a message naming the fix."""
    from pocketsize.io import atomic_dir, check_out_dir

    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    (here / "sub").mkdir()
    for out in (".", "./", str(here), "sub/.."):
        with pytest.raises(BadInput, match="new folder name"):
            check_out_dir(out)
    (here / "sub").rmdir()
    with pytest.raises(BadInput):
        with atomic_dir("."):
            pass
    assert list(here.iterdir()) == [] and list(tmp_path.iterdir()) == [here]


def test_out_symlink_to_empty_folder_is_refused_up_front(tmp_path):
    from pocketsize.io import check_out_dir

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(BadInput, match="new folder name"):
        check_out_dir(link)


def test_cli_out_dot_exits_2(tmp_path, monkeypatch):
    from pocketsize.cli import main

    art = _tiny_export(tmp_path / "art")
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["bench", str(art), "--out", "."]) == 2
    assert list(here.iterdir()) == []


# --- pocketsize run --device bogus: refused before compress -------------------------------

@pytest.mark.parametrize("device", ["bogus", "ssh://-oProxyCommand=x@h", "adb:-H"])
def test_pipeline_validates_device_before_compress(tmp_path, monkeypatch, device):
    """Fault 6."""
    from pocketsize import compress, pipeline

    def boom(*a, **k):
        raise AssertionError("compress ran before the device spec was checked")

    monkeypatch.setattr(compress, "prune", boom)
    with pytest.raises(BadInput, match="device"):
        pipeline.run("timm:whatever", str(tmp_path), tmp_path / "o", None, ("onnx",), "none", device)
    assert not (tmp_path / "o").exists()


def test_pipeline_validates_formats_before_compress(tmp_path, monkeypatch):
    from pocketsize import compress, pipeline

    monkeypatch.setattr(compress, "prune", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    with pytest.raises(BadInput):
        pipeline.run("timm:whatever", str(tmp_path), tmp_path / "o", None, ("nope",), "none", "local")


# --- file modes ----------------------------------------------------------------------------

def test_outputs_are_world_readable_under_umask_022(tmp_path):
    """Fault 7: 0755 folders, 0644 files (modulo umask), still atomic."""
    from pocketsize.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "o") as tmp:
            write_json(tmp / "summary.json", {"a": 1})
            (tmp / "sub").mkdir()
            write_json(tmp / "sub" / "manifest.json", {"b": 2})
        write_json(tmp_path / "loose.json", [1])
        os.umask(0o077)
        with atomic_dir(tmp_path / "p") as tmp:
            write_json(tmp / "summary.json", {"a": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "o") == 0o755
    assert mode(tmp_path / "o" / "summary.json") == 0o644
    assert mode(tmp_path / "o" / "sub" / "manifest.json") == 0o644
    assert mode(tmp_path / "loose.json") == 0o644
    assert mode(tmp_path / "p") == 0o700 and mode(tmp_path / "p" / "summary.json") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose.json", "o", "p"]


# --- pocketsize run end to end: SIGTERM while its bench runs ---------------------------------

@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_sigterm_mid_run_leaves_nothing(tmp_path, image_folder):
    """``pocketsize run`` (compress, export, bench in one command) stopped by SIGTERM
    while its benchmark runner measures: exit 143, no --out, no .partial-*, no temp
    folder of ours, no runner left; what the user had beside --out is untouched."""
    pytest.importorskip("onnxruntime")
    from conftest import build_tiny_vit
    from timm.models import save_for_hf

    model = tmp_path / "model"
    model.mkdir()
    save_for_hf(build_tiny_vit("timm", num_classes=3), model, safe_serialization=True)
    outs = tmp_path / "outs"
    outs.mkdir()
    (outs / "keep.txt").write_text("the user's")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc, err, leftover = _signal_once_the_runner_runs(
        [sys.executable, "-m", "pocketsize", "-q", "run", str(model), "--data", str(image_folder), "--ratio", "0.6",
         "--steps", "1", "--recovery-steps", "1", "--to", "onnx", "--parity-samples", "2", "--device", "local",
         "--warmup", "0", "--iterations", "100000000", "--min-duration", "600", "--out", str(outs / "o")],
        env, tmpdir, signal.SIGTERM, start_s=300)
    assert not leftover, "runner process left running"
    assert proc.returncode == 128 + signal.SIGTERM, err[-800:]
    assert "terminated by SIGTERM" in err, err[-800:]
    assert sorted(p.name for p in outs.iterdir()) == ["keep.txt"]
    assert [p for p in tmpdir.iterdir() if (p.is_dir() and not p.name.startswith("torchinductor_"))
            or "pocketsize" in p.name] == []
