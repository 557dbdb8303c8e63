"""PruneConfig: every knob of the compress stage, validated up front."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pocketsize.errors import BadInput

CONFIG_VERSION = 1


@dataclass(frozen=True)
class PruneConfig:
    """How to prune.

    ratio: fraction of parameters to *keep* (0 < ratio <= 1), counted over the
        whole model including embeddings and head, so it matches what the
        exported file holds.
    method: a key of ``pocketsize.compress.methods.METHODS`` (``hei`` by default).
    buffer: step buffering on (several pruning steps with recovery and an undo
        guard) or off (one shot, the same total recovery budget).
    """

    ratio: float = 0.5
    method: str = "hei"
    seed: int = 0
    buffer: bool = True
    # step buffering
    steps: int = 3                  # number of pruning steps when buffering
    tolerance: float = 0.05         # max validation drop at pruning time before undo
    recovery_steps: int = 60        # total optimizer steps across all stages
    final_share: float = 0.5        # share of recovery spent on the final architecture
    batch_size: int = 32
    # DINOv2-S on Fashion-MNIST: AdamW at 1e-5..5e-5 made the loss jump from
    # 0.07 to 5-80 within two steps (pruned or not; SGD 3e-4..1e-2 worse);
    # 1e-6 stayed stable (measured, see docs/method.md)
    lr: float = 1e-6                # backbone learning rate
    head_lr: float = 1e-4
    distill: bool = True            # distill from the unpruned personalized model
    refit_head: bool = True         # re-fit the linear head on the pruned features after each step
    # calibration (random sampling)
    calib_samples: int = 64         # images / sequences sampled for scoring
    calib_tokens: int = 32          # tokens sampled per sample
    measurements: int = 64          # rows of the random measurement matrix Phi
    # what may be removed
    min_heads: int = 1
    allow_block_removal: bool = True
    head_multiple: int = 1          # keep heads in multiples of this
    channel_multiple: int = 8       # keep MLP channels in multiples of this (XNNPACK likes it)
    # fitting a head for the user's classes
    probe_epochs: int = 30
    finetune_steps: int = 0
    # where the pruning math runs; the result always comes back on the CPU
    device: str = "cpu"             # "cpu", "cuda", "cuda:N", "mps" or "auto"
    # --plan: a recorded allocation (transplant.Allocation.to_dict()) that replaces
    # the method's own per-block widths; units inside blocks stay this user's choice
    allocation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from . import methods  # local: avoid import cycle

        if not (0.0 < float(self.ratio) <= 1.0):
            raise BadInput(f"--ratio {self.ratio} is outside (0, 1]; it is the fraction of parameters to keep, e.g. 0.5")
        methods.get_method(self.method)  # raises BadInput listing valid names
        if self.steps < 1:
            raise BadInput(f"--steps {self.steps}: need at least 1 pruning step")
        if self.recovery_steps < 0:
            raise BadInput(f"--recovery-steps {self.recovery_steps}: must be >= 0")
        if not (0.0 <= self.final_share <= 1.0):
            raise BadInput(f"PruneConfig(final_share={self.final_share}): must be in [0, 1]")
        if not (self.device in ("cpu", "cuda", "mps", "auto") or self.device.startswith("cuda:")):
            raise BadInput(f"--torch-device {self.device!r} is not a torch device; use cpu, cuda, cuda:N, mps or auto")
        size = self.extra.get("image_size") if isinstance(self.extra, dict) else None
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise BadInput(f"--image-size {size!r}: pass a positive number of pixels (e.g. --image-size 224), "
                           "or leave it out to use the model's own")
        if self.allocation is not None and not (isinstance(self.allocation, dict)
                                                and {"heads", "channels"} <= set(self.allocation)):
            raise BadInput("--plan: the allocation must come from a plan.json (Allocation.to_dict())")
        if self.calib_samples < 2 or self.measurements < 2:
            raise BadInput(f"PruneConfig(calib_samples={self.calib_samples}, measurements={self.measurements}): "
                           "both must be at least 2")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruneConfig":
        d = {k: v for k, v in d.items() if k != "version"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BadInput(f"unknown PruneConfig keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**d)
