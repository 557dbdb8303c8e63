"""``pocketsize run`` and ``pocketsize demo``: compress + export + bench in one go.

The pipeline only calls the stages' verbs (compress.prune, export.export,
benchmarks.run) and writes everything into one atomic output folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .io import atomic_dir, check_out_dir, write_json

log = logging.getLogger(__name__)

DEMO_MODEL = "zoo:dinov2-small"
DEMO_CLASSES = (0, 1, 5, 9)       # T-shirt, Trouser, Sandal, Ankle boot
DEMO_PER_CLASS = 200              # ~100 training images per class after the split


DEFAULT_TO = ("executorch", "onnx")


def run(model: Any, data: str, out: str | Path, prune_config=None, to: tuple[str, ...] | str | None = None,
        quantize: str | None = None, device: str = "local", bench_config=None, progress=None, *,
        export_config=None, generic: str | None = None, runtime: str = "onnx") -> dict[str, Any]:
    """compress -> export original + compressed -> bench both; returns summary.json's dict.

    export_config: an ExportConfig for both exports (its ``data`` defaults to ``data``).
    Without one, ``to`` (default executorch,onnx) and ``quantize`` (default none) build
    it; with one, they may only repeat what it says. generic: optional generic
    reference data for compress (``pocketsize run --generic``).
    """
    import dataclasses

    from pocketsize import benchmarks
    from pocketsize import compress
    from pocketsize import export

    t0 = time.time()
    check_out_dir(out)
    # validate the cheap things before the expensive ones
    # the split travels as split.json: export writes it from pruned.data into each export folder
    if export_config is None:
        export_cfg_orig = export.ExportConfig(targets=tuple(to or DEFAULT_TO) if not isinstance(to, str) else to,
                                              quantize=quantize or "none", data=data)
    else:
        given = export.ExportConfig(targets=to, quantize=export_config.quantize) if to is not None else None
        if (given is not None and given.targets != export_config.targets) or \
                (quantize is not None and quantize != export_config.quantize):
            raise ValueError("pipeline.run: pass the formats and precision either as to=/quantize= or inside "
                             "export_config, not both differently")
        export_cfg_orig = export_config if export_config.data is not None else \
            dataclasses.replace(export_config, data=data)
    bench_cfg = bench_config or benchmarks.BenchConfig()
    if export_cfg_orig.quantize == "int4":  # a precision the model's task cannot take: exit 2 before compress
        from .loading import Loaded, load_model

        model = model if isinstance(model, Loaded) else load_model(model)
        export.check_precision(model.task, export_cfg_orig)
        prune_config = int4_prune_config(prune_config or compress.PruneConfig(), int(export_cfg_orig.int4_group_size))
    if isinstance(device, str):  # parse --device now (no connection): a typo must not cost a compress
        from pocketsize.benchmarks.devices import check_device_spec

        check_device_spec(device)
    if prune_config is not None and prune_config.target_latency_ms is not None and prune_config.latency is None:
        from .errors import BadInput
        from .latency_grid import attach

        if runtime not in export_cfg_orig.targets:
            raise BadInput(f"--runtime {runtime} is not exported (--to {','.join(export_cfg_orig.targets)}); add it "
                           "to --to so that the bench measures the latency the target is about")
        log.info("stage 0/3: latency model of %s on %s", runtime, device)
        prune_config, model = attach(prune_config, model, device, runtime, bench_cfg.threads, progress=progress)
    log.info("stage 1/3: compress")
    pruned = compress.prune(model, data, prune_config, progress=progress, generic=generic)
    with atomic_dir(out) as tmp:
        compress.write_outputs(pruned, tmp / "compress")
        (tmp / "export").mkdir()
        log.info("stage 2/3: export (original and compressed)")
        parity_errors = []
        for variant, src in (("original", pruned.teacher), ("compressed", pruned.loaded)):
            try:
                export.export(src, tmp / "export" / variant, export_cfg_orig, data=pruned.data)
            except Exception as e:  # a parity failure is reported, the run goes on to measure
                from .errors import ParityError

                if not isinstance(e, ParityError):
                    raise
                # name the folder the user will have, not the temporary one being written
                parity_errors.append(str(e).replace(str(tmp), str(out)))
        log.info("stage 3/3: bench on %s", device)
        results = benchmarks.run(tmp / "export", device=device, config=bench_cfg, data=pruned.data,
                                 out_dir=tmp / "bench")
        summary = summarize(pruned.report, results, time.time() - t0)
        if pruned.report.get("latency"):
            summary["latency"] = summarize_latency(pruned.report["latency"], summary)
        if pruned.report.get("metric") == "perplexity":
            summary["llm"] = summarize_lm(pruned.report, results, tmp / "export")
        summary["deployment"] = deployment(results, tmp / "export")
        summary["parity_errors"] = parity_errors
        write_json(tmp / "summary.json", summary)
    return summary


def int4_prune_config(cfg, group: int):
    """The prune config for a run that exports 4-bit groups of ``group`` weights (causal LMs only):

    - MLP widths in multiples of the group too, so every pruned Linear's in-features hold whole
      groups (with the default multiple of 8 the export would refuse the pruned model after the
      whole compress). Head counts are left alone: their in-features are heads x head_dim.
    - quantization-aware recovery on the export's grid (``lm.qat_group``), unless the config
      switched it off (0); a different group than the export's is refused: the recovery would
      end on a grid the export then re-rounds."""
    import dataclasses

    from .errors import BadInput

    qat = cfg.lm.qat_group
    if qat not in (None, 0, group):
        raise BadInput(f"--lm-qat-group {qat} differs from --group-size {group}: pass the same size to both "
                       "(or leave --lm-qat-group out)")
    if qat is None:
        log.info("--quantize int4: recovery trains through the export's 4-bit grid (groups of %d)", group)
        cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, qat_group=group))
    grouped = cfg.in_whole_groups(group)
    if grouped is not cfg:
        log.info("--quantize int4 --group-size %d: MLP widths pruned in multiples of %d", group,
                 grouped.channel_multiple)
    return grouped


def summarize(report: dict[str, Any], results: Any, seconds: float) -> dict[str, Any]:
    from pocketsize.benchmarks.results import Results

    p50: dict[tuple[str, str], float] = {}
    quant: dict[tuple[str, str], str] = {}
    for r in Results.of(results).results:
        key = (r.variant, r.format)
        # one precision per run (--quantize); fp32 wins if a results file holds several
        if r.ok and (key not in p50 or r.quantize in ("none", None)):
            p50[key], quant[key] = r.latency_ms["p50"], r.quantize or "none"
    speedup = {fmt: p50[("original", fmt)] / p50[("compressed", fmt)]
               for (v, fmt) in p50 if v == "original" and ("compressed", fmt) in p50 and p50[("compressed", fmt)] > 0}
    return {"params_ratio": report["params_ratio"], "metric": report["metric"], "before": report["before"],
            "after": report["after"], "references": report.get("references"), "params_before": report["params_before"], "params_after": report["params_after"],
            "p50_ms": {f"{v}/{f}": ms for (v, f), ms in sorted(p50.items())},
            "quantize": sorted(set(quant.values())),
            "speedup": speedup, "seconds": round(seconds, 1)}


def _artifacts(export_dir: Path):
    """(variant, manifest artifact) for every artifact the run's exports recorded."""
    from pocketsize.export.manifest import Manifest

    for variant in ("original", "compressed"):
        folder = export_dir / variant
        for a in Manifest.load(folder).artifacts if (folder / "manifest.json").exists() else []:
            yield variant, a


def _parity_word(p) -> str:
    if not p.checked:
        return "not checked"
    return "passed" if p.passed else "FAILED" if p.passed is False else "not compared"


def deployment(results: Any, export_dir: Path) -> list[dict[str, Any]]:
    """One row per artifact the run measured, side by side: its precision, file
    size, peak memory, p50 (and decode tokens/s for LMs), the user's held-out
    metric on the artifact, and its parity verdict (a failed check still shows
    what was measured, flagged)."""
    from pocketsize.benchmarks.results import Results

    parity = {(variant, a.format): (_parity_word(a.parity), a.parity.snr_db, a.precision)
              for variant, a in _artifacts(export_dir)}
    rows = []
    for r in Results.of(results).results:
        word, snr, precision = parity.get((r.variant, r.format), ("no manifest", None, None))
        # the precision the artifact was written at (fp32, Core ML's fp16, int8, int4), not the flag
        rows.append({"variant": r.variant, "format": r.format, "precision": precision or r.quantize or "none",
                     "status": r.status, "file_mb": round(r.bytes / 1e6, 2) if r.bytes else None,
                     "peak_rss_mb": r.peak_rss_mb, "p50_ms": r.latency_ms.get("p50") if r.ok else None,
                     "decode_tokens_per_s": r.decode_tokens_per_s, "accuracy": r.accuracy,
                     "perplexity": r.perplexity, "parity": word, "snr_db": snr})
    return rows


def summarize_latency(lat: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """--target-latency: the target, the latency model's prediction and what the bench measured."""
    measured = summary["p50_ms"].get(f"compressed/{lat['runtime']}")
    return {"runtime": lat["runtime"], "threads": lat["threads"], "target_ms": lat["target_ms"],
            "predicted_ms": lat["predicted_ms"], "measured_ms": measured,
            "error": None if measured is None else round(measured / lat["target_ms"] - 1, 4),
            "original_predicted_ms": lat["predicted_before_ms"],
            "original_measured_ms": summary["p50_ms"].get(f"original/{lat['runtime']}")}


def summarize_lm(report: dict[str, Any], results: Any, export_dir: Path) -> dict[str, Any]:
    """The language-model view: personal perplexity, greedy-token parity per
    artifact, and tokens/s per variant and format."""
    from pocketsize.benchmarks.results import Results

    parity = {}
    for variant, a in _artifacts(export_dir):
        p, g = a.parity, a.parity.greedy or {}
        parity[f"{variant}/{a.format}"] = {
            "checked": p.checked, "passed": p.passed, "greedy_tokens": g.get("new_tokens"),
            "greedy_match": g.get("match"), "max_abs_diff": p.max_abs_diff, "reason": p.reason}
    speed = {}
    for r in Results.of(results).results:
        speed[f"{r.variant}/{r.format}"] = {
            "status": r.status, "prefill_tokens_per_s": r.prefill_tokens_per_s,
            "decode_tokens_per_s": r.decode_tokens_per_s, "ttft_ms": r.ttft_ms,
            "peak_rss_mb": r.peak_rss_mb, "perplexity": r.perplexity, "error": r.error}
    return {"perplexity": {"before": report["before"], "after": report["after"], "split": "held-out",
                           "references": report.get("references"), "general": report.get("general")},
            "parity": parity, "tokens_per_s": speed}


def demo_data() -> Path:
    """The demo's personal data: a 4-class Fashion-MNIST subset, built once."""
    from pocketsize.zoo import cache_dir

    from .datasets import make_fashion_subset

    return make_fashion_subset(cache_dir().parent / "data" / "fashion-0159-200", DEMO_CLASSES, DEMO_PER_CLASS)


