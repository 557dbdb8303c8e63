"""Budget allocation: how many heads / channels each block keeps so that the
whole model lands on the target: a parameter count (``--ratio``) or, with a
latency model, a predicted p50 in milliseconds (``--target-latency``).

Each block l keeps a fraction k_l = clip(t * w_l, 0, 1) of its heads and
channels; w_l are the method's allocation weights (all 1 = uniform) and the
scalar t is found by bisection. Rounding leftovers are then filled with MLP
channels in multiples of ``channel_multiple`` so the total lands within a few
thousand parameters of the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pocketsize.latency import LatencyModel
from pocketsize.loading import Loaded
from .plan import count_params


@dataclass
class Budget:
    heads: list[int]          # per block: original head count
    chans: list[int]          # per block: original MLP width
    head_cost: list[float]
    chan_cost: list[float]
    block_cost: list[int]
    total: int
    latency: LatencyModel | None = None  # set: targets are predicted milliseconds, not parameters

    @classmethod
    def of(cls, loaded: Loaded, latency: dict | LatencyModel | None = None) -> "Budget":
        ad = loaded.adapter
        blocks = ad.blocks(loaded.model)
        shapes = [ad.block_shape(b) for b in blocks]
        costs = [ad.unit_costs(b) for b in blocks]
        if isinstance(latency, dict):
            latency = LatencyModel.from_dict(latency)
        return cls([s.heads for s in shapes], [s.mlp_hidden for s in shapes], [c[0] for c in costs],
                   [c[1] for c in costs], [count_params(b) for b in blocks], count_params(loaded.model), latency)

    def cost(self, counts: Sequence[tuple[int, int]], removed: Sequence[int] = ()) -> float:
        """What the target is counted in: predicted ms with a latency model, else parameters."""
        if self.latency is not None:
            return self.latency.predict(counts, removed)
        return self.params(counts, removed)

    @property
    def full(self) -> float:
        """The cost of the model as it is now (nothing cut)."""
        return self.cost(list(zip(self.heads, self.chans)))

    def params(self, counts: Sequence[tuple[int, int]], removed: Sequence[int] = ()) -> float:
        p = self.total - sum(self.block_cost[i] for i in removed)
        for l, (h, c) in enumerate(counts):
            if l in removed:
                continue
            p -= (self.heads[l] - h) * self.head_cost[l] + (self.chans[l] - c) * self.chan_cost[l]
        return p


def _round_to(x: float, m: int, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, m * round(x / m)))) if x < hi else hi


def solve(budget: Budget, target: float, weights: Sequence[float], removed: Sequence[int] = (),
          min_heads: int = 1, channel_multiple: int = 8,
          head_weights: Sequence[float] | None = None, uniform: bool = False) -> list[tuple[int, int]]:
    """Per-block (heads, channels) counts whose cost (``Budget.cost``: parameters
    or predicted ms) is as close to ``target`` as the granularity allows, never
    above it by more than one channel group.

    ``uniform``: ignore the weights and give every kept block the same widths
    (blocks of equal original shape stay equal), see ``_fill_uniform``."""
    n = len(budget.heads)
    if uniform:
        weights, head_weights = [1.0] * n, None
    hw = list(head_weights) if head_weights is not None else list(weights)
    cm = lambda l: min(channel_multiple, budget.chans[l])  # noqa: E731

    def counts(t: float) -> list[tuple[int, int]]:
        out = []
        for l in range(n):
            kh = min(1.0, max(0.0, t * hw[l]))
            kc = min(1.0, max(0.0, t * weights[l]))
            h = min(budget.heads[l], max(min_heads, round(budget.heads[l] * kh)))
            c = _round_to(budget.chans[l] * kc, cm(l), cm(l), budget.chans[l])
            out.append((h, c))
        return out

    lo, hi = 0.0, 1.0 / max(min(min(weights), min(hw)), 1e-6)
    for _ in range(60):
        mid = (lo + hi) / 2
        if budget.cost(counts(mid), removed) > target:
            hi = mid
        else:
            lo = mid
    best = counts(lo)
    if uniform:
        return _fill_uniform(budget, best, target, removed, channel_multiple)
    # fill what rounding left with channel groups, highest-weight blocks first
    order = sorted((l for l in range(n) if l not in removed), key=lambda l: -weights[l])
    grown = True
    while grown:
        grown = False
        for l in order:
            h, c = best[l]
            step = min(cm(l), budget.chans[l] - c)
            if step > 0:
                trial = best[:l] + [(h, c + step)] + best[l + 1:]
                if budget.cost(trial, removed) <= target:
                    best = trial
                    grown = True
    return best


def _fill_uniform(budget: Budget, best: list[tuple[int, int]], target: float, removed: Sequence[int],
                  channel_multiple: int) -> list[tuple[int, int]]:
    """Grow every kept block by the same number of channels while the total
    stays under ``target``: first in multiples of ``channel_multiple``, then,
    only if that grid still misses by more than 0.5% of the model, one by one."""
    kept = [l for l in range(len(best)) if l not in removed]
    for step in (channel_multiple, 1):
        while True:
            if step == 1 and target - budget.cost(best, removed) <= 0.005 * budget.full:
                break
            grown = [(h, c + step) if l in kept else (h, c) for l, (h, c) in enumerate(best)]
            if any(grown[l][1] > budget.chans[l] for l in kept) or budget.cost(grown, removed) > target:
                break
            best = grown
    return best


def min_reachable(budget: Budget, min_heads: int = 1, channel_multiple: int = 8, block_removal: bool = False) -> float:
    """The lowest cost a plan can reach (``Budget.cost``: parameters or predicted
    ms): every block at ``min_heads`` heads and one channel group, or (when the
    method removes blocks) all blocks but one."""
    floor = [(min(min_heads, h), min(channel_multiple, c)) for h, c in zip(budget.heads, budget.chans)]
    best = budget.cost(floor)
    if block_removal and len(floor) > 1:
        best = min(best, budget.cost(floor, removed=range(1, len(floor))))
    return best
