"""PruneConfig: every knob of the compress stage, validated up front."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pocketsize.errors import BadInput

# 7: lm.qat_group, lm.distill, reconstruct (lm.lr 2e-5 -> 3e-4); 6: recovery_loss; 5: teacher;
# 4: target_latency_ms, latency; 3: hei.beta "auto", hei.betas, finetuned_reference; 2: the free-form
# ``extra`` dict became image_size, uniform, hei and lm
CONFIG_VERSION = 7

HEI_SCORES = ("loss", "cond", "pred")


def _options_from_dict(cls, d: Any, where: str):
    """A nested options dataclass from its to_dict() form (plain JSON), unknown keys refused."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise BadInput(f"PruneConfig({where}=...): expected {cls.__name__} or a dict of its fields, "
                       f"got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise BadInput(f"unknown PruneConfig.{where} keys {sorted(unknown)}; valid keys: {sorted(known)}")
    return cls(**d)


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _whole(v: Any, lo: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= lo


@dataclass(frozen=True)
class HeiOptions:
    """Options of ``--method hei`` (docs/method.md).

    beta: how strongly the entropy-increase z-scores tilt the per-block cut
        (weights exp(beta * z)); 0 spreads it by activation importance alone, a
        negative beta reverses it (cuts the personalized blocks hardest; the
        direction guards of tests/test_method_guards.py use that). ``"auto"``:
        every pruning step tries each of ``betas`` and keeps the plan whose cut
        (after the head re-fit) harms this user's validation split least, so
        the tilt is never kept where it costs this user accuracy.
    betas: the strengths ``"auto"`` chooses from; ties go to the first.
    score: the entropy-increase estimator: ``loss``, ``cond`` or ``pred``.
    """

    beta: float | str = 0.3
    betas: tuple[float, ...] = (0.3, 0.0, 1.0)
    score: str = "loss"

    def __post_init__(self) -> None:
        if not (_number(self.beta) or self.beta == "auto"):
            raise BadInput(f"--hei-beta {self.beta!r}: pass a finite number or auto (default {HeiOptions.beta})")
        object.__setattr__(self, "betas", tuple(self.betas) if isinstance(self.betas, (list, tuple)) else self.betas)
        if not isinstance(self.betas, tuple) or not self.betas or not all(_number(b) for b in self.betas):
            raise BadInput(f"PruneConfig(hei.betas={self.betas!r}): pass a non-empty list of finite numbers")
        if self.score not in HEI_SCORES:
            raise BadInput(f"--hei-score {self.score!r} is not one of {', '.join(HEI_SCORES)}")

    @property
    def auto(self) -> bool:
        return self.beta == "auto"

    @classmethod
    def from_dict(cls, d: Any) -> "HeiOptions":
        return _options_from_dict(cls, d, "hei")


TEACHERS = ("base", "finetuned")
RECOVERY_LOSSES = ("logits", "match")  # train.recover says what each one trains on


@dataclass(frozen=True)
class LMOptions:
    """Language-model settings that differ from the ViT ones (compress/llm.py).

    seq_len: tokens per text chunk (default pocketsize.text.SEQ_LEN).
    batch_size: sequences per recovery step.
    nll_tolerance: guard: undo a step that raises validation NLL by more (nats;
        0.5 is x1.65 perplexity).
    lr: recovery learning rate. PruneConfig.lr (1e-6) was tuned on DINOv2, whose
        fitted probe head made larger Adam steps unstable. SmolLM2-135M at keep 0.85
        (docs/method.md, "Language-model recovery, session 12"): 3e-4 with the text
        alone ended at 50.8 held-out perplexity where 2e-5 with distillation ended at
        83.6 (base 54.0); 1e-3 overshoots (69.2).
    distill: weight of the KL term from the unpruned model in the LM recovery loss
        (the rest is the next-token loss on the user's text); 0: the text alone. The
        untouched model is worse at the user's text than what recovery can reach, so
        pulling toward it held the pruned model back (measured, same page).
    general_text: a .txt file or folder that is *not* the user's text; its perplexity
        before pruning, after, and for the fine-tuned reference goes to the report's
        ``general`` (forgetting). None: not measured.
    qat_group: quantization-aware recovery (compress/qat.py): every recovery trains
        through the int4 .onnx's 4-bit grid of blocks of this many input weights and
        ends on it. None: on in ``pocketsize run --quantize int4`` (the export's
        --group-size), off otherwise; 0: off.
    """

    seq_len: int = 128            # == pocketsize.text.SEQ_LEN (tests/test_cli_flags.py checks it)
    batch_size: int = 8
    nll_tolerance: float = 0.5
    lr: float = 3e-4
    distill: float = 0.0
    general_text: str | None = None
    qat_group: int | None = None

    def __post_init__(self) -> None:
        if not _whole(self.seq_len, 2):
            raise BadInput(f"--lm-seq-len {self.seq_len!r}: pass a whole number of tokens >= 2")
        if not _whole(self.batch_size, 1):
            raise BadInput(f"--lm-batch-size {self.batch_size!r}: pass a whole number >= 1")
        if not _number(self.nll_tolerance) or self.nll_tolerance < 0:
            raise BadInput(f"--lm-nll-tolerance {self.nll_tolerance!r}: pass a finite number >= 0")
        if not _number(self.lr) or self.lr <= 0:
            raise BadInput(f"--lm-lr {self.lr!r}: pass a finite learning rate > 0")
        if not _number(self.distill) or not 0 <= self.distill <= 1:
            raise BadInput(f"--lm-distill {self.distill!r}: pass a weight in [0, 1] (0: the user's text alone)")
        if self.general_text is not None:  # a path; kept as text so the config stays JSON
            if not str(self.general_text).strip():
                raise BadInput("--lm-general-text is empty; pass a .txt file or folder, or leave it out")
            object.__setattr__(self, "general_text", str(self.general_text))
        g = self.qat_group
        if g is not None and not (_whole(g, 0) and (g == 0 or (g >= 16 and g & (g - 1) == 0))):
            raise BadInput(f"--lm-qat-group {g!r}: pass the int4 export's group size (a power of two >= 16, "
                           "e.g. 32), or 0 to recover without the 4-bit grid")

    @classmethod
    def from_dict(cls, d: Any) -> "LMOptions":
        return _options_from_dict(cls, d, "lm")


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
    # which unpruned model teaches: "base" (as personalized: the probe / the untouched LM) or
    # "finetuned" (the fine-tuned reference, trained first with the same budget and recipe)
    teacher: str = "base"
    # what the image recovery trains on: "logits" (the user's labelled images: cross-entropy + KL
    # on logits) or "match" (function matching: flipped and mixed images, KL on logits + the
    # distance of the pooled features to the teacher's); language models always train on text
    recovery_loss: str = "logits"
    refit_head: bool = True         # re-fit the linear head on the pruned features after each step
    # least-squares refit of each output projection's kept inputs at every cut, on the step's
    # calibration sample (compress/reconstruct.py); None: the task's default (language models on,
    # image models off: measured, docs/method.md)
    reconstruct: bool | None = None
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
    # the unpruned model trained with the same recovery recipe and budget on the same
    # user data, evaluated beside the pruned one (report "references.finetuned")
    finetuned_reference: bool = True
    # where the pruning math runs; the result always comes back on the CPU
    device: str = "cpu"             # "cpu", "cuda", "cuda:N", "mps" or "auto"
    # --plan: a recorded allocation (transplant.Allocation.to_dict()) that replaces
    # the method's own per-block widths; units inside blocks stay this user's choice
    allocation: dict[str, Any] | None = None
    # input resolution of an image model (None: the model's own)
    image_size: int | None = None
    # same widths in every kept block (LLMs: the output loads with plain from_pretrained)
    uniform: bool = False
    # --target-latency: prune until the latency model predicts this p50 (ms) instead of
    # cutting to ``ratio``; ``latency`` is the measured model (pocketsize.latency.LatencyModel.to_dict())
    target_latency_ms: float | None = None
    latency: dict[str, Any] | None = None
    hei: HeiOptions = field(default_factory=HeiOptions)   # --method hei only
    lm: LMOptions = field(default_factory=LMOptions)      # language models only

    def __post_init__(self) -> None:
        from . import methods  # local: avoid import cycle

        if not (0.0 < float(self.ratio) <= 1.0):
            raise BadInput(f"--ratio {self.ratio} is outside (0, 1]; it is the fraction of parameters to keep, e.g. 0.5")
        methods.get_method(self.method)  # raises BadInput listing valid names
        if self.steps < 1:
            raise BadInput(f"--steps {self.steps}: need at least 1 pruning step")
        if self.teacher not in TEACHERS:
            raise BadInput(f"--teacher {self.teacher!r} is not one of {', '.join(TEACHERS)}")
        if self.recovery_loss not in RECOVERY_LOSSES:
            raise BadInput(f"--recovery-loss {self.recovery_loss!r} is not one of {', '.join(RECOVERY_LOSSES)}")
        if self.recovery_steps < 0:
            raise BadInput(f"--recovery-steps {self.recovery_steps}: must be >= 0")
        if not (0.0 <= self.final_share <= 1.0):
            raise BadInput(f"PruneConfig(final_share={self.final_share}): must be in [0, 1]")
        if not (self.device in ("cpu", "cuda", "mps", "auto") or self.device.startswith("cuda:")):
            raise BadInput(f"--torch-device {self.device!r} is not a torch device; use cpu, cuda, cuda:N, mps or auto")
        # nested options arrive as plain dicts from JSON (to_dict / from_dict, PruneConfig(**d))
        object.__setattr__(self, "hei", HeiOptions.from_dict(self.hei))
        object.__setattr__(self, "lm", LMOptions.from_dict(self.lm))
        size = self.image_size
        if size is not None and not _whole(size, 1):
            raise BadInput(f"--image-size {size!r}: pass a positive number of pixels (e.g. --image-size 224), "
                           "or leave it out to use the model's own")
        if self.reconstruct is not None and not isinstance(self.reconstruct, bool):
            raise BadInput(f"PruneConfig(reconstruct={self.reconstruct!r}): pass True, False or None "
                           "(--reconstruct / --no-reconstruct; None: the task's default)")
        if not isinstance(self.uniform, bool):
            raise BadInput(f"PruneConfig(uniform={self.uniform!r}): pass True or False (--uniform)")
        if self.allocation is not None and not (isinstance(self.allocation, dict)
                                                and {"heads", "channels"} <= set(self.allocation)):
            raise BadInput("--plan: the allocation must come from a plan.json (Allocation.to_dict())")
        t = self.target_latency_ms
        if t is not None and (not _number(t) or t <= 0):
            raise BadInput(f"--target-latency {t!r}: pass a positive number of milliseconds (e.g. --target-latency 20)")
        if self.latency is not None and not isinstance(self.latency, dict):
            raise BadInput("PruneConfig(latency=...): pass LatencyModel.to_dict() (pocketsize.latency_grid.profile)")
        if self.calib_samples < 2 or self.measurements < 2:
            raise BadInput(f"PruneConfig(calib_samples={self.calib_samples}, measurements={self.measurements}): "
                           "both must be at least 2")

    def in_whole_groups(self, group: int) -> "PruneConfig":
        """This config with MLP widths pruned in multiples of ``group`` as well (the least common
        multiple with ``channel_multiple``), so every pruned Linear's in-features hold whole 4-bit
        groups; ``self`` when they already do."""
        multiple = math.lcm(int(self.channel_multiple), int(group))
        return self if multiple == self.channel_multiple else dataclasses.replace(self, channel_multiple=multiple)

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
