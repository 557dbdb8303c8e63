"""ONNX Runtime benchmark runner speaking the runner protocol of benchmarks/devices/base.py.

Standalone on purpose (numpy + onnxruntime only, no pocketsize import) so it
can be copied to a board and run with that board's python3. Run one per
process: timing two runtimes in one process makes their thread pools fight.

    python3 ort_runner.py MODEL --out-dir DIR --warmup W --iterations N
        --min-duration-ms D --threads T [--eval-input FILE --eval-count K]
"""

import argparse
import json
import os
import shutil
import time


def cpu_session(path, threads):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads (one inter-op)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def finish(out_dir, report):
    """The protocol's closing files: this process's /proc memory snapshots and report.json (atomically)."""
    for src, dst in (("/proc/self/status", "status.txt"), ("/proc/self/smaps_rollup", "smaps_rollup.txt")):
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, dst))
    tmp = os.path.join(out_dir, "report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, os.path.join(out_dir, "report.json"))


def protocol_parser(warmup=5, iterations=20):
    """The runner protocol's command line (benchmarks/devices/base.py), shared by
    the Python runners; a runner adds its own options to it."""
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--iterations", type=int, default=iterations)
    p.add_argument("--min-duration-ms", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-input")
    p.add_argument("--eval-count", type=int, default=0)
    return p


def measure(infer, shape, a):
    """Time ``infer`` (one input array -> one output array) the protocol's way:
    first inference, warm-up, timed runs into times.txt (flushed per run: a
    crash later must not lose what was measured), then the eval samples into
    eval_outputs.bin. Returns (first output, first inference ms)."""
    import numpy as np

    n = int(np.prod(shape))
    # a fixed input, independent of any data: the same bytes on every device
    x = ((np.arange(n, dtype=np.uint64) * 2654435761 % 1000).astype(np.float32) / 1000.0 - 0.5).reshape(shape)
    t0 = time.perf_counter()
    out = infer(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(a.warmup):
        infer(x)
    with open(os.path.join(a.out_dir, "times.txt"), "w") as tf:
        start, i = time.perf_counter(), 0
        while i < a.iterations or (time.perf_counter() - start) * 1e3 < a.min_duration_ms:
            t0 = time.perf_counter()
            infer(x)
            tf.write("t %.6f\n" % ((time.perf_counter() - t0) * 1e3))
            tf.flush()
            i += 1
    if a.eval_input and a.eval_count > 0:
        data = np.fromfile(a.eval_input, dtype="<f4").reshape([a.eval_count] + list(shape[1:]))
        with open(os.path.join(a.out_dir, "eval_outputs.bin"), "wb") as f:
            for k in range(a.eval_count):
                f.write(np.ascontiguousarray(infer(data[k:k + 1]), dtype="<f4").tobytes())
    return out, first_ms


def main(argv=None):
    a = protocol_parser().parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    t0 = time.perf_counter()
    sess = cpu_session(a.model, a.threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    out, first_ms = measure(lambda v: sess.run(None, {inp.name: v})[0], shape, a)
    finish(a.out_dir, {"runtime": "onnxruntime", "runtime_version": ort.__version__, "load_ms": load_ms,
                       "first_inference_ms": first_ms, "output_shape": list(np.shape(out)),
                       "eval_count": a.eval_count, "threads": a.threads,
                       "notes": ["memory includes the Python interpreter that hosts ONNX Runtime"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
