"""Causal-LM benchmark runner (ExecuTorch .pte or ONNX) speaking the runner protocol.

Standalone on purpose (numpy + executorch.runtime or onnxruntime, and its
sibling ort_runner.py; no pocketsize import). The artifacts are the KV-cached decoders of export.llm:
``(input_ids (1, T), cache_position (T,)) -> logits`` (.pte, cache in the
program) or with the cache as inputs/outputs (.onnx, fed back each step).

    python3 llm_runner.py MODEL --format executorch|onnx --out-dir DIR --warmup W
        --iterations N --min-duration-ms D --threads T --prompt-tokens P
        --decode-tokens G --vocab V [--eval-input FILE --eval-count K --eval-len L]

One *generation* = prefill P fixed tokens, then G greedy decode steps. The
first generation is cold (its prefill is ``first_inference_ms``), W more are
untimed, then N timed (and more until D ms have passed). ``times.txt`` gets
``p <ms>`` per prefill and ``t <ms>`` per decode step, as they happen; the
protocol's ``t`` lines are therefore per-token decode latencies. Evaluation:
FILE holds K chunks of L int64 token ids; each chunk is prefilled from
position 0 and its next-token NLL summed; ``eval_outputs.bin`` holds K rows
of float32 ``(nll_sum, predicted_tokens)``.
"""

import os
import time

# the sibling ONNX runner's session and closing files (this script runs from its folder, on this host)
from ort_runner import cpu_session, finish, protocol_parser


def _log_softmax_nll(logits, ids):
    """Sum of -log p(ids[1:]) under logits[:-1] (numpy, float64 for the sum)."""
    import numpy as np

    x = logits[:-1].astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=-1)))
    picked = x[np.arange(x.shape[0]), ids[1:]]
    return float((lse - picked).sum()), int(x.shape[0])


def _executorch(path, threads):
    import numpy as np
    import torch
    from executorch.runtime import Runtime

    try:  # the XNNPACK threadpool is process-wide; the wheel exposes this reset only here
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    except Exception:
        pass
    from importlib.metadata import version

    method = Runtime.get().load_program(path).load_method("forward")

    def step(ids, pos):
        out = method.execute([torch.from_numpy(ids), torch.from_numpy(pos)])[0]
        return out.detach().numpy()

    return step, "executorch", version("executorch"), np


def _onnx(path, threads):
    import numpy as np
    import onnxruntime as ort

    sess = cpu_session(path, threads)
    cache = sess.get_inputs()[2:]
    names = [i.name for i in cache]
    state = {i.name: np.zeros([int(d) for d in i.shape], dtype=np.float32) for i in cache}

    def step(ids, pos):
        out = sess.run(None, {"input_ids": ids, "cache_position": pos, **state})
        state.update(zip(names, out[1:]))
        return out[0]

    return step, "onnxruntime", ort.__version__, np


def _generation(step, np, prompt, decode, tf=None):
    """Prefill ``prompt`` then ``decode`` greedy steps; returns (prefill_ms, [step_ms])."""
    p = prompt.shape[1]
    t0 = time.perf_counter()
    logits = step(prompt, np.arange(p, dtype=np.int64))
    pre = (time.perf_counter() - t0) * 1e3
    if tf:
        tf.write("p %.6f\n" % pre)
    steps = []
    tok = int(logits[0, -1].argmax())
    for i in range(decode):
        t0 = time.perf_counter()
        logits = step(np.array([[tok]], dtype=np.int64), np.array([p + i], dtype=np.int64))
        tok = int(logits[0, -1].argmax())
        ms = (time.perf_counter() - t0) * 1e3
        steps.append(ms)
        if tf:
            tf.write("t %.6f\n" % ms)
            tf.flush()  # a crash later must not lose what was measured
    return pre, steps


def main(argv=None):
    p = protocol_parser(warmup=2, iterations=5)  # a generation costs far more than one forward
    p.add_argument("--format", required=True, choices=["executorch", "onnx"])
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--eval-len", type=int, default=0)
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    step, runtime, version, np = (_executorch if a.format == "executorch" else _onnx)(a.model, a.threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    # fixed, content-free prompt: timing does not depend on the tokens
    prompt = (np.arange(a.prompt_tokens, dtype=np.int64) * 2654435761 % a.vocab).reshape(1, -1)

    first_ms, _ = _generation(step, np, prompt, a.decode_tokens)
    for _ in range(a.warmup):
        _generation(step, np, prompt, a.decode_tokens)
    with open(os.path.join(a.out_dir, "times.txt"), "w") as tf:
        start = time.perf_counter()
        i = 0
        while i < a.iterations or (time.perf_counter() - start) * 1e3 < a.min_duration_ms:
            _generation(step, np, prompt, a.decode_tokens, tf)
            i += 1

    if a.eval_input and a.eval_count > 0:
        data = np.fromfile(a.eval_input, dtype="<i8").reshape(a.eval_count, a.eval_len)
        rows = []
        for k in range(a.eval_count):
            ids = data[k:k + 1]
            logits = step(ids, np.arange(a.eval_len, dtype=np.int64))[0]
            rows.append(_log_softmax_nll(logits, ids[0]))
        np.asarray(rows, dtype="<f4").tofile(os.path.join(a.out_dir, "eval_outputs.bin"))

    finish(a.out_dir, {"runtime": runtime, "runtime_version": version, "load_ms": load_ms, "first_inference_ms": first_ms,
              "output_shape": [1, a.prompt_tokens, a.vocab], "eval_count": a.eval_count, "threads": a.threads,
              "llm": {"prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens, "generations": i},
              "notes": [f"{runtime} Python runtime; memory includes the Python interpreter that hosts it",
                        "first_inference_ms is the cold prefill of the prompt"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
