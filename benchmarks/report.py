"""report.html: one self-contained page (inline SVG, inline CSS, no script, no network)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from .results import Results

COLORS = {"original": "#4e79a7", "compressed": "#e15759"}
FORMAT_COLORS = {"executorch": "#59a14f", "onnx": "#f28e2b", "coreml": "#b07aa1"}
W, ROW = 760, 34


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else "—"
    return "—" if v is None else _e(v)


def _label(r: dict) -> str:
    q = r.get("quantize")
    return f"{r['variant']} · {r['format']}" + (f" · {q}" if q and q != "none" else "")


def _ok(results: list[dict]) -> list[dict]:
    return [r for r in results if r.get("latency_samples_ms")]


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axis_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def latency_distribution_svg(results: list[dict]) -> str:
    """Per artifact: every timed run as a dot, a p50 tick and a p10-p90 box, min..p99 whisker."""
    rows = _ok(results)
    if not rows:
        return _empty_svg("latency-distribution", "no timed runs")
    left, right = 230, W - 45
    allv = [t for r in rows for t in r["latency_samples_ms"]]
    lo, hi = min(allv), max(allv)
    pad = (hi - lo) * 0.05 or max(hi * 0.05, 1e-3)
    x = _scale(lo - pad, hi + pad, left, right)
    h = 40 + ROW * len(rows)
    parts = [f'<svg class="plot" data-plot="latency-distribution" xmlns="http://www.w3.org/2000/svg" '
             f'width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img">',
             '<title>Latency distribution per artifact</title>']
    for t in _axis_ticks(lo - pad, hi + pad):
        parts.append(f'<line x1="{x(t):.1f}" y1="10" x2="{x(t):.1f}" y2="{h - 25}" stroke="#ddd"/>'
                     f'<text x="{x(t):.1f}" y="{h - 8}" font-size="11" text-anchor="middle">{t:.3g} ms</text>')
    for i, r in enumerate(rows):
        y = 25 + i * ROW
        c = COLORS.get(r["variant"], "#777")
        xs = sorted(r["latency_samples_ms"])
        st = r["latency_ms"]
        p10 = xs[int(0.1 * (len(xs) - 1))]
        parts.append(f'<text x="{left - 8}" y="{y + 4}" font-size="12" text-anchor="end">{_e(_label(r))}</text>')
        parts.append(f'<line x1="{x(st["min"]):.1f}" y1="{y}" x2="{x(st["p99"]):.1f}" y2="{y}" stroke="{c}"/>')
        parts.append(f'<rect class="box" x="{x(p10):.1f}" y="{y - 8}" width="{max(x(st["p90"]) - x(p10), 1):.1f}" '
                     f'height="16" fill="{c}" fill-opacity="0.25" stroke="{c}"/>')
        step = max(1, len(xs) // 400)
        for j, t in enumerate(xs[::step]):
            jitter = ((j * 7919) % 11 - 5) * 1.0
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y + jitter:.1f}" r="1.6" fill="{c}"/>')
        parts.append(f'<line x1="{x(st["p50"]):.1f}" y1="{y - 10}" x2="{x(st["p50"]):.1f}" y2="{y + 10}" '
                     f'stroke="#000" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def original_vs_compressed_svg(results: list[dict]) -> str:
    """Grouped bars of p50 per format, original next to compressed, with the speedup."""
    rows = [r for r in results if r.get("status") == "ok" and r["latency_ms"].get("p50")]
    keys = sorted({(r["format"], r.get("quantize") or "none") for r in rows})
    if not keys:
        return _empty_svg("original-vs-compressed", "no successful runs")
    h, base, top = 260, 220, 30
    vmax = max(r["latency_ms"]["p50"] for r in rows) * 1.15
    y = _scale(0, vmax, base, top)
    gw = (W - 80) / len(keys)
    parts = [f'<svg class="plot" data-plot="original-vs-compressed" xmlns="http://www.w3.org/2000/svg" '
             f'width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img">',
             '<title>p50 latency, original vs compressed</title>',
             f'<line x1="60" y1="{base}" x2="{W - 10}" y2="{base}" stroke="#333"/>']
    for t in _axis_ticks(0, vmax):
        parts.append(f'<text x="55" y="{y(t) + 4:.1f}" font-size="10" text-anchor="end">{t:.3g}</text>'
                     f'<line x1="60" y1="{y(t):.1f}" x2="{W - 10}" y2="{y(t):.1f}" stroke="#eee"/>')
    for gi, (fmt, q) in enumerate(keys):
        gx = 70 + gi * gw
        p50 = {}
        for vi, v in enumerate(("original", "compressed")):
            match = [r for r in rows if r["variant"] == v and r["format"] == fmt and (r.get("quantize") or "none") == q]
            if not match:
                continue
            val = match[0]["latency_ms"]["p50"]
            p50[v] = val
            bx, bw = gx + vi * gw * 0.4, gw * 0.35
            parts.append(f'<rect class="bar" x="{bx:.1f}" y="{y(val):.1f}" width="{bw:.1f}" '
                         f'height="{base - y(val):.1f}" fill="{COLORS[v]}"><title>{v}: {val:.4g} ms</title></rect>'
                         f'<text x="{bx + bw / 2:.1f}" y="{y(val) - 4:.1f}" font-size="10" '
                         f'text-anchor="middle">{val:.3g}</text>')
        label = fmt + ("" if q == "none" else f" {q}")
        if len(p50) == 2 and p50["compressed"] > 0:
            label += f" — {p50['original'] / p50['compressed']:.2f}x"
        parts.append(f'<text x="{gx + gw * 0.37:.1f}" y="{base + 16}" font-size="12" text-anchor="middle">{_e(label)}</text>')
    parts.append(f'<text x="12" y="{(base + top) / 2}" font-size="11" transform="rotate(-90 12 {(base + top) / 2})" '
                 'text-anchor="middle">p50 ms</text>')
    for i, v in enumerate(("original", "compressed")):
        parts.append(f'<rect x="{W - 220 + i * 110}" y="6" width="12" height="12" fill="{COLORS[v]}"/>'
                     f'<text x="{W - 204 + i * 110}" y="16" font-size="12">{v}</text>')
    parts.append("</svg>")
    return "".join(parts)


def size_latency_accuracy_svg(results: list[dict]) -> str:
    """Scatter: size (MB) vs p50 (ms); colour = variant, label = accuracy."""
    rows = [r for r in results if r.get("status") == "ok" and r.get("bytes") and r["latency_ms"].get("p50")]
    if not rows:
        return _empty_svg("size-latency-accuracy", "no successful runs")
    h, left, right, top, base = 300, 70, W - 30, 20, 260
    mbs = [r["bytes"] / 1e6 for r in rows]
    p50s = [r["latency_ms"]["p50"] for r in rows]
    x = _scale(0, max(mbs) * 1.15, left, right)
    y = _scale(0, max(p50s) * 1.2, base, top)
    parts = [f'<svg class="plot" data-plot="size-latency-accuracy" xmlns="http://www.w3.org/2000/svg" '
             f'width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img">',
             '<title>Size vs latency vs accuracy</title>',
             f'<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" stroke="#333"/>'
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#333"/>',
             f'<text x="{(left + right) / 2}" y="{h - 8}" font-size="12" text-anchor="middle">artifact size (MB)</text>',
             f'<text x="14" y="{(top + base) / 2}" font-size="12" transform="rotate(-90 14 {(top + base) / 2})" '
             'text-anchor="middle">p50 latency (ms)</text>']
    for t in _axis_ticks(0, max(mbs) * 1.15):
        parts.append(f'<text x="{x(t):.1f}" y="{base + 14}" font-size="10" text-anchor="middle">{t:.3g}</text>')
    for t in _axis_ticks(0, max(p50s) * 1.2):
        parts.append(f'<text x="{left - 5}" y="{y(t) + 4:.1f}" font-size="10" text-anchor="end">{t:.3g}</text>')
    for r, mb, p in zip(rows, mbs, p50s):
        acc = r.get("accuracy")
        rad = 5 + (10 * acc if isinstance(acc, float) else 0)
        txt = _label(r) + (f" · acc {acc:.3f}" if isinstance(acc, float) else "")
        parts.append(f'<circle class="point" cx="{x(mb):.1f}" cy="{y(p):.1f}" r="{rad:.1f}" '
                     f'fill="{COLORS.get(r["variant"], "#777")}" fill-opacity="0.6" '
                     f'stroke="{FORMAT_COLORS.get(r["format"], "#333")}" stroke-width="2"><title>{_e(txt)}</title></circle>'
                     + (f'<text x="{x(mb) - rad - 3:.1f}" y="{y(p) + 4:.1f}" font-size="11" text-anchor="end">'
                        if x(mb) > left + 0.6 * (right - left) else
                        f'<text x="{x(mb) + rad + 3:.1f}" y="{y(p) + 4:.1f}" font-size="11">') + f'{_e(txt)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _empty_svg(name: str, why: str) -> str:
    return (f'<svg class="plot empty" data-plot="{name}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="40">'
            f'<text x="10" y="25" font-size="13" fill="#777">{_e(why)}</text></svg>')


def status_label(r: dict) -> str:
    """The status a person reads: the JSON keeps the contract's ok|failed, but
    an artifact this device cannot run was never tried, which is not a failure."""
    return "not run here" if r.get("unsupported") else r["status"]


def table_html(results: list[dict]) -> str:
    head = ["variant", "format", "quantize", "status", "MB", "load ms", "first ms", "p50", "p90", "p99",
            "mean", "std", "runs", "peak RSS MB", "anon MB", "file MB", "accuracy", "eval n", "notes"]
    rows = []
    for r in results:
        st, mem = r["latency_ms"], r.get("memory") or {}
        note = "; ".join([r["error"]] if r.get("error") else []) or "; ".join(r.get("warnings") or [])
        cells = [r["variant"], r["format"], r.get("quantize"), status_label(r),
                 (r["bytes"] / 1e6) if r.get("bytes") else None, r.get("load_ms"), r.get("first_inference_ms"),
                 st.get("p50"), st.get("p90"), st.get("p99"), st.get("mean"), st.get("std"), r.get("timed_runs"),
                 r.get("peak_rss_mb"), mem.get("anon_mb"), mem.get("file_mb"), r.get("accuracy"),
                 r.get("eval_samples"), note]
        cls = ' class="skipped"' if r.get("unsupported") else ' class="failed"' if r["status"] != "ok" else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_fmt(c, 4)}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+4){text-align:left}
tr.failed{background:#fdecea}tr.skipped{color:#777}.banner{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px;margin:12px 0}
.meta{font-size:13px;color:#555}"""


def render(doc: Results | dict) -> str:
    # the records keep a dict view (Record.get / []), so the templates below index them as before
    doc = Results.of(doc, "the results to report")
    dev, results = doc.device, doc.results
    banner = ""
    if dev.get("emulated"):
        banner = ('<div class="banner"><b>Emulated device.</b> Timings and memory come from an emulator '
                  f'({_e(dev.get("cpu"))}); they are not phone timings. Accuracy is computed by the real '
                  'ARM64 kernels and is meaningful.</div>')
    warn = [f"{_label(r)}: {w}" for r in results for w in r.get("warnings") or []]
    warn_html = ('<div class="banner"><b>Warnings</b><ul>' + "".join(f"<li>{_e(w)}</li>" for w in warn)
                 + "</ul></div>") if warn else ""
    cfg = doc.config or {}
    meta = (f'device <b>{_e(dev.get("kind"))}</b> {_e(dev.get("name"))} · {_e(dev.get("os"))} · '
            f'{_fmt(dev.get("arch"))} · {_fmt(dev.get("cpu"))} · governor {_fmt(dev.get("governor"))} · '
            f'thermal {_fmt(dev.get("thermal_c"))} °C · warmup {_e(cfg.get("warmup"))}, '
            f'iterations {_e(cfg.get("iterations"))}, min {_e(cfg.get("min_duration_s"))} s, '
            f'threads {_e(cfg.get("threads"))}')
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>pocketsize bench report</title>"
            f"<style>{CSS}</style></head><body><h1>pocketsize bench</h1>"
            f'<p class="meta">{meta}</p>{banner}{warn_html}'
            "<h2>Latency distribution per artifact</h2>" + latency_distribution_svg(results)
            + "<h2>Original vs compressed (p50)</h2>" + original_vs_compressed_svg(results)
            + "<h2>Size vs latency vs accuracy</h2>" + size_latency_accuracy_svg(results)
            + "<h2>All results</h2>" + table_html(results) + "</body></html>")


def write_report(doc: Results | dict, path: Path) -> None:
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(doc), encoding="utf-8")
    tmp.replace(path)
