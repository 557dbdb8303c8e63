"""Random-sampling calibration: one pass over a random subsample of the user's
data, keeping a random subsample of tokens, through hooks on each block.

Everything the methods need comes from this pass (no full pass over the
data): per-head and per-channel activation importance, and compressed random
measurements Phi @ h of the residual stream and each branch's contribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pocketsize.loading import Loaded


@dataclass
class BlockStats:
    head_score: torch.Tensor          # (H,) mean norm of each head's contribution to the residual
    chan_score: torch.Tensor          # (M,) mean |activation| x ||fc2 column||
    x_in: torch.Tensor                # (T, m) measurements of the block input
    attn: torch.Tensor                # (T, m) measurements of the attention branch output
    mid: torch.Tensor                 # (T, m) after the attention residual add
    mlp: torch.Tensor                 # (T, m) measurements of the MLP branch output
    x_out: torch.Tensor               # (T, m) block output
    head_act: torch.Tensor | None = None   # (T, H, D) sampled inputs of the output projection
    mlp_act: torch.Tensor | None = None    # (T, M) sampled MLP hidden activations
    mid_raw: torch.Tensor | None = None    # (T, m) un-normalized measurements (for error ratios)
    out_raw: torch.Tensor | None = None
    phi: torch.Tensor | None = None
    cos_in_out: float = 0.0           # mean cosine(x_in, x_out) over sampled tokens (ShortGPT's BI = 1 - this)
    raw_norms: dict = field(default_factory=dict)


def measurement_matrix(d: int, m: int, seed: int) -> torch.Tensor:
    """Fixed Gaussian measurement matrix (m x d), rows scaled by 1/sqrt(m).
    The same Phi measures every state of every block, so states are comparable
    (the 'homomorphic' reading: one measurement space for all)."""
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.randn(m, d, generator=g) / m ** 0.5


def _norm_tokens(h: torch.Tensor) -> torch.Tensor:
    """Center and scale each token (LayerNorm without affine): removes the
    growth of the residual norm with depth, which otherwise dominates entropy."""
    h = h - h.mean(-1, keepdim=True)
    return h / (h.norm(dim=-1, keepdim=True) / h.shape[-1] ** 0.5 + 1e-6)


@torch.no_grad()
def collect(loaded: Loaded, x: torch.Tensor, measurements: int, tokens: int, seed: int,
            batch_size: int = 16) -> list[BlockStats]:
    """Run ``x`` (already sampled, normalized) through the model with hooks.
    The forward passes run where the model lives; the statistics come back on
    the CPU (they are small: tokens x measurements, tokens x units)."""
    model, ad = loaded.model, loaded.adapter
    dev = next(model.parameters()).device
    blocks = ad.blocks(model)
    g = torch.Generator().manual_seed(seed)
    acc: list[dict] = [dict(head=0.0, chan=0.0, x_in=[], attn=[], mlp=[], x_out=[], cos=[], hact=[], mact=[])
                       for _ in blocks]
    state: dict = {}
    hooks = []

    def pick(h: torch.Tensor) -> torch.Tensor:  # (B, N, d) -> (B*T, d) at the sampled token positions
        rows = torch.arange(h.shape[0], device=h.device)[:, None]
        return h[rows, state["tok"].to(h.device)].reshape(-1, h.shape[-1]).float()

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    for i, blk in enumerate(blocks):
        H, D = ad.block_shape(blk).heads, ad.block_shape(blk).head_dim
        wo = ad.head_out(blk).weight  # (d, H*D)
        w2n = ad.mlp_out(blk).weight.norm(dim=0)  # (M,)

        def on_block_in(mod, args, kwargs, i=i):
            h = args[0] if args else kwargs.get("hidden_states")
            if "tok" not in state or state["tok"].shape[0] != h.shape[0]:
                n = h.shape[1]
                state["tok"] = torch.stack([torch.randperm(n, generator=g)[: min(tokens, n)] for _ in range(h.shape[0])])
            acc[i]["_in"] = pick(h)

        def on_block_out(mod, args, out, i=i):
            h = pick(first(out))
            acc[i]["_out"] = h
            acc[i]["cos"].append(torch.nn.functional.cosine_similarity(acc[i]["_in"], h, dim=-1).mean().item())

        def on_head_in(mod, args, i=i, H=H, D=D, wo=wo):
            a = pick(args[0]).reshape(-1, H, D)  # (T, H, D)
            # exact per-head contribution to the residual: W_o[:, h] a_h
            contrib = torch.einsum("thd,ehd->the", a, wo.reshape(wo.shape[0], H, D))
            acc[i]["head"] = acc[i]["head"] + contrib.norm(dim=-1).sum(0)
            acc[i]["hact"].append(a.cpu())

        def on_mlp_in(mod, args, i=i, w2n=w2n):
            a = pick(args[0])
            acc[i]["chan"] = acc[i]["chan"] + a.abs().sum(0) * w2n
            acc[i]["mact"].append(a.cpu())

        def on_branch(name):
            def f(mod, args, out, i=i):
                acc[i]["_" + name] = pick(first(out))
            return f

        hooks.append(blk.register_forward_pre_hook(on_block_in, with_kwargs=True))
        hooks.append(blk.register_forward_hook(on_block_out))
        hooks.append(ad.head_out(blk).register_forward_pre_hook(on_head_in))
        hooks.append(ad.mlp_out(blk).register_forward_pre_hook(on_mlp_in))
        attn_mod, mlp_mod = ad.branch_modules(blk)
        hooks.append(attn_mod.register_forward_hook(on_branch("attn")))
        hooks.append(mlp_mod.register_forward_hook(on_branch("mlp")))

    d = ad.head_out(blocks[0]).weight.shape[0]
    phi = measurement_matrix(d, measurements, seed)
    count = 0
    try:
        model.eval()
        for s in range(0, x.shape[0], batch_size):
            state.pop("tok", None)
            ad.logits(model, x[s:s + batch_size].to(dev))
            for a in acc:
                a["x_in"].append(a.pop("_in").cpu())
                a["attn"].append(a.pop("_attn").cpu())
                a["mlp"].append(a.pop("_mlp").cpu())
                a["x_out"].append(a.pop("_out").cpu())
            count += state["tok"].numel()
    finally:
        for h in hooks:
            h.remove()

    out = []
    for a in acc:
        x_in, attn, mlp, x_out = (torch.cat(a[k]) for k in ("x_in", "attn", "mlp", "x_out"))
        mid = x_in + attn
        meas = lambda h: _norm_tokens(h) @ phi.T  # noqa: E731
        out.append(BlockStats(
            head_score=(a["head"] / count).cpu(), chan_score=(a["chan"] / count).cpu(),
            x_in=meas(x_in), attn=attn @ phi.T, mid=meas(mid), mlp=mlp @ phi.T, x_out=meas(x_out),
            head_act=torch.cat(a["hact"]), mlp_act=torch.cat(a["mact"]),
            mid_raw=mid @ phi.T, out_raw=x_out @ phi.T, phi=phi,
            cos_in_out=sum(a["cos"]) / len(a["cos"]),
            raw_norms={"in": x_in.norm(dim=-1).mean().item(), "attn": attn.norm(dim=-1).mean().item(),
                       "mlp": mlp.norm(dim=-1).mean().item()},
        ))
    return out
