"""Measure a latency model (``pocketsize.latency``) on a device through the
benchmark harness's devices: export small block stacks with the export
stage's targets, time them with the device's runner, cache the table.

This module joins export and bench (as the pipeline does); compress only
ever sees the resulting ``LatencyModel`` record.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import BadInput
from .latency import RUNTIMES, LatencyModel, Signature, cache_folder, cache_key, friendly_multiple, taxed_widths
from .loading import Loaded

log = logging.getLogger(__name__)

STACK = 3            # a timed module runs the block this many times: its p50 is well above the per-call cost
MLP_GRID = 12        # coarse MLP-width grid points (plus the probes off it)
PROBE_OFFSETS = (8, 16, 32)  # widths just below grid points: do unaligned widths cost more?
CALIBRATION_MODELS = 6  # whole models timed to fit base and scale: unpruned, narrowest, 4 random
CALIBRATION_SEED = 99   # not experiments.latency's held-out seed

Progress = Callable[[str, int, int], None]


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise BadInput(f"--runtime {runtime!r}: pass one of {', '.join(RUNTIMES)}")
    return runtime


def signature_of(loaded: Loaded, input_shape: Sequence[int]) -> Signature:
    """The latency-relevant architecture; BadInput for models whose blocks differ (already pruned)."""
    ad = loaded.adapter
    shapes = [ad.block_shape(b) for b in ad.blocks(loaded.model)]
    if len({(s.heads, s.mlp_hidden) for s in shapes}) != 1:
        raise BadInput("--target-latency needs the unpruned model (its blocks differ in width); pass the original MODEL")
    x, _ = block_input(loaded, input_shape)
    return Signature(len(shapes), shapes[0].heads, shapes[0].mlp_hidden, int(x.shape[-1]), tuple(input_shape))


def block_input(loaded: Loaded, input_shape: Sequence[int]) -> tuple[torch.Tensor, dict[str, Any]]:
    """What the first block receives for one input (hidden states and keyword arguments)."""
    seen: dict[str, Any] = {}

    def grab(_mod, args, kwargs):
        seen.setdefault("x", args[0] if args else next(iter(kwargs.values())))
        seen.setdefault("kw", {k: v for k, v in kwargs.items() if not (not args and v is seen["x"])})
        raise _Stop

    block = loaded.adapter.blocks(loaded.model)[0]
    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            loaded.adapter.features(loaded.model, torch.zeros(*input_shape))
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["x"].detach().clone(), seen["kw"]


class _Stop(Exception):
    pass


class _Stack(torch.nn.Module):
    """One block applied STACK times (the same weights): what one grid point times."""

    def __init__(self, block: torch.nn.Module, kwargs: dict[str, Any]):
        super().__init__()
        self.block, self._kw = block, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(STACK):
            out = self.block(x, **self._kw)
            x = out[0] if isinstance(out, (tuple, list)) else out
        return x


class Timer:
    """Exports a module with the export stage's target and times it on the device (p50, ms)."""

    def __init__(self, device: Any, runtime: str, threads: int, work: Path, iterations: int = 20):
        from pocketsize.export.config import ExportConfig
        from pocketsize.export.targets import get_target

        self.device, self.runtime, self.threads, self.work = device, runtime, threads, work
        self.target = get_target(runtime)
        self.export_config = ExportConfig(targets=(runtime,))
        self.iterations = iterations
        self._n = 0

    def __call__(self, module: torch.nn.Module, example: torch.Tensor) -> float:
        path = self.export(module, example)
        try:
            return self.run(path, tuple(example.shape))
        finally:
            path.unlink()  # the grid's artifacts are only timed, never kept

    def export(self, module: torch.nn.Module, example: torch.Tensor) -> Path:
        """Write ``module`` as this runtime's artifact into the work folder."""
        from pocketsize.export.targets import Job as ExportJob

        self._n += 1
        folder = self.work / f"point-{self._n}"
        folder.mkdir()
        path = folder / f"m{self.target.SUFFIX}"
        job = ExportJob(module=module.eval(), example=example, input_name="x", output_name="y", quantize="none",
                        calib=None, config=self.export_config)
        self.target.export(job, path)
        return path

    def run(self, path: Path, shape: tuple[int, ...]) -> float:
        """p50 (ms) of one runner process on the device."""
        from pocketsize.benchmarks.devices.base import DeviceError, Job as RunJob

        self._n += 1
        work = self.work / f"run-{self._n}"
        work.mkdir()
        run = RunJob(artifact=path, format=self.runtime, input_shape=shape, warmup=3,
                     iterations=self.iterations, min_duration_s=0.3, threads=self.threads, timeout_s=300.0)
        try:
            out = self.device.run(run, work)
        except DeviceError as e:
            raise BadInput(f"--target-latency: measuring the latency grid on {self.device.spec} failed: {e}") from None
        return statistics.median(out.times_ms)


def profile(loaded: Loaded, device: str, runtime: str = "onnx", threads: int = 1,
            input_shape: Sequence[int] | None = None, progress: Progress | None = None,
            use_cache: bool = True) -> LatencyModel:
    """The latency model of ``loaded``'s architecture on ``device``: from the
    user's cache when it was measured before, else measured now (about 20
    small exports and runs) and cached."""
    from pocketsize.benchmarks.devices import get_device

    check_runtime(runtime)
    loaded = with_head(loaded)
    shape = tuple(input_shape or (1, *loaded.adapter.preprocessing(loaded.model)["input_size"]))
    sig = signature_of(loaded, shape)
    dev = get_device(device)
    if dev.emulated:
        raise BadInput(f"--target-latency: --device {device} is emulated, its timings are the emulator's, not a "
                       "phone's; measure on real hardware (local, ssh://user@host, adb, ios)")
    reason = dev.unsupported_reason(runtime)
    if reason:
        raise BadInput(f"--runtime {runtime} on --device {device}: {reason}")
    with dev:
        info = dev.describe()
        version = _runtime_version(runtime)
        path = cache_folder() / f"{cache_key(sig, info, runtime, threads, version)}.json"
        if use_cache and path.exists():
            log.info("latency model from the cache: %s", path)
            return LatencyModel.load(path)
        with tempfile.TemporaryDirectory(prefix="pocketsize-latency-") as tmp:
            model = measure(loaded, sig, Timer(dev, runtime, threads, Path(tmp)), info, progress)
    model.runtime_version = version  # the version the cache key names
    model.save(path)
    log.info("latency model measured and cached: %s", path)
    return model


def attach(cfg: Any, model: Any, device: str, runtime: str, threads: int,
           progress: Progress | None = None) -> tuple[Any, Loaded]:
    """For ``--target-latency``: the PruneConfig with the latency model of
    ``model`` on ``device`` (measured or cached) and the loaded model, so that
    compress does not load it twice."""
    import dataclasses

    from .loading import load_model

    loaded = model if isinstance(model, Loaded) else load_model(model)
    size = cfg.image_size
    shape = (1, 3, size, size) if size else None
    latency = profile(loaded, device, runtime, threads, input_shape=shape, progress=progress)
    return dataclasses.replace(cfg, latency=latency.to_dict()), loaded


def with_head(loaded: Loaded) -> Loaded:
    """``loaded`` itself when it classifies, else a copy with a small head (a
    backbone from the zoo gets the user's head only when compress personalizes it;
    the head's few hundred MACs do not move the latency)."""
    if loaded.task != "image-classification":
        raise BadInput(f"--target-latency works on image classifiers for now, not on {loaded.task} models; "
                       "use --ratio")
    if loaded.adapter.num_classes(loaded.model) > 0:
        return loaded
    copied = copy.deepcopy(loaded)
    copied.model = copied.adapter.set_num_classes(copied.model, ["a", "b"])
    return copied


def _runtime_version(runtime: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version("onnxruntime" if runtime == "onnx" else "executorch")
    except md.PackageNotFoundError:
        return None


def grid_widths(mlp_hidden: int) -> tuple[list[int], list[int]]:
    """(coarse grid, probes): MLP widths on the grid, and widths just below
    some grid points that tell whether unaligned widths cost extra."""
    step = max(8, mlp_hidden // MLP_GRID // 8 * 8)
    grid = sorted({8, *range(step, mlp_hidden, step), mlp_hidden})  # 8: the narrowest a plan keeps
    probes = sorted({g - o for g in grid[len(grid) // 3::len(grid) // 3 or 1] for o in PROBE_OFFSETS
                     if g - o > 0 and g - o not in grid})
    return grid, probes


def measure(loaded: Loaded, sig: Signature, timer: Timer, device: dict[str, Any],
            progress: Progress | None = None) -> LatencyModel:
    """Time block(h, M) for every h, block(H, c) on the grid and the probes, and the unpruned model."""
    ad = loaded.adapter
    x, kw = block_input(loaded, sig.input_shape)
    grid, probes = grid_widths(sig.mlp_hidden)
    points = [("attn", h) for h in range(1, sig.heads + 1)] + [("mlp", c) for c in grid + probes]
    total = len(points) + 1
    attn: dict[int, float] = {}
    mlp: dict[int, float] = {}

    def block_ms(kind: str, n: int) -> float:
        block = copy.deepcopy(ad.blocks(loaded.model)[0])
        if kind == "attn" and n < sig.heads:
            ad.prune_heads(block, list(range(n)))
        if kind == "mlp" and n < sig.mlp_hidden:
            ad.prune_mlp(block, list(range(n)))
        return timer(_Stack(block, kw), x) / STACK

    for i, (kind, n) in enumerate(points):
        if progress:
            progress("latency grid", i, total)
        (attn if kind == "attn" else mlp)[n] = block_ms(kind, n)
    # a width looks taxed on one run: time it and its wider neighbour again and keep
    # each one's faster run, so one noisy run cannot move every plan to coarser widths
    for p in taxed_widths(mlp, probes):
        for w in (p, min(w for w in grid if w > p)):
            mlp[w] = min(mlp[w], block_ms("mlp", w))
    example = torch.zeros(*sig.input_shape)
    calib = [[(sig.heads, sig.mlp_hidden)] * sig.blocks, [(1, grid[0])] * sig.blocks]
    calib += random_architectures(sig, CALIBRATION_MODELS - 2, seed=CALIBRATION_SEED)
    whole = []
    for counts in calib:
        cut = loaded if counts == calib[0] else cut_to(loaded, counts)
        whole.append(timer(cut.logits_module(), example))
    if progress:
        progress("latency grid", total, total)
    model = LatencyModel(sig, device, timer.runtime, timer.threads, 0.0, _monotone(attn),
                         _monotone({c: mlp[c] for c in grid}), whole[0], emulated=bool(device.get("emulated")), multiple=friendly_multiple(mlp, probes),
                         notes=[f"MLP probes off the grid: {{{', '.join(f'{c}: {mlp[c]:.3f}' for c in probes)}}} ms"])
    _calibrate(model, calib, whole)
    return model


def random_architectures(sig: Signature, n: int, seed: int) -> list[list[tuple[int, int]]]:
    """``n`` random per-block widths (heads 1..H, channels multiples of 8), each
    drawn around its own keep level, as pruning plans vary."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lo = rng.uniform(0.15, 0.7)
        hi = rng.uniform(lo, 1.0)
        out.append([(rng.randint(max(1, round(sig.heads * lo)), max(1, round(sig.heads * hi))),
                     8 * rng.randint(max(1, round(sig.mlp_hidden * lo / 8)), max(1, round(sig.mlp_hidden * hi / 8))))
                    for _ in range(sig.blocks)])
    return out


def _calibrate(model: LatencyModel, calib: list[list[tuple[int, int]]], measured: list[float]) -> None:
    """base and scale by least squares over whole models measured on the device:
    p50 = base + scale * sum(blocks). A block timed alone in a stack is not timed
    as inside the model (caches, the runtime's per-op overhead), and one whole
    model alone would put the host's noise of that one run into every prediction."""
    import numpy as np

    sums = np.array([sum(model.block_ms(h, c) for h, c in counts) for counts in calib])
    ys = np.array(measured)
    (base, scale), *_ = np.linalg.lstsq(np.stack([np.ones_like(sums), sums], 1), ys, rcond=None)
    if not 0.25 <= scale <= 4.0:  # noise swamped the spread: the stacks' own scale, base from the mean
        model.notes.append(f"calibration scale {scale:.2f} out of [0.25, 4]: used 1.0")
        scale, base = 1.0, float(np.mean(ys - sums))
    model.scale, model.base_ms = float(scale), float(base)
    fit = base + scale * sums
    model.notes.append("calibration models (measured / fitted ms): "
                       + ", ".join(f"{m:.2f}/{f:.2f}" for m, f in zip(measured, fit)))


def cut_to(loaded: Loaded, counts: Sequence[tuple[int, int]]) -> Loaded:
    """A copy of ``loaded`` keeping the first counts[l] heads and channels of block l (timing only)."""
    from pocketsize.compress.plan import Plan, apply_plan

    cut = copy.deepcopy(loaded)
    apply_plan(cut, Plan.of_widths([v for hc in counts for v in hc]))
    return cut


def _monotone(table: dict[int, float]) -> dict[int, float]:
    """Narrower never predicted slower than wider: a running minimum from the widest down
    (noise in one grid point must not make the allocator prefer a wider block)."""
    out, low = {}, float("inf")
    for k in sorted(table, reverse=True):
        low = min(low, table[k])
        out[k] = low
    return dict(sorted(out.items()))


def time_counts(loaded: Loaded, counts: Sequence[Sequence[tuple[int, int]]], device: str, runtime: str = "onnx",
                threads: int = 1, rounds: int = 1, input_shape: Sequence[int] | None = None,
                interleave: int = 0) -> list[list[float]]:
    """Measured p50s (ms) of ``loaded`` cut to each per-block (heads, channels)
    list (the first units; timing only): how the latency model is validated.
    Each model is exported once and timed in ``rounds`` rounds, one runner
    process per model and round, the order reversed every round, so a drift of
    the host hits every model alike. Returns one list of ``rounds`` p50s per model.

    ``interleave`` N > 0 (local device only): all models in one process instead,
    N inferences of each in turn per round (``benchmarks/runner/interleave.py``),
    so that the host's state changes, which last seconds, hit every model alike."""
    from pocketsize.benchmarks.devices import get_device

    if interleave and device != "local":
        raise BadInput(f"interleaved timing runs on the local device only, not {device!r}; leave interleave off")
    loaded = with_head(loaded)
    shape = tuple(input_shape or (1, *loaded.adapter.preprocessing(loaded.model)["input_size"]))
    example = torch.zeros(*shape)
    times: list[list[float]] = [[] for _ in counts]
    with get_device(device) as dev, tempfile.TemporaryDirectory(prefix="pocketsize-latency-") as tmp:
        timer = Timer(dev, runtime, threads, Path(tmp))
        paths = [timer.export(cut_to(loaded, cs).logits_module(), example) for cs in counts]
        if interleave:
            return _interleaved(paths, runtime, threads, shape, rounds, interleave)
        order = list(range(len(counts)))
        for r in range(rounds):
            for i in (order if r % 2 == 0 else order[::-1]):
                times[i].append(timer.run(paths[i], shape))
    return times


def _interleaved(paths: Sequence[Path], runtime: str, threads: int, shape: Sequence[int], rounds: int,
                 block: int) -> list[list[float]]:
    """Per model, one median per round from one local process that runs them all in turn."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pocketsize.benchmarks.runner.interleave", "--runtime", runtime,
           "--threads", str(threads), "--shape", ",".join(str(d) for d in shape), "--rounds", str(rounds),
           "--block", str(block), *[str(p) for p in paths]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"interleaved timing of {len(paths)} {runtime} models failed: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])["times_ms"]
