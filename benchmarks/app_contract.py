"""The phone apps' contract (``app_contract.json``) and the reader of what the apps write.

``app_contract.json`` is the single source of truth for the intent extras /
launch arguments / XCTest environment the apps read, the file names on the
device and the version of the report the apps write. The Kotlin and Swift
sources spell the same keys as literals; ``tests/test_apps_contract.py`` checks
they agree. The apps' benchmark modes follow the runner protocol of
:mod:`pocketsize.benchmarks.devices.base` (``times.txt``, ``report.json``,
``eval_outputs.bin``), so their output becomes a :class:`RunOutput` through the
same :func:`collect_output` as every other device.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from pocketsize.errors import BadInput

CONTRACT_FILE = "app_contract.json"


@functools.lru_cache(maxsize=1)
def load_contract() -> dict[str, Any]:
    """The parsed ``app_contract.json`` shipped inside the ``benchmarks`` package."""
    return json.loads(resources.files(__package__).joinpath(CONTRACT_FILE).read_text())


def app_params(job: Any, *, artifact: str, out_dir: str, run_id: str,
               eval_input: str | None, platform: str) -> dict[str, str]:
    """The contract parameters for one :class:`~benchmarks.devices.base.Job`,
    with device-side paths, validated and rendered as strings (name -> value)."""
    values: dict[str, Any] = {
        "artifact": artifact,
        "format": job.format,
        "out_dir": out_dir,
        "warmup": job.warmup,
        "iterations": job.iterations,
        "min_duration_ms": int(round(job.min_duration_s * 1000)),
        "threads": job.threads,
        "input_shape": ",".join(str(int(d)) for d in job.input_shape),
        "run_id": run_id,
    }
    if eval_input is not None and job.eval_count > 0:
        values["eval_input"] = eval_input
        values["eval_count"] = job.eval_count
    return check_params(values, platform)


@dataclass(frozen=True)
class AppRun:
    """One app run's device-side layout: a fresh folder per run, so runs never
    read each other's files, and the contract parameters that point into it."""
    run_id: str
    remote: str               # the run's folder on the device
    model: str                # where the artifact is pushed
    eval_input: str | None    # where the eval samples are pushed (None: no accuracy)
    report: str               # the file the app writes last
    params: dict[str, str]


def plan_app_run(job: Any, device_dir: str, platform: str) -> AppRun:
    """The layout and parameters of running ``job`` under ``device_dir`` (shared by adb and ios)."""
    import uuid

    files = load_contract()["files"]
    run_id = uuid.uuid4().hex[:12]
    remote = f"{device_dir}/{run_id}"
    model = f"{remote}/{job.artifact.name}"
    ev = f"{remote}/{files['eval_input']}" if job.eval_input is not None and job.eval_count else None
    params = app_params(job, artifact=model, out_dir=f"{remote}/out", run_id=run_id, eval_input=ev, platform=platform)
    return AppRun(run_id, remote, model, ev, f"{remote}/out/{files['report']}", params)


def check_params(values: Mapping[str, Any], platform: str) -> dict[str, str]:
    """Validate parameters against the contract; return them as strings.

    Unknown names and missing required ones are a BadInput: a typo here would
    otherwise become an extra the app silently ignores.
    """
    contract = load_contract()
    params = contract["params"]
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise BadInput(f"unknown app parameter(s) {unknown}; valid: {sorted(params)}")
    missing = sorted(k for k, p in params.items() if p["required"] and values.get(k) in (None, ""))
    if missing:
        raise BadInput(f"app parameter(s) {missing} are required by app_contract.json")
    allowed = contract["formats"][platform]
    if values["format"] not in allowed:
        raise BadInput(f"format {values['format']!r} does not run in the {platform} app; use one of {allowed}")
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if params[key]["type"] == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise BadInput(f"app parameter {key} must be a whole number >= 0, got {value!r}")
        out[key] = str(value)
    return out


def read_report(out_dir: Path, *, run_id: str, platform: str) -> dict[str, Any] | None:
    """The app's ``report.json`` if it is there and belongs to ``run_id``; None if absent.

    Raises ValueError for a report from another contract version, another run,
    or without the keys the contract lists: the app and this pocketsize differ.
    """
    path = out_dir / load_contract()["files"]["report"]
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    check_report(data, run_id=run_id, platform=platform)
    return data


def check_report(data: Any, *, run_id: str, platform: str) -> None:
    """Validate an app report (see ``report_keys`` in the contract)."""
    contract = load_contract()
    if not isinstance(data, dict):
        raise ValueError("app report.json is not a JSON object")
    missing = [k for k in contract["report_keys"] if k not in data]
    if missing:
        raise ValueError(f"app report.json lacks {missing}; rebuild the app from this checkout")
    if data["schema"] != contract["result_schema"]:
        raise ValueError(f"app report schema {data['schema']!r} != {contract['result_schema']!r}")
    if data["schema_version"] != contract["result_schema_version"]:
        raise ValueError(f"app writes report version {data['schema_version']}, this pocketsize reads "
                         f"{contract['result_schema_version']}; rebuild the app from this checkout")
    if data["run_id"] != run_id:
        raise ValueError(f"report.json is from run {data['run_id']!r}, not {run_id!r} (a stale file)")
    if data["status"] not in ("ok", "failed"):
        raise ValueError(f"report status must be ok or failed, got {data['status']!r}")
    if data["status"] == "failed" and not data.get("error"):
        raise ValueError("a failed app report must say why in 'error'")
    if data["status"] == "ok":
        for key in ("load_ms", "first_inference_ms"):
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"report {key} must be a number >= 0, got {v!r}")
    fmt_runtime = {"executorch": "executorch", "onnx": "onnxruntime", "coreml": "coreml"}
    if data["runtime"] not in {fmt_runtime[f] for f in contract["formats"][platform]}:
        raise ValueError(f"{platform} app reported runtime {data['runtime']!r}")


def memory_extras(report: Mapping[str, Any]) -> dict[str, Any]:
    """Platform memory readings the app adds beside /proc (Android PSS), in MB."""
    pss = report.get("android_pss_kb") or {}
    out: dict[str, Any] = {}
    for key, value in pss.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"android_pss_{key}_mb"] = round(value / 1024.0, 3)
    if out:
        out["android_pss_source"] = "android.os.Debug.getMemoryInfo (whole app process)"
    return out
