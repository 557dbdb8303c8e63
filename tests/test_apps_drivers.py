"""The adb and ios drivers, with fake ``adb`` / ``xcrun`` / ``xcodebuild`` on PATH.

No phone, Android SDK or Xcode exists here. The fakes record the argv our
drivers build and answer the few queries a driver makes; when the driver pulls
the app's output they hand back the committed TEST VECTOR (the folder the app
writes, with placeholder numbers 1, 2, 3 ms ...), echoing the run id the
driver passed, as the app does. Nothing here measures anything: these tests
check command construction and parsing only.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from pocketsize.benchmarks.app_contract import load_contract
from pocketsize.benchmarks.devices import get_device
from pocketsize.benchmarks.devices.adb import AdbDevice, collect_app_output
from pocketsize.benchmarks.devices.base import Job, RunnerCrashed, Unsupported
from pocketsize.benchmarks.devices.ios import IosDevice

ROOT = Path(__file__).resolve().parent.parent
ANDROID_VECTOR = ROOT / "android-demo/test-vectors/executorch-out"
IOS_VECTOR = ROOT / "ios-demo/test-vectors/coreml-out"

FAKE = r'''#!{python}
# Test stand-in for {name}: records argv, returns the committed test vector. Not a device.
import json, os, shlex, shutil, sys
name, args = {name!r}, sys.argv[1:]
state = os.environ["FAKE_STATE"]
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps({{"tool": name, "argv": args,
                        "env": {{k: v for k, v in os.environ.items() if k.startswith("TEST_RUNNER_")}}}}) + "\n")
run_id_file = os.path.join(state, "run_id")

def started(rid):
    open(run_id_file, "w").write(rid)

def give_vector(dest):
    shutil.copytree(os.environ["FAKE_VECTOR"], dest)
    rep = os.path.join(dest, "report.json")
    data = json.load(open(rep))
    if os.path.exists(run_id_file) and not os.environ.get("FAKE_STALE"):
        data["run_id"] = open(run_id_file).read()   # the app echoes the run id it was given
    json.dump(data, open(rep, "w"))

def opt(flag):
    return args[args.index(flag) + 1]

if name == "adb":
    if args[:1] == ["-s"]:
        args = args[2:]
    if args[0] == "shell":
        cmd = args[1]
        if "getprop" in cmd:
            print("ro.product.manufacturer=TEST-VECTOR\nro.product.model=not-a-phone\n"
                  "ro.build.version.release=0\nro.build.version.sdk=0\nro.product.cpu.abi=arm64-v8a\n"
                  "ro.hardware=test\nro.kernel.qemu=")
            sys.exit(0)
        if cmd.lstrip().startswith("echo \"@@uname\""):
            print("@@end"); sys.exit(0)
        words = shlex.split(cmd)
        if words[:2] == ["am", "start"]:
            started(words[words.index("pocketsize.run_id") + 1])
            print("Status: ok")
        elif words[:2] == ["test", "-e"]:
            sys.exit(0 if os.path.exists(run_id_file) else 1)
        elif words[0] == "pidof":
            print(4242)
        sys.exit(0)
    if args[0] == "push":
        sys.exit(0 if os.path.exists(args[1]) else 1)
    if args[0] == "pull":
        give_vector(os.path.join(args[2], os.path.basename(args[1])))
        sys.exit(0)
    sys.exit(2)
if name == "xcrun":
    assert args[0] == "devicectl", args
    sub = args[1:4]
    if args[1:3] == ["list", "devices"]:
        json.dump({{"result": {{"devices": [{{"hardwareProperties": {{"udid": "TEST-UDID"}},
                   "connectionProperties": {{"tunnelState": "connected"}}}}]}}}}, open(opt("--json-output"), "w"))
    elif args[1:4] == ["device", "info", "details"]:
        json.dump({{"result": {{"deviceProperties": {{"name": "TEST-VECTOR not-a-phone", "osVersionNumber": "0"}},
                   "hardwareProperties": {{"marketingName": "TEST-VECTOR", "cpuType": {{"name": "arm64e"}}}}}}}},
                  open(opt("--json-output"), "w"))
    elif args[1:4] == ["device", "copy", "to"]:
        sys.exit(0 if os.path.exists(opt("--source")) else 1)
    elif args[1:4] == ["device", "process", "launch"]:
        app = args[args.index("--") + 1:]
        started(app[app.index("-pocketsize.run_id") + 1])
    elif args[1:4] == ["device", "copy", "from"]:
        if not os.path.exists(run_id_file):
            sys.exit(1)
        src, dest = opt("--source"), opt("--destination")
        if src.endswith("report.json"):
            give_vector(dest + ".d"); shutil.move(dest + ".d/report.json", dest); shutil.rmtree(dest + ".d")
        else:
            give_vector(dest)
    sys.exit(0)
if name == "xcodebuild":
    started(os.environ["TEST_RUNNER_POCKETSIZE_RUN_ID"])
    print("** TEST SUCCEEDED **")
'''


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    bindir, state = tmp_path / "bin", tmp_path / "state"
    bindir.mkdir()
    state.mkdir()
    for name in ("adb", "xcrun", "xcodebuild"):
        p = bindir / name
        p.write_text(FAKE.format(python=sys.executable, name=name))
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_STATE", str(state))

    def calls(tool=None):
        lines = (state / "calls.jsonl").read_text().splitlines() if (state / "calls.jsonl").exists() else []
        out = [json.loads(line) for line in lines]
        return [c for c in out if tool is None or c["tool"] == tool]

    return calls


def _job(tmp_path, fmt="executorch", name="my model's.pte", eval_count=0, **kw) -> Job:
    art = tmp_path / name
    art.write_bytes(b"not a real model: the fake never reads it")
    ev = None
    if eval_count:
        ev = tmp_path / "eval input.f32"
        ev.write_bytes(b"\0" * 4 * 3 * 8 * 8 * eval_count)
    return Job(artifact=art, format=fmt, input_shape=(1, 3, 8, 8), warmup=2, iterations=5,
               min_duration_s=0.25, threads=2, timeout_s=10, eval_input=ev, eval_count=eval_count, **kw)


def _am_start(calls) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The remote words of the `am start` call and its extras: key -> (flag, value)."""
    for c in calls("adb"):
        if c["argv"][:3] == ["-s", "EMU-1", "shell"] and c["argv"][3].startswith("am start"):
            words = shlex.split(c["argv"][3])
            extras = {}
            i = words.index("-n") + 2
            while i < len(words):
                extras[words[i + 1]] = (words[i], words[i + 2])
                i += 3
            return words, extras
    raise AssertionError("no am start call")


def test_registry_builds_app_devices():
    assert isinstance(get_device("adb:EMU-1"), AdbDevice)
    assert get_device("adb:EMU-1").serial == "EMU-1"
    assert isinstance(get_device("ios:00008110-X"), IosDevice)
    assert get_device("ios").udid is None


def test_adb_run_sends_contract_extras_and_parses_app_output(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VECTOR", str(ANDROID_VECTOR))
    c = load_contract()
    dev = AdbDevice("adb:EMU-1")
    dev.poll_s = 0
    work = tmp_path / "work"
    work.mkdir()
    job = _job(tmp_path, eval_count=0)
    out = dev.run(job, work)

    # every adb call targets the serial; the am start extras are exactly the contract's
    assert all(call["argv"][:2] == ["-s", "EMU-1"] for call in fakes("adb"))
    words, extras = _am_start(fakes)
    assert words[:6] == ["am", "start", "-W", "-S", "-n",
                         f"{c['android']['package']}/{c['android']['benchmark_activity']}"]
    key = c["android"]["extras"]
    given = {"artifact", "format", "out_dir", "warmup", "iterations", "min_duration_ms", "threads",
             "input_shape", "run_id"}
    assert set(extras) == {key[n] for n in given}
    for name in given:
        flag, _ = extras[key[name]]
        assert flag == ("--ei" if c["params"][name]["type"] == "int" else "--es")
    remote = f"{c['android']['device_dir']}/{extras[key['run_id']][1]}"
    # the quote in the file name survived the phone's shell (shlex.quote round trip)
    assert extras[key["artifact"]][1] == f"{remote}/my model's.pte"
    assert extras[key["out_dir"]][1] == f"{remote}/out"
    assert extras[key["min_duration_ms"]][1] == "250"
    assert extras[key["input_shape"]][1] == "1,3,8,8"
    push = [x["argv"] for x in fakes("adb") if x["argv"][2] == "push"]
    assert push == [["-s", "EMU-1", "push", str(job.artifact), f"{remote}/my model's.pte"]]
    assert any(x["argv"][2:4] == ["pull", f"{remote}/out"] for x in fakes("adb"))
    assert shlex.split(fakes("adb")[-1]["argv"][3]) == ["rm", "-rf", remote]  # cleaned up

    # parsed through the shared runner-protocol reader (numbers are the vector's placeholders)
    assert out.times_ms == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert out.load_ms == 1.0 and out.first_inference_ms == 2.0 and out.runtime == "executorch"
    assert out.memory["peak_rss_mb"] == 2.0  # VmHWM 2048 kB from the pulled status.txt
    assert out.memory["anon_mb"] == 0.5 and out.memory["file_mb"] == 0.5
    assert out.memory["android_pss_idle_mb"] == 1.0 and out.memory["android_pss_after_run_mb"] == 3.0


def test_adb_pushes_eval_inputs(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VECTOR", str(ANDROID_VECTOR))
    c = load_contract()
    dev = AdbDevice("adb:EMU-1")
    dev.poll_s = 0
    (tmp_path / "w").mkdir()
    job = _job(tmp_path, eval_count=3)
    dev.run(job, tmp_path / "w")
    _, extras = _am_start(fakes)
    key = c["android"]["extras"]
    remote_eval = extras[key["eval_input"]][1]
    assert remote_eval.endswith("/" + c["files"]["eval_input"])
    assert extras[key["eval_count"]] == ("--ei", "3")
    assert ["-s", "EMU-1", "push", str(job.eval_input), remote_eval] in [x["argv"] for x in fakes("adb")]


def test_adb_describe_reads_build_properties(fakes):
    d = AdbDevice("adb:EMU-1").describe()
    assert d["kind"] == "adb" and d["name"] == "TEST-VECTOR not-a-phone"
    assert d["arch"] == "arm64-v8a" and d["emulated"] is False
    assert set(d) >= {"kind", "name", "os", "arch", "cpu", "emulated"}


def test_adb_refuses_coreml(fakes, tmp_path):
    dev = AdbDevice("adb:EMU-1")
    assert "ios" in dev.unsupported_reason("coreml")
    with pytest.raises(Unsupported):
        dev.run(_job(tmp_path, fmt="coreml", name="m.mlpackage"), tmp_path)


def _vector_copy(src: Path, tmp_path: Path, **changes) -> Path:
    dest = tmp_path / "vector"
    shutil.copytree(src, dest)
    rep = json.loads((dest / "report.json").read_text())
    rep.update(changes)
    (dest / "report.json").write_text(json.dumps(rep))
    return dest


def test_failed_app_report_becomes_runner_crashed_with_partial_times(fakes, tmp_path, monkeypatch):
    vec = _vector_copy(ANDROID_VECTOR, tmp_path, status="failed", error="IllegalArgumentException: bad model",
                       load_ms=None, first_inference_ms=None)
    monkeypatch.setenv("FAKE_VECTOR", str(vec))
    dev = AdbDevice("adb:EMU-1")
    dev.poll_s = 0
    (tmp_path / "w").mkdir()
    with pytest.raises(RunnerCrashed, match="bad model") as e:
        dev.run(_job(tmp_path), tmp_path / "w")
    assert e.value.partial_times == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_stale_report_from_another_run_is_refused(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VECTOR", str(ANDROID_VECTOR))
    monkeypatch.setenv("FAKE_STALE", "1")
    dev = AdbDevice("adb:EMU-1")
    dev.poll_s = 0
    (tmp_path / "w").mkdir()
    with pytest.raises(RunnerCrashed, match="stale"):
        dev.run(_job(tmp_path), tmp_path / "w")


def test_ios_app_launch_uses_contract_arguments(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VECTOR", str(IOS_VECTOR))
    c = load_contract()
    dev = IosDevice("ios")  # no udid: the single connected device is found with devicectl
    dev.poll_s = 0
    (tmp_path / "w").mkdir()
    job = _job(tmp_path, fmt="coreml", name="model.mlpackage", eval_count=2)
    out = dev.run(job, tmp_path / "w")
    assert dev.udid == "TEST-UDID"
    argvs = [x["argv"] for x in fakes("xcrun")]
    launch = next(a for a in argvs if a[1:4] == ["device", "process", "launch"])
    app = launch[launch.index("--") + 1:]
    assert app[0] == c["ios"]["bundle_id"]
    args = dict(zip(app[1::2], app[2::2]))
    expected = {f"-{c['ios']['launch_arguments'][n]}" for n in c["params"]}
    assert set(args) == expected  # eval given, so every contract parameter is passed
    remote = f"{c['ios']['container_dir']}/{args['-pocketsize.run_id']}"
    assert args["-pocketsize.artifact"] == f"{remote}/model.mlpackage"
    copies = [a for a in argvs if a[1:4] == ["device", "copy", "to"]]
    assert [a[a.index("--destination") + 1] for a in copies] == \
        [f"{remote}/model.mlpackage", f"{remote}/{c['files']['eval_input']}"]
    for a in copies:
        assert a[a.index("--domain-type") + 1] == "appDataContainer"
        assert a[a.index("--domain-identifier") + 1] == c["ios"]["bundle_id"]
    assert out.runtime == "coreml" and out.times_ms == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert out.memory["peak_rss_mb"] == 2.0 and out.memory["phys_footprint_peak_mb"] == 2.0


def test_ios_xctest_passes_contract_env(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VECTOR", str(IOS_VECTOR))
    c = load_contract()
    dev = IosDevice("ios:UDID-9", method="xctest", xctestrun=tmp_path / "Demo.xctestrun")
    (tmp_path / "w").mkdir()
    out = dev.run(_job(tmp_path, fmt="executorch", name="model.pte"), tmp_path / "w")
    call = fakes("xcodebuild")[0]
    assert call["argv"][:3] == ["test-without-building", "-xctestrun", str(tmp_path / "Demo.xctestrun")]
    assert f"-only-testing:{c['ios']['test_identifier']}" in call["argv"]
    assert "id=UDID-9" in call["argv"]
    env = {k[len("TEST_RUNNER_"):]: v for k, v in call["env"].items()}
    given = {"artifact", "format", "out_dir", "warmup", "iterations", "min_duration_ms", "threads",
             "input_shape", "run_id"}
    assert set(env) == {c["ios"]["xctest_env"][n] for n in given}
    assert env["POCKETSIZE_FORMAT"] == "executorch" and env["POCKETSIZE_THREADS"] == "2"
    assert out.times_ms == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_ios_refuses_onnx():
    assert "does not run" in IosDevice("ios:U").unsupported_reason("onnx")


@pytest.mark.parametrize("vector,platform,fmt", [(ANDROID_VECTOR, "android", "executorch"),
                                                  (IOS_VECTOR, "ios", "coreml")])
def test_app_test_vectors_become_results_json_entries(vector, platform, fmt, tmp_path):
    """What each app writes parses into a documented results.json entry via the harness."""
    harness = pytest.importorskip("pocketsize.benchmarks.harness")
    from pocketsize.benchmarks.config import BenchConfig

    job = _job(tmp_path, fmt=fmt, name="model.bin")
    out = collect_app_output(vector, job, "test-vector", platform)
    cfg = BenchConfig(warmup=2, iterations=5)
    res = harness.empty_result("compressed", fmt, {"path": "model.bin"}, tmp_path, cfg)
    harness.fill_result(res, out, None, cfg, emulated=False)
    contract_keys = {"variant", "format", "runtime", "threads", "warmup", "iterations", "load_ms",
                     "first_inference_ms", "latency_ms", "peak_rss_mb", "memory", "eval_samples",
                     "status", "error"}
    assert contract_keys <= set(res)
    assert "accuracy" in res or "perplexity" in res
    assert set(res["latency_ms"]) >= {"min", "p50", "p90", "p99", "mean", "std"}
    assert res["status"] == "ok" and res["latency_ms"]["p50"] == 3.0 and res["peak_rss_mb"] == 2.0
    json.dumps(res)  # serializable as results.json
