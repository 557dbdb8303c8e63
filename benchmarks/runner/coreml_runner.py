"""Core ML benchmark runner (macOS only: coremltools' predict() needs Core ML).

Speaks the runner protocol of benchmarks/devices/base.py, like ort_runner.py.
"""

import argparse
import json
import os
import platform
import resource
import time


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--min-duration-ms", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-input")
    p.add_argument("--eval-count", type=int, default=0)
    a = p.parse_args(argv)

    import coremltools as ct
    import numpy as np

    t0 = time.perf_counter()
    model = ct.models.MLModel(a.model, compute_units=ct.ComputeUnit.CPU_ONLY)
    load_ms = (time.perf_counter() - t0) * 1e3
    desc = model.get_spec().description
    name = desc.input[0].name
    shape = list(desc.input[0].type.multiArrayType.shape)
    out_name = desc.output[0].name
    n = int(np.prod(shape))
    x = ((np.arange(n, dtype=np.uint64) * 2654435761 % 1000).astype(np.float32) / 1000.0 - 0.5).reshape(shape)

    t0 = time.perf_counter()
    out = model.predict({name: x})[out_name]
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(a.warmup):
        model.predict({name: x})
    with open(os.path.join(a.out_dir, "times.txt"), "w") as tf:
        start, i = time.perf_counter(), 0
        while i < a.iterations or (time.perf_counter() - start) * 1e3 < a.min_duration_ms:
            t0 = time.perf_counter()
            model.predict({name: x})
            tf.write("t %.6f\n" % ((time.perf_counter() - t0) * 1e3))
            tf.flush()
            i += 1
    if a.eval_input and a.eval_count > 0:
        data = np.fromfile(a.eval_input, dtype="<f4").reshape([a.eval_count] + shape[1:])
        with open(os.path.join(a.out_dir, "eval_outputs.bin"), "wb") as f:
            for k in range(a.eval_count):
                y = model.predict({name: data[k:k + 1]})[out_name]
                f.write(np.ascontiguousarray(y, dtype="<f4").tobytes())
    # macOS has no /proc: ru_maxrss is bytes there (kB on Linux)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if platform.system() == "Darwin" else peak / 1024
    report = {"runtime": "coreml", "runtime_version": ct.__version__, "load_ms": load_ms,
              "first_inference_ms": first_ms, "output_shape": list(np.shape(out)),
              "eval_count": a.eval_count, "threads": a.threads,
              "memory": {"peak_rss_mb": round(peak_mb, 3), "anon_mb": None, "file_mb": None,
                         "source": "getrusage (no anonymous/file split on macOS)"},
              "notes": ["Core ML chooses its own threads; CPU_ONLY compute units"]}
    with open(os.path.join(a.out_dir, "report.json"), "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
