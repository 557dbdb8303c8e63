"""Compare 4-bit ONNX variants of a causal LM against its fp32 .onnx on the same inputs.

    python scripts/int4_onnx_variants.py --fp32 FP32DIR/model.onnx --tokenizer FP32DIR/tokenizer \
        --text /usr/share/games/fortunes/computers --chunks 24 --work /tmp/int4exp --variants minmax-g32-h8,...

For each variant (names in VARIANTS): the file size, perplexity on ``--chunks``
chunks of 128 tokens spread evenly over ``--text`` (pocketsize.text.load_general_text:
no seed, the same chunks for every variant), logit SNR and argmax agreement
against the fp32 .onnx on those chunks, and the parity check's measure (16
greedy steps from the export's fixed prompt, the variant fed fp32's tokens:
SNR and the share of steps choosing fp32's token), optionally decode tokens/s
at one thread. One JSON row per variant is appended to WORK/rows.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    # body scheme, group, lm_head bits (None: ORT's MatMulNBitsQuantizer on every MatMul), embedding, accuracy level
    "ort-sym-g32": {"ort": "rtn", "sym": True, "group": 32},          # what shipped first
    "ort-asym-g32": {"ort": "rtn", "sym": False, "group": 32},
    "ort-sym-g32-acc4": {"ort": "rtn", "sym": True, "group": 32, "acc": 4},
    "ort-hqq-g32": {"ort": "hqq", "group": 32},
    "sym-g32-h4": {"scheme": "symmetric", "group": 32, "head": 4, "emb": False},
    "sym-g32-h8": {"scheme": "symmetric", "group": 32, "head": 8, "emb": False},
    "asym-g32-h8": {"scheme": "asymmetric", "group": 32, "head": 8, "emb": False},
    "minmax-g32-h4": {"scheme": "minmax", "group": 32, "head": 4, "emb": False},
    "minmax-g32-h8": {"scheme": "minmax", "group": 32, "head": 8, "emb": False},
    "minmax-g64-h8-emb": {"scheme": "minmax", "group": 64, "head": 8, "emb": True},
    "minmax-g128-h8-emb": {"scheme": "minmax", "group": 128, "head": 8, "emb": True},
    "minmax-g32-h8-emb": {"scheme": "minmax", "group": 32, "head": 8, "emb": True},
    "minmax-g32-h4-emb": {"scheme": "minmax", "group": 32, "head": 4, "emb": True},
    "minmax-g32-h8-emb-acc4": {"scheme": "minmax", "group": 32, "head": 8, "emb": True, "acc": 4},
    "sym-g32-h8-emb": {"scheme": "symmetric", "group": 32, "head": 8, "emb": True},
    "asym-g32-h8-emb": {"scheme": "asymmetric", "group": 32, "head": 8, "emb": True},
    "minmax-g32-h4-emb-acc4": {"scheme": "minmax", "group": 32, "head": 4, "emb": True, "acc": 4},
    "sym-g32-h4-emb": {"scheme": "symmetric", "group": 32, "head": 4, "emb": True},
}


def quantize(pre: Path, dest: Path, v: dict) -> None:
    import logging

    import onnx

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    if "ort" in v:
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

        algo = HQQWeightOnlyQuantConfig(block_size=v["group"], bits=4) if v["ort"] == "hqq" else None
        q = MatMulNBitsQuantizer(onnx.load(str(pre)), bits=4, block_size=v["group"], is_symmetric=v.get("sym", False),
                                 accuracy_level=v.get("acc"), op_types_to_quantize=("MatMul",), algo_config=algo)
        q.process()
        q.model.save_model_to_file(str(dest), False)
        return
    from pocketsize.export.int4_onnx import Int4Settings, quantize_model

    model = onnx.load(str(pre))
    s = Int4Settings(group_size=v["group"], scheme=v["scheme"], head_bits=v["head"], embedding=v["emb"],
                     accuracy_level=v.get("acc", 0))
    print(quantize_model(model, s), flush=True)
    onnx.save(model, str(dest))


class Runner:
    def __init__(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()[2:]]
        self.zero = {i.name: np.zeros([int(d) for d in i.shape], np.float32) for i in self.sess.get_inputs()[2:]}
        self.reset()

    def reset(self) -> None:
        self.state = dict(self.zero)

    def step(self, ids: list[int], start: int) -> np.ndarray:
        out = self.sess.run(None, {"input_ids": np.array([ids], np.int64),
                                   "cache_position": np.arange(start, start + len(ids), dtype=np.int64),
                                   **self.state})
        self.state.update(zip(self.names, out[1:]))
        return out[0][0]


def parity_rows(r: Runner, prompt: list[int], tokens: list[int]) -> np.ndarray:
    r.reset()
    rows = [r.step(prompt, 0)]
    for i, t in enumerate(tokens[:-1]):
        rows.append(r.step([t], len(prompt) + i))
    return np.concatenate(rows)


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-30)))


def nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    x = logits[:-1].astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(-1)))
    return lse - x[np.arange(len(ids) - 1), ids[1:]]


def decode_tps(r: Runner, prompt: list[int], n: int) -> float:
    r.reset()
    r.step(prompt, 0)
    t0 = time.perf_counter()
    for i in range(n):
        r.step([1], len(prompt) + i)
    return n / (time.perf_counter() - t0)


def reference(args, chunks: np.ndarray, prompt: list[int]) -> dict:
    work = Path(args.work)
    ref_path = work / "ref.npz"
    if ref_path.exists():
        z = np.load(ref_path)
        return {k: z[k] for k in z.files}
    r = Runner(Path(args.fp32))
    r.reset()
    rows = [r.step(prompt, 0)]
    tokens = [int(rows[0][-1].argmax())]
    for i in range(args.new_tokens - 1):
        rows.append(r.step([tokens[-1]], len(prompt) + i))
        tokens.append(int(rows[-1][-1].argmax()))
    logits = []
    for c in chunks:
        r.reset()
        logits.append(r.step(c.tolist(), 0).astype(np.float16))
    out = {"tokens": np.array(tokens), "parity": np.concatenate(rows), "chunks": np.stack(logits)}
    np.savez(ref_path, **out)
    return out


def speed(args, names: list[str], pre: Path, prompt: list[int], rows_out: Path) -> None:
    """Decode tokens/s at one thread: every variant's session open at once, timed in turn for
    ``--rounds`` rounds (load on the shared cores drifts; interleaving spreads it), median per variant."""
    runners = {}
    for name in names:
        path = Path(args.fp32) if name == "fp32" else Path(args.work) / f"{name}.onnx"
        if not path.exists():
            quantize(pre, path, VARIANTS[name])
        runners[name] = (path, Runner(path))
    got: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name, (_, r) in runners.items():
            got[name].append(decode_tps(r, prompt, args.decode))
    for name, (path, _) in runners.items():
        row = {"variant": name, "mb": round(path.stat().st_size / 1e6, 1), "decode_steps": args.decode,
               "prompt_tokens": len(prompt), "rounds": [round(x, 2) for x in got[name]],
               "decode_tok_s_1thread_median": round(float(np.median(got[name])), 2)}
        print(json.dumps(row), flush=True)
        with rows_out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--chunks", type=int, default=24)
    ap.add_argument("--work", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--decode", type=int, default=0, help="decode steps to time (0: no timing)")
    ap.add_argument("--keep", action="store_true", help="keep the variant .onnx files")
    ap.add_argument("--speed-only", action="store_true", help="only the size and decode tokens/s (--decode steps)")
    ap.add_argument("--rounds", type=int, default=3, help="--speed-only: timing rounds per variant")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pocketsize.export.config import ExportConfig
    from pocketsize.text import load_general_text, load_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.tokenizer)
    chunks = load_general_text(args.text, tok, 128, max_chunks=args.chunks).ids.numpy()
    cfg = ExportConfig()
    prompt = tok(cfg.lm_prompt, add_special_tokens=False)["input_ids"][: int(cfg.lm_prompt_tokens)]
    ref = reference(args, chunks, prompt)
    pre = work / "pre.onnx"
    if not pre.exists():
        quant_pre_process(args.fp32, str(pre))
    rows_out = work / "rows.jsonl"
    names = args.variants.split(",")
    if args.speed_only:
        return speed(args, names, pre, chunks[0][:64].tolist(), rows_out)
    for name in names:
        if name == "fp32":
            path, v = Path(args.fp32), {}
        else:
            v = VARIANTS[name]
            path = work / f"{name}.onnx"
            t0 = time.perf_counter()
            if not path.exists():
                quantize(pre, path, v)
            qsec = time.perf_counter() - t0
        r = Runner(path)
        tokens = [int(t) for t in ref["tokens"]]
        par = parity_rows(r, prompt, tokens)
        p = len(prompt)
        agree = float(np.mean(par[p - 1:].argmax(-1) == np.array(tokens)))
        total, count, snrs, top1 = 0.0, 0, [], []
        for c, lref in zip(chunks, ref["chunks"]):
            r.reset()
            lo = r.step(c.tolist(), 0)
            n = nll(lo, c)
            total += float(n.sum())
            count += n.size
            snrs.append(snr_db(lref.astype(np.float32), lo))
            top1.append(float(np.mean(lo.argmax(-1) == lref.astype(np.float32).argmax(-1))))
        row = {"variant": name, "settings": v, "mb": round(path.stat().st_size / 1e6, 1),
               "perplexity": round(math.exp(total / count), 3), "chunks": len(chunks),
               "chunk_snr_db": round(float(np.mean(snrs)), 2), "chunk_top1": round(float(np.mean(top1)), 4),
               "parity_snr_db": round(snr_db(ref["parity"], par), 2), "parity_greedy_agreement": agree}
        if args.decode:
            row["decode_tok_s_1thread"] = round(decode_tps(r, chunks[0][:64].tolist(), args.decode), 2)
        if name != "fp32":
            row["quantize_s"] = round(qsec, 1)
        print(json.dumps(row), flush=True)
        with rows_out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        del r
        if name != "fp32" and not args.keep:
            path.unlink()


if __name__ == "__main__":
    main()
