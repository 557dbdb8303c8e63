"""Latency models: a model's p50 on one (device, runtime, threads), predicted
from a small grid of measured block shapes.

A transformer block's time is modelled as separable in its two widths:

    block(h, c) = block(h, M) + block(H, c) - block(H, M)

(H heads and M MLP channels unpruned), and the whole model as

    p50 = base + scale * sum over kept blocks of block(h_l, c_l)

``base`` (embeddings, head, the runtime's per-call cost, less what the block
stacks over-count) and ``scale`` (a block inside the whole model is not timed
exactly as a block stack alone: caches, fusion) are fitted by least squares
to a few whole models measured on the device (the unpruned one, the narrowest
one, random plans). ``attn`` holds block(h, M) for
every head count and ``mlp`` block(H, c) on a grid of widths; widths between
grid points are interpolated linearly. The grid is measured through the
benchmark harness's devices (``pocketsize.latency_grid``); this module only
stores and evaluates it, so compress can allocate against it without importing
the other stages.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import BadInput

FORMAT_VERSION = 1
RUNTIMES = ("onnx", "executorch")


@dataclass(frozen=True)
class Signature:
    """The architecture a latency model was measured for: widths, depth, tokens."""

    blocks: int
    heads: int
    mlp_hidden: int
    dim: int
    input_shape: tuple[int, ...]

    def describe(self) -> str:
        return (f"{self.blocks} blocks of {self.heads} heads + {self.mlp_hidden} MLP channels, width {self.dim}, "
                f"input {'x'.join(map(str, self.input_shape))}")


@dataclass
class LatencyModel:
    """Measured block costs (ms) and the rest of the model, for one device tier."""

    signature: Signature
    device: dict[str, Any]          # the harness's describe() of the device
    runtime: str                    # "onnx" | "executorch"
    threads: int
    base_ms: float
    attn: dict[int, float]          # heads -> ms of a block with that many heads and all MLP channels
    mlp: dict[int, float]           # MLP width -> ms of a block with all heads and that width
    measured_p50_ms: float          # the unpruned model, measured
    scale: float = 1.0
    runtime_version: str | None = None
    emulated: bool = False
    multiple: int = 8               # MLP widths the runtime rewards (see ``friendly_multiple``)
    notes: list[str] = field(default_factory=list)

    # --- prediction ---------------------------------------------------------

    def block_ms(self, heads: int, channels: int) -> float:
        s = self.signature
        full = self.attn[s.heads]
        return max(0.0, _interp(self.attn, heads) + _interp(self.mlp, channels) - full)

    def predict(self, counts: Sequence[tuple[int, int]], removed: Sequence[int] = ()) -> float:
        """p50 (ms) of a model whose block l keeps counts[l] = (heads, channels); blocks in ``removed`` are gone."""
        gone = set(removed)
        blocks = sum(self.block_ms(h, c) for l, (h, c) in enumerate(counts) if l not in gone)
        return max(0.0, self.base_ms + self.scale * blocks)  # base is negative where block stacks over-count

    def unpruned_ms(self) -> float:
        s = self.signature
        return self.predict([(s.heads, s.mlp_hidden)] * s.blocks)

    # --- records ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["signature"]["input_shape"] = list(self.signature.input_shape)
        d["attn"] = {str(k): v for k, v in self.attn.items()}
        d["mlp"] = {str(k): v for k, v in self.mlp.items()}
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyModel":
        try:
            d = dict(d)
            if d.pop("format_version", FORMAT_VERSION) != FORMAT_VERSION:
                raise ValueError("another format version")
            sig = dict(d.pop("signature"))
            sig["input_shape"] = tuple(int(v) for v in sig["input_shape"])
            attn = {int(k): float(v) for k, v in d.pop("attn").items()}
            mlp = {int(k): float(v) for k, v in d.pop("mlp").items()}
            return cls(Signature(**sig), attn=attn, mlp=mlp, **d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadInput(f"the latency model is not a pocketsize latency model ({e}); measure it again") from None

    def save(self, path: Path) -> None:
        from .io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "LatencyModel":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise BadInput(f"cannot read the latency model {path} ({e}); delete it to measure again") from None


def cache_key(signature: Signature, device: dict[str, Any], runtime: str, threads: int,
              runtime_version: str | None) -> str:
    """One file per (architecture, device, runtime, version, threads) in the user's cache."""
    ident = {"signature": asdict(signature), "runtime": runtime, "threads": threads, "version": runtime_version,
             "device": {k: device.get(k) for k in ("kind", "name", "arch", "cpu", "os")},
             "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_folder() -> Path:
    from .zoo import cache_dir

    return cache_dir().parent / "latency"


def friendly_multiple(mlp: dict[int, float], probes: Sequence[int],
                      candidates: Sequence[int] = (8, 16, 32, 64), margin: float = 0.05) -> int:
    """The smallest MLP-width multiple m whose widths the runtime does not tax.

    A probe width (just below a grid width) is taxed when it runs more than
    ``margin`` slower than the grid width above it: fewer channels, more time,
    the signature of GEMM tiles that do not fit (the margin sits above the
    run-to-run noise of one p50 on a shared host). m is the smallest candidate
    of which no taxed probe is a multiple."""
    taxed = taxed_widths(mlp, probes, margin)
    for m in candidates:
        if not any(w % m == 0 for w in taxed):
            return m
    return candidates[-1]


def taxed_widths(mlp: dict[int, float], probes: Sequence[int], margin: float = 0.05) -> list[int]:
    """The probes that ran more than ``margin`` slower than the grid width just above them."""
    grid = sorted(w for w in mlp if w not in probes)
    out = []
    for p in probes:
        above = [w for w in grid if w > p]
        if above and mlp[p] > mlp[above[0]] * (1 + margin):
            out.append(p)
    return out


def _interp(table: dict[int, float], x: float) -> float:
    """Linear between measured widths; clamped outside them (never extrapolated:
    a straight line below the narrowest grid point can go negative)."""
    keys = sorted(table)
    if x <= keys[0]:
        return table[keys[0]]
    if x >= keys[-1]:
        return table[keys[-1]]
    i = bisect.bisect_right(keys, x)
    k0, k1 = keys[i - 1], keys[i]
    return table[k0] + (x - k0) / (k1 - k0) * (table[k1] - table[k0])
