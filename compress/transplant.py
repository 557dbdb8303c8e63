"""Recorded allocations: another run's per-block widths applied to this model and user.

``pocketsize compress ... --plan PLAN.json`` keeps the *shape* of another
run's result (how many heads and MLP channels each block keeps, which blocks
go) and lets this user's own activations choose *which* units fill it. Two
uses:

* a fleet of users on one architecture: every user's model has the same
  shapes, so one compiled artifact layout serves all of them;
* the controls that test personalization: user X's plan on user Y (the
  transplant) and a user-independent plan averaged over other users (the
  depth prior). If those do as well as a user's own plan, the allocation was
  not personal.

The recorded widths act as allocation weights (the kept fraction of each
block), so the same plan also serves another ``--ratio``: the solver scales
the profile until the model meets the parameter target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pocketsize.errors import BadInput

from .allocate import Budget


@dataclass(frozen=True)
class Allocation:
    """Per original block: (kept, total) heads and (kept, total) MLP channels."""

    heads: tuple[tuple[int, int], ...]
    channels: tuple[tuple[int, int], ...]
    source: str = "in-process"

    # --- reading -------------------------------------------------------------

    @classmethod
    def from_plan(cls, plan: dict[str, Any], source: str) -> "Allocation":
        """From a plan.json document (its ``units`` list)."""
        units = plan.get("units") if isinstance(plan, dict) else None
        if not isinstance(units, list) or not units:
            raise BadInput(f"--plan {source}: no 'units' list; pass the plan.json that pocketsize compress wrote")
        attn: dict[int, tuple[int, int]] = {}
        mlp: dict[int, tuple[int, int]] = {}
        for u in units:
            try:
                _, b, part = str(u["name"]).split(".")
                rec = (int(u["kept"]), int(u["total"]))
                (attn if part == "attn" else mlp)[int(b)] = rec
            except (KeyError, ValueError, TypeError):
                raise BadInput(f"--plan {source}: unit {u!r} is not a blocks.N.attn|mlp record with kept/total; "
                               "pass the plan.json that pocketsize compress wrote") from None
        n = len(attn)
        if sorted(attn) != list(range(n)) or sorted(mlp) != list(range(n)):
            raise BadInput(f"--plan {source}: blocks are missing (attention {sorted(attn)}, MLP {sorted(mlp)})")
        return cls(tuple(attn[b] for b in range(n)), tuple(mlp[b] for b in range(n)), source)

    @classmethod
    def load(cls, path: str | Path) -> "Allocation":
        p = Path(path)
        if p.is_dir():  # the DIR of pocketsize compress
            p = p / "plan.json"
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            raise BadInput(f"--plan {path}: no such file; pass DIR/plan.json from another pocketsize compress") from None
        except json.JSONDecodeError as e:
            raise BadInput(f"--plan {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_plan(doc, str(path))

    @classmethod
    def average(cls, allocations: Sequence["Allocation"], source: str = "average") -> "Allocation":
        """The mean kept count per block over several plans (the depth prior)."""
        if not allocations:
            raise BadInput("no plans to average")
        first = allocations[0]
        for a in allocations[1:]:
            if [t for _, t in a.heads] != [t for _, t in first.heads] or \
                    [t for _, t in a.channels] != [t for _, t in first.channels]:
                raise BadInput(f"plans {first.source} and {a.source} are for different architectures")

        def mean(field: str) -> tuple[tuple[int, int], ...]:
            rows = [getattr(a, field) for a in allocations]
            return tuple((round(sum(r[b][0] for r in rows) / len(rows)), rows[0][b][1]) for b in range(len(rows[0])))

        return cls(mean("heads"), mean("channels"), source)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "heads": [list(h) for h in self.heads],
                "channels": [list(c) for c in self.channels]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Allocation":
        return cls(tuple(tuple(h) for h in d["heads"]), tuple(tuple(c) for c in d["channels"]),
                   str(d.get("source", "in-process")))

    # --- applying ------------------------------------------------------------

    @property
    def removed(self) -> list[int]:
        """Original blocks the recorded plan removed whole."""
        return [b for b, ((h, _), (c, _)) in enumerate(zip(self.heads, self.channels)) if h == 0 and c == 0]

    def check(self, budget: Budget, source: str | None = None) -> None:
        """BadInput unless the plan was recorded on this architecture (same blocks, heads, widths)."""
        heads = [t for _, t in self.heads]
        chans = [t for _, t in self.channels]
        if heads != list(budget.heads) or chans != list(budget.chans):
            raise BadInput(f"--plan {source or self.source} was recorded on another architecture "
                           f"({len(heads)} blocks, heads {_brief(heads)}, MLP widths {_brief(chans)}) than this model "
                           f"({len(budget.heads)} blocks, heads {_brief(budget.heads)}, MLP widths "
                           f"{_brief(budget.chans)}); use a plan from the same MODEL")

    def weights_for(self, budget: Budget, original: Sequence[int]) -> tuple[list[float], list[float], list[int]]:
        """Allocation weights for the *current* (possibly already cut) model.

        ``original[i]`` is the original index of current block i. The weight
        is the recorded final count over the current count, so the solver's
        scale t = 1 reproduces the recorded widths and t > 1 (an earlier,
        milder step) keeps proportionally more. Returns (channel weights,
        head weights, current blocks to remove)."""
        head_w, chan_w, removed = [], [], []
        for i, b in enumerate(original):
            kh, _ = self.heads[b]
            kc, _ = self.channels[b]
            if kh == 0 and kc == 0:
                removed.append(i)
            head_w.append(max(kh, 1e-3) / budget.heads[i])
            chan_w.append(max(kc, 1e-3) / budget.chans[i])
        return chan_w, head_w, removed


def _brief(v: Sequence[int]) -> str:
    return str(v[0]) if len(set(v)) == 1 else "/".join(map(str, v))
