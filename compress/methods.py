"""Pruning methods: a registry of planners.

Every method answers the same question for one pruning step: given the
current model and a parameter target, which blocks, heads and MLP channels to
keep. They differ in (a) the importance of units inside a block and (b) how
the cut is spread across blocks. ``hei`` is ours; the rest are the baselines
of docs/method.md, run through the same pipeline so comparisons are fair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from pocketsize.errors import BadInput

from .allocate import Budget, solve
from .plan import Plan


@dataclass
class StepContext:
    loaded: Any                      # compress.loading.Loaded
    calib_x: torch.Tensor            # randomly sampled user inputs (normalized)
    calib_y: torch.Tensor | None
    generic_x: torch.Tensor | None   # optional generic reference data
    cfg: Any                         # PruneConfig
    seed: int
    original_blocks: list[int] | None = None  # original index of each current block (lineage)
    # how much a candidate plan harms the validation metric once cut (and its head re-fit);
    # lower is better. Set by the step loop; planners that choose between plans use it
    judge: Callable[[Plan], float] | None = None
    _cache: dict = field(default_factory=dict)

    def stats(self, which: str = "user"):
        from .calib import collect

        if which not in self._cache:
            x = self.calib_x if which == "user" else self.generic_x
            self._cache[which] = collect(self.loaded, x, self.cfg.measurements, self.cfg.calib_tokens, self.seed)
        return self._cache[which]


@dataclass
class StepPlan:
    plan: Plan
    layer_scores: list[dict[str, float]]   # per block: {"attn": s, "mlp": s}
    kinds: list[dict[str, str]]            # per block: {"attn": kind, "mlp": kind}
    info: dict[str, Any] = field(default_factory=dict)  # what the planner chose, for the step log


# --- importance of units inside a block ------------------------------------

def _magnitude(ctx: StepContext):
    ad, model = ctx.loaded.adapter, ctx.loaded.model
    out = []
    for blk in ad.blocks(model):
        s = ad.block_shape(blk)
        h = torch.zeros(s.heads)
        for lin in ad.head_in(blk):  # rows grouped [.., H, D] (fused qkv: [3, H, D])
            w = ad.head_weight_view(blk, lin, lin.weight.detach().cpu())
            h += w.pow(2).sum(dim=(0, 2, 3))
        wo = ad.head_out(blk).weight.detach().cpu()
        h += wo.reshape(wo.shape[0], s.heads, s.head_dim).pow(2).sum(dim=(0, 2))
        c = (sum(l.weight.detach().cpu().pow(2).sum(1) for l in ad.mlp_in(blk))
             + ad.mlp_out(blk).weight.detach().cpu().pow(2).sum(0))
        out.append((h.sqrt(), c.sqrt()))
    return out


def _random(ctx: StepContext):
    g = torch.Generator().manual_seed(ctx.seed + 17)
    ad = ctx.loaded.adapter
    return [(torch.rand(ad.block_shape(b).heads, generator=g), torch.rand(ad.block_shape(b).mlp_hidden, generator=g))
            for b in ad.blocks(ctx.loaded.model)]


def _activation(ctx: StepContext):
    return [(s.head_score, s.chan_score) for s in ctx.stats("user")]


def _taylor(ctx: StepContext):
    """torch-pruning's GroupTaylorImportance: first-order Taylor |w * dL/dw|
    summed over every layer that torch-pruning's DependencyGraph couples to a
    unit (q, k, v rows and output-projection columns of a head; fc1 rows and
    fc2 columns of an MLP channel), on the sampled user data."""
    import warnings

    import torch.nn.functional as F
    import torch_pruning as tp

    loaded = ctx.loaded
    ad, model = loaded.adapter, loaded.model
    if ctx.calib_y is None:
        raise BadInput("--method taylor needs labelled data")
    dev = next(model.parameters()).device
    x, y = ctx.calib_x.to(dev), ctx.calib_y.to(dev)
    model.eval()
    with warnings.catch_warnings():  # it notes that it will not prune cls/pos tokens: we never ask it to
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1],
                                                      forward_fn=lambda m, inp: ad.logits(m, inp))
    model.zero_grad(set_to_none=True)
    for s in range(0, x.shape[0], 16):
        F.cross_entropy(ad.logits(model, x[s:s + 16]), y[s:s + 16]).backward()
    importance = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)

    def scores(layer: torch.nn.Linear) -> torch.Tensor:
        group = graph.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=list(range(layer.out_features)))
        return importance(group).detach().cpu()

    out = []
    for blk in ad.blocks(model):
        s = ad.block_shape(blk)
        # the value projection (or fused qkv) out-channel group couples q, k, v and the output projection
        h = scores(ad.head_in(blk)[-1]).reshape(-1, s.heads, s.head_dim).sum(dim=(0, 2))
        out.append((h, scores(ad.mlp_in(blk)[0])))
    model.zero_grad(set_to_none=True)
    return out


# --- homomorphic entropy increase --------------------------------------------

def gaussian_entropy(y: torch.Tensor, eps: float = 1e-3) -> float:
    """0.5 logdet(cov + eps I) of measured features (T, m), up to constants."""
    y = y.double() - y.double().mean(0)
    cov = y.T @ y / max(y.shape[0] - 1, 1)
    return 0.5 * torch.logdet(cov + eps * torch.eye(cov.shape[0], dtype=cov.dtype)).item()


def conditional_entropy(y_out: torch.Tensor, y_in: torch.Tensor, eps: float = 1e-3) -> float:
    """Entropy increase of a unit: Gaussian entropy of its output state that the
    input state does not explain, H(out | in) = 0.5 logdet(S_oo - S_oi S_ii^-1 S_io).
    Both states are token-normalized and measured by the same Phi, so the score
    is scale-free and comparable across depth."""
    yo = y_out.double() - y_out.double().mean(0)
    yi = y_in.double() - y_in.double().mean(0)
    n = max(yo.shape[0] - 1, 1)
    I = torch.eye(yo.shape[1], dtype=yo.dtype)
    s_oo, s_ii, s_oi = yo.T @ yo / n, yi.T @ yi / n + eps * I, yo.T @ yi / n
    cond = s_oo - s_oi @ torch.linalg.solve(s_ii, s_oi.T)
    return 0.5 * torch.logdet(cond + eps * I).item()


def hei_scores(stats) -> list[dict[str, float]]:
    return [{"attn": conditional_entropy(s.mid, s.x_in), "mlp": conditional_entropy(s.x_out, s.mid)} for s in stats]


@torch.no_grad()
def hei_loss_scores(ctx: StepContext, stats, keep_frac: float) -> list[dict[str, float]]:
    """Entropy increase of the pruning error, per half-block: prune the block
    alone to ``keep_frac`` (by activation importance), measure the error it
    injects into the residual stream through the same Phi, and compare its
    Gaussian entropy with the stream's: H(Phi e) - H(Phi x). High = the user's
    data needs this unit (personalized); low = redundant for this user (common)."""
    ad = ctx.loaded.adapter
    out = []
    for blk, st in zip(ad.blocks(ctx.loaded.model), stats):
        shape = ad.block_shape(blk)
        g_attn, g_mlp = ad.layer_scales(blk)
        wo = ad.head_out(blk).weight.detach().cpu()  # the sampled statistics live on the CPU
        d = wo.shape[0]
        drop_h, drop_c = _drop_sets(shape, st, keep_frac)
        e_attn = torch.einsum("thd,ehd->te", st.head_act[:, drop_h],
                              wo.reshape(d, shape.heads, shape.head_dim)[:, drop_h])
        w2 = ad.mlp_out(blk).weight.detach().cpu()
        e_mlp = st.mlp_act[:, drop_c] @ w2[:, drop_c].T
        if g_attn is not None:
            e_attn = e_attn * g_attn.detach().cpu()
            e_mlp = e_mlp * g_mlp.detach().cpu()
        out.append({"attn": gaussian_entropy(e_attn @ st.phi.T) - gaussian_entropy(st.mid_raw),
                    "mlp": gaussian_entropy(e_mlp @ st.phi.T) - gaussian_entropy(st.out_raw)})
    return out


def _drop_sets(shape, st, keep_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads and channels a block alone would lose at ``keep_frac`` (lowest activation importance)."""
    n_h = shape.heads - max(1, round(shape.heads * keep_frac))
    n_c = shape.mlp_hidden - max(1, round(shape.mlp_hidden * keep_frac))
    return torch.argsort(st.head_score)[:n_h], torch.argsort(st.chan_score)[:n_c]


@torch.no_grad()
def hei_pred_scores(ctx: StepContext, stats, keep_frac: float, x: torch.Tensor) -> list[dict[str, float]]:
    """Predictive entropy increase, per half-block: prune the half-block alone to
    ``keep_frac`` (masking the inputs of its output projection) and measure how
    much the cross-entropy of the model's own class distribution on the sampled
    user inputs grows, H(p, p_pruned) - H(p) = KL(p || p_pruned), in log scale.
    One output space (the user's classes) for every unit: the homomorphic reading
    at the level the user cares about."""
    import torch.nn.functional as F

    from pocketsize.models.base import head_index

    ad, model = ctx.loaded.adapter, ctx.loaded.model
    dev = next(model.parameters()).device
    x = x.to(dev)
    model.eval()
    ref = F.log_softmax(ad.logits(model, x).float(), -1)

    def kl_with_mask(mod: torch.nn.Module, drop: torch.Tensor, width: int) -> float:
        mask = torch.ones(width, device=dev)
        mask[drop.to(dev)] = 0.0
        hook = mod.register_forward_pre_hook(lambda m, a: (a[0] * mask, *a[1:]))
        try:
            lp = F.log_softmax(ad.logits(model, x).float(), -1)
        finally:
            hook.remove()
        return math.log(F.kl_div(lp, ref, log_target=True, reduction="batchmean").item() + 1e-6)

    out = []
    for blk, st in zip(ad.blocks(model), stats):
        shape = ad.block_shape(blk)
        drop_h, drop_c = _drop_sets(shape, st, keep_frac)
        out.append({"attn": kl_with_mask(ad.head_out(blk), head_index(drop_h.tolist(), shape.head_dim),
                                         shape.heads * shape.head_dim),
                    "mlp": kl_with_mask(ad.mlp_out(blk), drop_c, shape.mlp_hidden)})
    return out


def _zscores(v: list[float]) -> list[float]:
    t = torch.tensor(v, dtype=torch.float64)
    sd = t.std().item() if len(v) > 1 else 0.0
    return [0.0 if sd < 1e-12 else (x - t.mean().item()) / sd for x in v]


# --- planners ------------------------------------------------------------------

def _uniform(ctx: StepContext) -> bool:
    """Uniform-width mode (PruneConfig.uniform): every kept block gets
    the same widths, so an LLM's stock config describes the result."""
    return ctx.cfg.uniform


def _select(scores: torch.Tensor, n: int) -> list[int]:
    return sorted(torch.argsort(scores, descending=True, stable=True)[:n].tolist())


def _plan_from_counts(unit_scores, counts, removed=()) -> Plan:
    keep = [i for i in range(len(counts)) if i not in removed]
    return Plan(keep, {i: _select(unit_scores[i][0], counts[i][0]) for i in keep},
                {i: _select(unit_scores[i][1], counts[i][1]) for i in keep})


def _kinds_from(scores: list[dict[str, float]]) -> list[dict[str, str]]:
    """Personalized = above the median score of its unit type (2-way split)."""
    out = [{} for _ in scores]
    for key in ("attn", "mlp"):
        vals = sorted(s[key] for s in scores)
        med = vals[len(vals) // 2] if vals else 0.0
        for o, s in zip(out, scores):
            o[key] = "personalized" if s[key] >= med else "common"
    return out


def _budget(ctx: StepContext) -> Budget:
    """The current model's budget; targets are predicted ms under --target-latency, else parameters."""
    return Budget.of(ctx.loaded, ctx.cfg.latency if ctx.cfg.target_latency_ms is not None else None)


def uniform_planner(importance: Callable) -> Callable:
    def plan(ctx: StepContext, target: float) -> StepPlan:
        unit = importance(ctx)
        budget = _budget(ctx)
        n = len(budget.heads)
        counts = solve(budget, target, [1.0] * n, min_heads=ctx.cfg.min_heads,
                       channel_multiple=ctx.cfg.channel_multiple, uniform=_uniform(ctx))
        scores = [{"attn": float(u[0].mean()), "mlp": float(u[1].mean())} for u in unit]
        return StepPlan(_plan_from_counts(unit, counts), scores, _kinds_from(scores))
    return plan


def plan_hei(ctx: StepContext, target: float) -> StepPlan:
    """Personalized layered pruning: entropy-increase scores split blocks into
    personalized and common, common blocks take most of the cut; inside a
    block, activation importance picks the units."""
    stats = ctx.stats("user")
    variant = ctx.cfg.hei.score
    budget = _budget(ctx)
    frac = min(1.0, target / budget.full)
    score_fns = {"loss": lambda st, x: hei_loss_scores(ctx, st, frac), "cond": lambda st, x: hei_scores(st),
                 "pred": lambda st, x: hei_pred_scores(ctx, st, frac, x)}
    if variant not in score_fns:
        raise BadInput(f"--hei-score {variant!r} is not one of {', '.join(score_fns)}")
    score_fn = score_fns[variant]
    scores = score_fn(stats, ctx.calib_x)
    if ctx.generic_x is not None:  # contrast: what the unit adds for this user beyond generic data
        gen = score_fn(ctx.stats("generic"), ctx.generic_x)
        scores = [{k: s[k] - g[k] for k in s} for s, g in zip(scores, gen)]
    za, zm = _zscores([s["attn"] for s in scores]), _zscores([s["mlp"] for s in scores])
    unit = [(s.head_score, s.chan_score) for s in stats]

    def plan_at(beta: float) -> StepPlan:
        head_w = [math.exp(beta * z) for z in za]
        chan_w = [math.exp(beta * z) for z in zm]
        counts = solve(budget, target, chan_w, head_weights=head_w, min_heads=ctx.cfg.min_heads,
                       channel_multiple=ctx.cfg.channel_multiple, uniform=_uniform(ctx))
        return StepPlan(_plan_from_counts(unit, counts), scores, _kinds_from(scores), {"beta": beta})

    opts = ctx.cfg.hei
    if not opts.auto:
        return plan_at(opts.beta)
    if ctx.judge is None or len(opts.betas) == 1:  # nothing to judge with: the first strength
        return plan_at(opts.betas[0])
    return _choose(ctx, [plan_at(b) for b in opts.betas])


def _choose(ctx: StepContext, candidates: list[StepPlan]) -> StepPlan:
    """The candidate whose cut harms this user's validation split least; ties
    go to the earlier one (so a strength is dropped only when it measurably costs)."""
    harms = [ctx.judge(c.plan) for c in candidates]
    best = min(range(len(candidates)), key=lambda i: (harms[i], i))
    chosen = candidates[best]
    chosen.info = {**chosen.info, "auto": {"tried": [c.info.get("beta") for c in candidates],
                                           "validation_harm": [round(h, 6) for h in harms]}}
    return chosen


def plan_block_influence(ctx: StepContext, target: float) -> StepPlan:
    """ShortGPT: drop the blocks whose output is most similar to their input
    (block influence BI = 1 - cos); blocks alone cannot hit an arbitrary ratio,
    so the remainder is cut uniformly by activation importance."""
    stats = ctx.stats("user")
    bi = [1.0 - s.cos_in_out for s in stats]
    budget = _budget(ctx)
    n = len(bi)
    removed: list[int] = []
    for i in sorted(range(n), key=lambda i: bi[i]):
        if len(removed) + 1 >= n:
            break
        if budget.cost([(budget.heads[l], budget.chans[l]) for l in range(n)], removed + [i]) < target:
            break
        removed.append(i)
    counts = solve(budget, target, [1.0] * n, removed=removed, min_heads=ctx.cfg.min_heads,
                   channel_multiple=ctx.cfg.channel_multiple, uniform=_uniform(ctx))
    unit = [(s.head_score, s.chan_score) for s in stats]
    scores = [{"attn": b, "mlp": b} for b in bi]
    return StepPlan(_plan_from_counts(unit, counts, removed), scores, _kinds_from(scores))


def plan_allocation(ctx: StepContext, target: float) -> StepPlan:
    """``--plan``: a recorded allocation (another run's widths per block), with
    this user's activation importance choosing the units inside each block."""
    from .transplant import Allocation

    alloc = Allocation.from_dict(ctx.cfg.allocation)
    budget = _budget(ctx)
    original = ctx.original_blocks if ctx.original_blocks is not None else list(range(len(budget.heads)))
    chan_w, head_w, removed = alloc.weights_for(budget, original)
    counts = solve(budget, target, chan_w, head_weights=head_w, removed=removed, min_heads=ctx.cfg.min_heads,
                   channel_multiple=ctx.cfg.channel_multiple)
    unit = [(s.head_score, s.chan_score) for s in ctx.stats("user")]
    # the score of a unit is its recorded kept fraction: the plan, not this user, set the allocation
    scores = [{"attn": alloc.heads[b][0] / alloc.heads[b][1], "mlp": alloc.channels[b][0] / alloc.channels[b][1]}
              for b in original]
    return StepPlan(_plan_from_counts(unit, counts, removed), scores, _kinds_from(scores))


def planner_for(cfg: Any) -> Callable[[StepContext, float], StepPlan]:
    """The planner a config asks for: a recorded allocation (``--plan``) wins over ``--method``."""
    return plan_allocation if getattr(cfg, "allocation", None) else get_method(cfg.method)


METHODS: dict[str, Callable[[StepContext, float], StepPlan]] = {
    "hei": plan_hei,
    "magnitude": uniform_planner(_magnitude),
    "random": uniform_planner(_random),
    "taylor": uniform_planner(_taylor),
    "activation": uniform_planner(_activation),
    "block-influence": plan_block_influence,
}


def get_method(name: str) -> Callable[[StepContext, float], StepPlan]:
    if name not in METHODS:
        raise BadInput(f"unknown --method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]
