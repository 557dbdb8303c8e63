"""Core ML benchmark runner (macOS only: coremltools' predict() needs Core ML).

Speaks the runner protocol of benchmarks/devices/base.py with the command
line, timing loop and closing files of its sibling ort_runner.py.
"""

import platform
import resource
import time

from ort_runner import finish, measure, protocol_parser


def main(argv=None):
    a = protocol_parser().parse_args(argv)

    import coremltools as ct
    import numpy as np

    t0 = time.perf_counter()
    model = ct.models.MLModel(a.model, compute_units=ct.ComputeUnit.CPU_ONLY)
    load_ms = (time.perf_counter() - t0) * 1e3
    desc = model.get_spec().description
    name, out_name = desc.input[0].name, desc.output[0].name
    shape = list(desc.input[0].type.multiArrayType.shape)
    out, first_ms = measure(lambda v: model.predict({name: v})[out_name], shape, a)
    # macOS has no /proc: ru_maxrss is bytes there (kB on Linux)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if platform.system() == "Darwin" else peak / 1024
    finish(a.out_dir, {"runtime": "coreml", "runtime_version": ct.__version__, "load_ms": load_ms,
                       "first_inference_ms": first_ms, "output_shape": list(np.shape(out)),
                       "eval_count": a.eval_count, "threads": a.threads,
                       "memory": {"peak_rss_mb": round(peak_mb, 3), "anon_mb": None, "file_mb": None,
                                  "source": "getrusage (no anonymous/file split on macOS)"},
                       "notes": ["Core ML chooses its own threads; CPU_ONLY compute units"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
