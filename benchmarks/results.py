"""results.json as typed records: what bench measured, read back strictly.

The harness still fills each row as a dict while it measures (a failure at
any step must keep what was measured); every write goes through
:class:`Results`, so results.json only ever holds the keys named here, and
readers (report, pipeline, CLI) get the records instead of ``.get()`` guesses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from pocketsize.errors import BadInput
from pocketsize.io import read_json, write_json
from pocketsize.records import Record, check_version, opt, req

RESULTS_VERSION = 1
RESULTS = "results.json"
FIX = "re-run `pocketsize bench` to rewrite it"
LATENCY_KEYS = ("min", "p50", "p90", "p99", "mean", "std")
STATUSES = ("ok", "failed")
INTEGRITY = ("verified", "mismatch")


@dataclasses.dataclass(frozen=True)
class Device(Record):
    """The device as its plugin described it (devices/*.py ``describe()``).

    Plugins add their own facts (adb serial, ssh address, qemu's host...):
    those are device-specific, so they live in the free-form ``details``,
    written flat as the plugin returned them."""

    EXTRA: ClassVar[str | None] = "details"
    EXTRA_KEYS: ClassVar[frozenset[str] | None] = None  # any device-specific key
    FIX: ClassVar[str] = FIX

    kind: str = req()
    name: str | None = req()
    os: str | None = req()
    arch: str | None = req()
    cpu: str | None = req()
    emulated: bool = req()
    cores: int | None = opt()
    governor: str | None = opt()
    thermal_c: float | None = opt()
    error: str | None = opt()          # describe() failed: every row says "device unavailable"
    details: dict[str, Any] = opt(factory=dict)


@dataclasses.dataclass(frozen=True)
class Result(Record):
    """One artifact on one device (one row of results.json)."""

    FIX: ClassVar[str] = FIX

    variant: str = req()
    format: str = req()
    runtime: str = req()
    threads: int | None = req()
    warmup: int = req()
    iterations: int = req()
    load_ms: float | None = req()
    first_inference_ms: float | None = req()
    latency_ms: dict[str, float | None] = req()   # min/p50/p90/p99/mean/std (+max, trimmed_mean, cv)
    peak_rss_mb: float | None = req()
    memory: dict[str, Any] = req()
    eval_samples: int = req()
    status: str = req()
    error: str | None = req()
    runtime_version: str | None = opt(omit_none=False)
    artifact: str | None = opt(omit_none=False)
    quantize: str | None = opt(omit_none=False)
    bytes: int | None = opt(omit_none=False)
    timed_runs: int | None = opt(omit_none=False)
    min_duration_s: float | None = opt(omit_none=False)
    latency_samples_ms: list[float] = opt(factory=list, omit_none=False)
    accuracy: float | None = opt(omit_none=False)      # image classifiers, on the held-out split
    perplexity: float | None = opt(omit_none=False)    # causal LMs, on the held-out split
    warnings: list[str] = opt(factory=list, omit_none=False)
    notes: list[str] = opt(factory=list, omit_none=False)
    wall_s: float | None = opt(omit_none=False)
    unsupported: bool | None = opt()       # never tried: the device has no runner for it
    integrity: str | None = opt()          # verified | mismatch: the file vs manifest.json's sha256
    eval_tokens: int | None = opt()        # causal LMs
    prefill_tokens_per_s: float | None = opt()
    decode_tokens_per_s: float | None = opt()
    ttft_ms: float | None = opt()
    llm: dict[str, Any] | None = opt()     # causal LMs: prompt/decode tokens, prefill_ms stats

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def check(self, where: str, fix: str) -> None:
        if self.status not in STATUSES:
            raise BadInput(f"{where}.status is {self.status!r}, expected ok or failed; {fix}")
        if self.integrity is not None and self.integrity not in INTEGRITY:
            raise BadInput(f"{where}.integrity is {self.integrity!r}, expected verified or mismatch; {fix}")
        missing = [k for k in LATENCY_KEYS if not isinstance(self.latency_ms, dict) or k not in self.latency_ms]
        if missing:
            raise BadInput(f"{where}.latency_ms lacks the required field '{missing[0]}'; {fix}")


@dataclasses.dataclass(frozen=True)
class Results(Record):
    """results.json: the device, the bench config and one row per artifact."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"device": Device, "results": Result}
    FIX: ClassVar[str] = FIX

    version: int = req(json="format_version")
    device: Device = req()
    results: list[Result] = req()
    config: dict[str, Any] | None = opt(omit_none=False)
    host: dict[str, Any] | None = opt(omit_none=False)
    started: str | None = opt(omit_none=False)
    seconds: float | None = opt()          # absent while the run is still going (incremental writes)

    def to_json(self) -> dict[str, Any]:
        # key order as bench always wrote it: the rows near the end
        d = super().to_json()
        tail = {k: d.pop(k) for k in ("results", "seconds") if k in d}
        return {**d, **tail}

    def check(self, where: str, fix: str) -> None:
        check_version(self.version, RESULTS_VERSION, where, fix)
        if not isinstance(self.results, list):
            raise BadInput(f"{where}.results is not a list; {fix}")

    @classmethod
    def of(cls, doc: "Results | dict[str, Any]", where: str = "the results") -> "Results":
        """The records for a Results or the dict ``benchmarks.run`` returns."""
        return doc if isinstance(doc, Results) else cls.from_json(doc, where)

    @classmethod
    def load(cls, path: str | Path) -> "Results":
        """results.json (or the folder holding it), checked."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS
        return cls.from_json(read_json(path), str(path))

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())
