"""Helpers both suites share: where a row ran, how it was made, its widths."""

from __future__ import annotations

import platform
import statistics


def host(device: str) -> str:
    import os

    import torch
    import transformers

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{platform.machine()} CPU"
    return f"{where}, {os.cpu_count()} cores, torch {torch.__version__}, transformers {transformers.__version__}"


def each_row(fn, jobs: list[dict], workers: int):
    """``fn(job)`` for every job: in ``workers`` spawned processes (rows in the
    order they finish) when ``workers`` > 1, else here, in order. ``fn`` must be
    imported by its module name (not from ``__main__``) so the workers can import it."""
    if workers > 1 and jobs:
        import multiprocessing as mp
        import signal
        import threading

        def stop(signum, frame):  # SIGTERM unwinds the `with`, whose exit terminates the workers
            raise SystemExit(128 + signum)

        main = threading.current_thread() is threading.main_thread()  # signals are the main thread's
        previous = signal.signal(signal.SIGTERM, stop) if main else None
        try:
            with mp.get_context("spawn").Pool(workers) as pool:
                yield from pool.imap_unordered(fn, jobs)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    else:
        for job in jobs:
            yield fn(job)


def weights_sha256(model) -> str:
    """sha256 of the model's weights as a safetensors file (what `save_file` would
    write): names every row's exact weights, rounded copies included."""
    import hashlib

    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(save(state)).hexdigest()


def provenance(rows: list[dict]) -> list[str]:
    """One line per (host, weights, suite arguments) with its row count."""
    prov: dict[tuple, int] = {}
    for r in rows:
        if r["method"] != "unpruned":
            w = r.get("weights", "fp32") + (f", sha256 {r['weights_sha256'][:12]}" if r.get("weights_sha256") else "")
            k = (r.get("host", "?"), w, r.get("cmd", ""))
            prov[k] = prov.get(k, 0) + 1
    return [f"- {n} rows on {h} (weights {w}): `{c or '?'}`" for (h, w, c), n in sorted(prov.items())]


def plan_widths(plan: dict) -> list[int]:
    """Kept units per original block, flat (heads or KV groups, MLP channels, ...);
    a removed block keeps 0 of each. ``pocketsize.compress.plan.Plan.of_widths`` reads it back."""
    return [u["kept"] for u in plan["units"]]


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high) of the paired differences: Student's t interval (n >= 2)."""
    n = len(diffs)
    if n < 2:
        return None
    from scipy import stats

    m = statistics.mean(diffs)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(diffs) / n ** 0.5
    return m, m - half, m + half


MIN_SEEDS = 5  # a comparison with fewer paired seeds is shown, never called better or worse


def verdict(ci: tuple[float, float, float] | None, n: int = MIN_SEEDS) -> str:
    if ci is None:
        return "n < 2: no interval"
    word = "better" if ci[1] > 0 else "worse" if ci[2] < 0 else "no difference shown"
    return word if n >= MIN_SEEDS or word == "no difference shown" else f"n={n} < {MIN_SEEDS}: no verdict"
