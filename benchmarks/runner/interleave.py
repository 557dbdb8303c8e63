"""Time several artifacts of one runtime side by side in one process, interleaved.

Why: on a shared host the speed of one runner process is bimodal (measured: a
DINOv2-S .onnx at 1 thread runs either ~20.5 or ~24.5 ms for seconds at a time),
so p50s from separate processes compare host states as much as models. Here
every model runs a short block of inferences in turn, round after round (the
order reversed every other round): a state change hits all models alike, and
the per-round ratio of two models is what a comparison should use.

Standalone (numpy + the runtime, no pocketsize import), like the other runners.

    python3 interleave.py --runtime onnx|executorch --threads 1 --shape 1,3,112,112
        --rounds 40 --block 5 --warmup 3 MODEL [MODEL ...]

Prints one JSON object: {"times_ms": [[per-round median ms] per model], ...}.
"""

import argparse
import json
import statistics
import time


def onnx_infer(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def executorch_infer(path, threads):
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's pool: the thread count the p50 is for
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(x)])[0]


LOADERS = {"onnx": onnx_infer, "executorch": executorch_infer}


def interleaved(infers, x, rounds, block, warmup):
    """Per model, the median ms of ``block`` inferences in each of ``rounds`` rounds."""
    for f in infers:
        for _ in range(warmup):
            f(x)
    times = [[] for _ in infers]
    order = list(range(len(infers)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            run = []
            for _ in range(block):
                t0 = time.perf_counter()
                infers[i](x)
                run.append((time.perf_counter() - t0) * 1e3)
            times[i].append(statistics.median(run))
    return times


def main(argv=None):
    import numpy as np

    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--runtime", choices=sorted(LOADERS), required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shape", required=True, help="input shape, comma-separated")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args(argv)
    shape = [int(s) for s in a.shape.split(",")]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    infers = [LOADERS[a.runtime](m, a.threads) for m in a.models]
    times = interleaved(infers, x, a.rounds, a.block, a.warmup)
    print(json.dumps({"runtime": a.runtime, "threads": a.threads, "rounds": a.rounds, "block": a.block,
                      "models": a.models, "times_ms": times}))


if __name__ == "__main__":
    main()
