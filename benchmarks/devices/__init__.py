"""Device registry: ``get_device("local" | "qemu-aarch64" | "ssh://u@h" | "adb[:serial]" | "ios[:udid]")``.

Each device lives in its own module, imported only when asked for (no
registration side effects; heavy or platform-specific imports stay lazy).
"""

from __future__ import annotations

import importlib

from pocketsize.errors import BadInput

from .base import Device, DeviceError, Job, RunOutput  # noqa: F401

#: registry key -> "module:Class"; the key is the part of the spec before ":" / "://"
DEVICES: dict[str, str] = {
    "local": "pocketsize.benchmarks.devices.local:LocalDevice",
    "qemu-aarch64": "pocketsize.benchmarks.devices.qemu:QemuAarch64Device",
    "ssh": "pocketsize.benchmarks.devices.ssh:SshDevice",
    "adb": "pocketsize.benchmarks.devices.adb:AdbDevice",
    "ios": "pocketsize.benchmarks.devices.ios:IosDevice",
}

USAGE = "local, qemu-aarch64, ssh://user@host[:port], adb[:serial], ios[:udid]"


def device_key(spec: str) -> str:
    """The registry key of a ``--device`` string."""
    if "://" in spec:
        return spec.split("://", 1)[0]
    return spec.split(":", 1)[0]


def get_device(spec: str) -> Device:
    """Instantiate the device for ``spec``; unknown keys raise BadInput listing valid ones."""
    if not isinstance(spec, str) or not spec:
        raise BadInput(f"--device is empty; pass one of: {USAGE}")
    key = device_key(spec)
    target = DEVICES.get(key)
    if target is None:
        raise BadInput(f"unknown --device {spec!r}; pass one of: {USAGE}")
    mod_name, cls_name = target.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise BadInput(f"--device {key} is not available in this install "
                           f"({mod_name} missing); pass one of: {USAGE}") from None
        raise
    return getattr(mod, cls_name)(spec)


def check_device_spec(spec: str) -> str:
    """Validate a ``--device`` string up front, without connecting to anything.

    Device constructors only parse their spec (connections happen in
    ``describe``/``run``), so building one and dropping it is the parse.
    Raises BadInput for an unknown key or a malformed spec; returns ``spec``.
    """
    get_device(spec)
    return spec
