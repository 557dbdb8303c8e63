"""Plans: which heads, channels and blocks to keep. Planning (methods,
allocation) and applying (this module) are separate, deterministic steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pocketsize.loading import Loaded


@dataclass
class Plan:
    """Indices are relative to the model the plan is applied to."""

    keep_blocks: list[int]
    heads: dict[int, list[int]] = field(default_factory=dict)
    channels: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def of_widths(cls, widths: list[int]) -> "Plan":
        """The plan that leaves block b with widths[2b] heads and widths[2b+1]
        channels (the first ones: for timing, not for accuracy); a block at
        (0, 0) is removed. ``widths`` is the flat ``kept`` list of a plan report."""
        pairs = list(zip(widths[0::2], widths[1::2]))
        keep = [b for b, (h, c) in enumerate(pairs) if h or c]
        return cls(keep, {b: list(range(pairs[b][0])) for b in keep}, {b: list(range(pairs[b][1])) for b in keep})

    def to_dict(self) -> dict[str, Any]:
        return {"keep_blocks": self.keep_blocks,
                "heads": {str(k): v for k, v in self.heads.items()},
                "channels": {str(k): v for k, v in self.channels.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        """The inverse of ``to_dict`` (JSON keys are strings, block indices ints)."""
        return cls(list(d["keep_blocks"]), {int(k): list(v) for k, v in d["heads"].items()},
                   {int(k): list(v) for k, v in d["channels"].items()})


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def apply_plan(loaded: Loaded, plan: Plan) -> None:
    """Physically remove what the plan drops (dense, smaller tensors)."""
    ad = loaded.adapter
    blocks = ad.blocks(loaded.model)
    for i, blk in enumerate(blocks):
        if i not in plan.keep_blocks:
            continue
        shape = ad.block_shape(blk)
        if i in plan.heads and len(plan.heads[i]) != shape.heads:
            ad.prune_heads(blk, plan.heads[i])
        if i in plan.channels and len(plan.channels[i]) != shape.mlp_hidden:
            ad.prune_mlp(blk, plan.channels[i])
    if len(plan.keep_blocks) != len(blocks):
        ad.keep_blocks(loaded.model, plan.keep_blocks)
    loaded.refresh_meta()


@dataclass
class Lineage:
    """Original indices of every surviving block/head/channel, so the plan of
    several buffered steps composes into one record against the original."""

    blocks: list[int]
    heads: list[list[int]]
    channels: list[list[int]]
    totals: list[tuple[int, int]]  # original (heads, channels) per original block

    @classmethod
    def start(cls, loaded: Loaded) -> "Lineage":
        shapes = [loaded.adapter.block_shape(b) for b in loaded.adapter.blocks(loaded.model)]
        return cls(list(range(len(shapes))), [list(range(s.heads)) for s in shapes],
                   [list(range(s.mlp_hidden)) for s in shapes], [(s.heads, s.mlp_hidden) for s in shapes])

    def advance(self, plan: Plan) -> "Lineage":
        blocks, heads, chans = [], [], []
        for i in plan.keep_blocks:
            blocks.append(self.blocks[i])
            heads.append([self.heads[i][h] for h in plan.heads.get(i, range(len(self.heads[i])))])
            chans.append([self.channels[i][c] for c in plan.channels.get(i, range(len(self.channels[i])))])
        return Lineage(blocks, heads, chans, self.totals)

    def as_plan(self) -> Plan:
        """The composite plan against the original model."""
        return Plan(list(self.blocks), {b: h for b, h in zip(self.blocks, self.heads)},
                    {b: c for b, c in zip(self.blocks, self.channels)})
