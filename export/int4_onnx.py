"""4-bit blockwise weights for an ONNX causal LM (ONNX Runtime's MatMulNBits / GatherBlockQuantized).

Pure graph rewriting on an fp32 .onnx that went through quant_pre_process
(which folds the tied lm_head's Transpose into a second copy of the table):

- every MatMul with a constant 2-D weight whose K the block divides becomes a
  ``MatMulNBits`` (blocks of ``group_size`` along K);
- the lm_head, when it is the transpose of the embedding table (tied), is
  quantized once into a uint8 table of shape (V, K/group, blob) that both the
  lm_head's ``MatMulNBits`` and the embedding's ``GatherBlockQuantized`` read
  (one copy in the file, not two);
- an untied lm_head and embedding each get a table of their own, quantized
  the same way.

Schemes (one scale per block, dequantized = (q - zero_point) * scale):

- ``symmetric``: q in [0, 2^b), zero point 2^(b-1) implied; at 4 bits scale =
  the block's signed absolute maximum / -8 (ONNX Runtime's RTN rule), at 8
  bits its absolute maximum / 127 (llama.cpp's Q8_0 rule);
- ``asymmetric``: uint zero points, range widened to include 0 (ONNX Runtime's RTN);
- ``minmax``: scale = (max - min) / (2^b - 1) and a float zero point
  -min / scale: the block's min and max are exact. This is llama.cpp's Q4_1
  grid, so a block that already sits on such a grid (a GGUF Q4_1 checkpoint)
  is reproduced exactly. ONNX Runtime's CPU kernel is slow with float zero
  points (about 20x), so the MatMulNBits runs with the implied zero point 8
  and the difference, a per-block offset, is added by a small MatMul of the
  input's block sums (shared by the MatMuls that read the same input).

Float zero points are not accepted by GatherBlockQuantized, so the shared
table uses ``symmetric`` (its source in GGUF checkpoints is Q8_0, which an
8-bit symmetric block of 32 reproduces exactly).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMES = ("symmetric", "asymmetric", "minmax")
HEAD8_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class Int4Settings:
    """How the .onnx is quantized (recorded in the manifest's quantization record)."""

    group_size: int = 32
    scheme: str = "minmax"          # body MatMuls: one of SCHEMES
    head_bits: int = 8              # the lm_head (and the tied embedding table): 4 or 8
    embedding: bool = True          # the tied embedding Gather reads the quantized table
    # MatMulNBits' arithmetic: 4 quantizes activations to int8 per block inside the kernel (as the .pte's
    # 8da4w), 0 keeps them fp32. On SmolLM2-135M (x86 AVX2, 1 thread): 4 decodes 48 tokens/s vs 26 for both
    # 0 and fp32, at perplexity +0.5% vs +0.1% over fp32 (docs/int4.md)
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme {self.scheme!r}: use one of {', '.join(SCHEMES)}")
        if self.head_bits not in (4, 8):
            raise ValueError(f"head_bits {self.head_bits}: use 4 or 8")
        if self.accuracy_level not in (0, 4):
            raise ValueError(f"accuracy_level {self.accuracy_level}: use 0 (fp32 activations) or 4 (int8)")
        g = int(self.group_size)
        if g < 16 or g & (g - 1):
            raise ValueError(f"group_size {g}: use a power of two >= 16")

    def record(self) -> dict[str, Any]:
        return asdict(self)


def quantize_blocks(w: np.ndarray, block: int, bits: int, scheme: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``w`` (N, K) fp32 -> (q (N, K/block, block) uint8 in [0, 2^bits), scales (N, K/block),
    zero points (N, K/block) float32 or uint8, or None when implied (symmetric))."""
    n, k = w.shape
    x = w.reshape(n, k // block, block).astype(np.float32)
    top = float(2 ** bits - 1)
    if scheme == "symmetric":
        mid = 2 ** (bits - 1)
        if bits == 8:  # llama.cpp's Q8_0 rule: |q| <= 127 (a Q8_0 table comes back exactly)
            scale = np.abs(x).max(-1) / (mid - 1)
        else:  # ONNX Runtime's RTN rule: the signed extreme maps to -8, all 16 levels used
            idx = np.abs(x).argmax(-1)[..., None]
            scale = np.take_along_axis(x, idx, -1)[..., 0] / -mid
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.clip(np.rint(x * inv[..., None]) + mid, 0, top)
        return q.astype(np.uint8), scale.astype(np.float32), None
    lo, hi = x.min(-1), x.max(-1)
    if scheme == "asymmetric":
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    scale = (hi - lo) / top
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    if scheme == "asymmetric":
        zp = np.clip(np.rint(-lo * inv), 0, top)
        q = np.clip(np.rint(x * inv[..., None]) + zp[..., None], 0, top)
        return q.astype(np.uint8), scale.astype(np.float32), zp.astype(np.uint8)
    q = np.clip(np.rint((x - lo[..., None]) * inv[..., None]), 0, top)
    flat = scale == 0  # a constant block: q = 0, and (0 - (-1)) * value is the value
    zp = np.where(flat, -1.0, -lo * inv)
    scale = np.where(flat, lo, scale)
    return q.astype(np.uint8), scale.astype(np.float32), zp.astype(np.float32)


def dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, bits: int) -> np.ndarray:
    """The inverse of quantize_blocks (N, K): what the kernels compute from the stored blocks."""
    z = np.float32(2 ** (bits - 1)) if zp is None else zp.astype(np.float32)[..., None]
    out = (q.astype(np.float32) - z) * scale[..., None]
    return out.reshape(q.shape[0], -1)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """(..., block) values < 2^bits -> (..., block * bits / 8) uint8, low bits first."""
    if bits == 8:
        return q.astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """uint8 zero points (N, blocks) -> MatMulNBits' packed layout (N, ceil(blocks * bits / 8))."""
    if bits == 8:
        return zp.astype(np.uint8)
    if zp.shape[1] % 2:
        zp = np.pad(zp, ((0, 0), (0, 1)))
    return (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)


def quantize_model(model: Any, settings: Int4Settings) -> dict[str, Any]:
    """Rewrite ``model`` (onnx.ModelProto, after quant_pre_process) in place; returns what was done."""
    from onnx import helper

    graph = model.graph
    rw = _Rewriter(graph, settings)
    gather, head, tied = _embedding_and_head(graph, rw.inits)
    if head is not None and int(rw.inits[head.input[1]].dims[0]) % rw.g:
        gather, head, tied = None, None, False  # blocks must tile the hidden size; the MatMuls stay as they are
    head_table = rw.table(head.input[1], transposed=True) if head is not None else None
    emb_table = None
    if gather is not None and settings.embedding:
        emb_table = head_table if tied else rw.table(gather.input[0], transposed=False)
    nodes: list[Any] = []
    for node in graph.node:
        if node is head:
            nodes += rw.head(node, head_table)
        elif node is gather and emb_table is not None:
            nodes += rw.gather(node, emb_table, tied)
        else:
            nodes += rw.matmul(node)
    used = {x for n in nodes for x in n.input}
    keep = [i for i in graph.initializer if i.name not in rw.dropped or i.name in used]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(keep + rw.added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    log.debug("int4 onnx: %s", rw.counts)
    return rw.counts | {"lm_head_tied": tied}


class _Rewriter:
    """The node rewrites of quantize_model; ``added`` collects the new initializers."""

    def __init__(self, graph: Any, settings: Int4Settings) -> None:
        from onnx import helper, numpy_helper

        self.h, self.nh, self.s = helper, numpy_helper, settings
        self.g = int(settings.group_size)
        self.inits = {i.name: i for i in graph.initializer}
        self.added: list[Any] = []
        self.dropped: set[str] = set()
        self.block_sums: dict[str, str] = {}  # input name -> its (..., K / group) block sums (shared by q/k/v, ...)
        self.counts: dict[str, Any] = {"matmuls_quantized": 0, "matmuls_kept": 0, "lm_head_bits": None,
                                       "embedding": "fp32"}

    def init(self, array: np.ndarray, name: str) -> str:
        self.added.append(self.nh.from_array(array, name))
        return name

    def table(self, name: str, transposed: bool) -> dict[str, Any]:
        """A (V, H) table quantized at head_bits, symmetric: the lm_head's weight (transposed) or the embedding's."""
        w = self.nh.to_array(self.inits[name])
        w = np.ascontiguousarray(w.T) if transposed else w  # (V, H): rows are the lm_head's N
        bits = self.s.head_bits
        q, scale, _ = quantize_blocks(w, self.g, bits, "symmetric")
        self.dropped.add(name)
        self.counts["lm_head_bits"] = bits
        return {"q": self.init(pack(q, bits), f"{name}_Q{bits}"), "scale": scale, "shape": w.shape, "bits": bits}

    def head(self, node: Any, t: dict[str, Any]) -> list[Any]:
        self.dropped.add(node.input[1])
        self.counts["matmuls_quantized"] += 1
        v, h = t["shape"]
        # the CPU kernel's 8-bit path is fast only with int8 activations (accuracy_level 4); 4-bit is fast at any level
        level = HEAD8_ACCURACY_LEVEL if t["bits"] == 8 else self.s.accuracy_level
        sname = self.init(t["scale"], t["q"] + "_scales")
        return [_nbits(self.h, node, t["q"], sname, None, h, v, t["bits"], self.g, level)]

    def gather(self, node: Any, t: dict[str, Any], shared: bool) -> list[Any]:
        """GatherBlockQuantized over a (V, H/group, blob) table (the lm_head's when tied), reshaped to (..., H)."""
        v, h = t["shape"]
        g, prefix, out = self.g, node.name or t["q"], node.output[0]
        self.dropped.add(node.input[0])
        sname = self.init(t["scale"].reshape(v, h // g, 1), t["q"] + "_gather_scales")
        hidden = self.init(np.array([h], dtype=np.int64), prefix + "_hidden")
        self.counts["embedding"] = f"int{t['bits']} symmetric" + (", the lm_head's table" if shared else "")
        mk = self.h.make_node
        return [
            mk("GatherBlockQuantized", [t["q"], node.input[1], sname], [out + "_blocks"], name=prefix + "_Q",
               domain="com.microsoft", bits=t["bits"], block_size=g, gather_axis=0, quantize_axis=2),
            mk("Shape", [node.input[1]], [out + "_ids_shape"], name=prefix + "_shape"),
            mk("Concat", [out + "_ids_shape", hidden], [out + "_shape"], axis=0, name=prefix + "_concat"),
            mk("Reshape", [out + "_blocks", out + "_shape"], [out], name=prefix + "_reshape"),
        ]

    def matmul(self, node: Any) -> list[Any]:
        b = self.inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if b is None or len(b.dims) != 2 or b.dims[0] % self.g:
            if b is not None:
                self.counts["matmuls_kept"] += 1
            return [node]
        k, n = (int(d) for d in b.dims)
        q, scale, zp = quantize_blocks(self.nh.to_array(b).T, self.g, 4, self.s.scheme)
        qname = self.init(pack(q, 4), b.name + "_Q4")
        sname = self.init(scale, b.name + "_scales")
        self.dropped.add(b.name)
        self.counts["matmuls_quantized"] += 1
        if zp is None or zp.dtype == np.uint8:
            zname = None if zp is None else self.init(pack_zero_points(zp, 4), b.name + "_zero_points")
            return [_nbits(self.h, node, qname, sname, zname, k, n, 4, self.g, self.s.accuracy_level)]
        # float zero points: the CPU kernel has no fast path for them, so the block runs with the implied
        # zero point 8 and the rest, (8 - zp) * scale per block, is added as block sums of x times offsets
        offsets = ((8.0 - zp) * scale).T.astype(np.float16)  # (K / group, N)
        oname = self.init(offsets, b.name + "_offsets")
        out, mk = node.output[0], self.h.make_node
        return [
            _nbits(self.h, node, qname, sname, None, k, n, 4, self.g, self.s.accuracy_level, out + "_q"),
            *self.sums(node.input[0], k),
            mk("Cast", [oname], [oname + "_f32"], to=1, name=oname + "_cast"),
            mk("MatMul", [self.block_sums[node.input[0]], oname + "_f32"], [out + "_offset"], name=out + "_offset"),
            mk("Add", [out + "_q", out + "_offset"], [out], name=out + "_add"),
        ]

    def sums(self, x: str, k: int) -> list[Any]:
        """Block sums of ``x`` (..., K) over groups of ``group_size``: x @ S, S (K, K / group) of 0/1."""
        if x in self.block_sums:
            return []
        ones = np.kron(np.eye(k // self.g, dtype=np.float32), np.ones((self.g, 1), np.float32))
        sname = f"block_sums_{k}_{self.g}"
        if sname not in {i.name for i in self.added}:
            self.init(ones, sname)
        self.block_sums[x] = x + "_block_sums"
        return [self.h.make_node("MatMul", [x, sname], [self.block_sums[x]], name=x + "_block_sums")]


def _embedding_and_head(graph: Any, inits: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(embedding Gather, lm_head MatMul, tied): the MatMul whose constant weight is (H, V) for a
    constant (V, H) Gather table; tied when that weight is the table transposed. Nones when absent."""
    from onnx import numpy_helper

    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
               and len(inits[n.input[0]].dims) == 2]
    for gather in gathers:
        e = inits[gather.input[0]]
        v, h = (int(d) for d in e.dims)
        for node in graph.node:
            b = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
            if b is not None and tuple(int(d) for d in b.dims) == (h, v):
                same = np.array_equal(numpy_helper.to_array(b).T, numpy_helper.to_array(e))
                return gather, node, bool(same)
    return None, None, False


def _nbits(helper: Any, node: Any, qname: str, sname: str, zname: str | None, k: int, n: int, bits: int,
           block: int, accuracy_level: int, out: str | None = None) -> Any:
    inputs = [node.input[0], qname, sname] + ([zname] if zname else [])
    kwargs = {"K": k, "N": n, "bits": bits, "block_size": block}
    if accuracy_level:
        kwargs["accuracy_level"] = int(accuracy_level)
    return helper.make_node("MatMulNBits", inputs, [out or node.output[0]], name=(node.name or qname) + f"_Q{bits}",
                            domain="com.microsoft", **kwargs)
