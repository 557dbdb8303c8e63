"""Guards on the method itself, so that ``hei`` cannot silently turn into a baseline.

1. The weighted allocation solver (compress/allocate.py ``solve``): meets the
   parameter target, gives more to larger weights, is uniform for equal
   weights, respects min_heads / channel_multiple, ignores removed blocks in
   the budget and grows with the target.
2. The entropy estimators (compress/methods.py ``gaussian_entropy``,
   ``conditional_entropy``; compress/calib.py ``_norm_tokens``): the closed
   form of a known Gaussian, the scale-invariance the method claims, more
   entropy from an independent informative dimension, and a copying unit
   scored below a unit that adds independent signal.
3. A planted-structure tiny ViT: some blocks are made near-identity (their
   attention and MLP residual contributions scaled by 0.02, so the user's
   classes reach the head only through the other blocks). hei must cut the
   planted blocks more than the ``activation`` baseline at the same target,
   and its allocation must not be uniform.
4. Direction guards: the planted check (and a crafted-score call of
   ``plan_hei``) does not hold when beta's sign is flipped or when
   ``METHODS["hei"]`` is the activation planner, so those regressions fail here.
"""

from __future__ import annotations

import math

import pytest
import torch
from pocketsize.compress import methods as M
from pocketsize.compress.allocate import Budget, solve
from pocketsize.compress.calib import _norm_tokens, measurement_matrix
from pocketsize.compress.config import PruneConfig
from pocketsize.compress.methods import (
    METHODS,
    StepContext,
    conditional_entropy,
    gaussian_entropy,
)

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

EPS = 1e-3  # the estimators' default regulariser


# --- 1. the weighted allocation solver ------------------------------------------

D, HD = 64, 16  # a toy ViT block: width 64, 4 heads of 16, MLP 256
HEAD_COST = 4 * D * HD + 3 * HD      # q, k, v rows + proj columns (+ q/k/v biases)
CHAN_COST = 2 * D + 1                # fc1 row + bias, fc2 column
FIXED = 4 * D + D + D                # norms and biases that no width removes


def _budget(n: int = 6, heads: int = 4, chans: int = 256) -> Budget:
    hs, cs = [heads] * n, [chans] * n
    block = [h * HEAD_COST + c * CHAN_COST + FIXED for h, c in zip(hs, cs)]
    return Budget(hs, cs, [float(HEAD_COST)] * n, [float(CHAN_COST)] * n, block, sum(block) + 20_000)


WEIGHTS = [1.6, 0.5, 1.2, 0.7, 0.9, 2.0]


@pytest.mark.parametrize("ratio", [0.3, 0.45, 0.5, 0.65, 0.8])
@pytest.mark.parametrize("weights", [[1.0] * 6, WEIGHTS], ids=["equal", "weighted"])
def test_solve_meets_the_target(ratio, weights):
    b = _budget()
    target = ratio * b.total
    counts = solve(b, target, weights)
    p = b.params(counts)
    # never above the target; below it by less than one channel group of one block
    assert p <= target
    assert target - p < 8 * CHAN_COST, (ratio, target - p)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_solve_larger_weight_never_keeps_less(ratio):
    b = _budget()
    counts = solve(b, ratio * b.total, WEIGHTS)
    for i in range(6):
        for j in range(6):
            if WEIGHTS[i] > WEIGHTS[j]:
                assert counts[i][0] >= counts[j][0] and counts[i][1] >= counts[j][1], (i, j, counts)
    # and the spread is real: the largest weight keeps strictly more than the smallest
    hi, lo = max(range(6), key=WEIGHTS.__getitem__), min(range(6), key=WEIGHTS.__getitem__)
    assert counts[hi][1] > counts[lo][1], counts


def test_solve_separate_head_weights_order_heads():
    b = _budget()
    hw = [0.5, 2.0, 1.0, 1.0, 1.0, 1.0]
    counts = solve(b, 0.5 * b.total, [1.0] * 6, head_weights=hw)
    assert counts[1][0] > counts[0][0], counts
    assert counts[1][0] >= counts[2][0] >= counts[0][0]


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_solve_equal_weights_are_uniform(ratio):
    b = _budget()
    target = ratio * b.total
    exact = solve(b, target, [1.0] * 6, uniform=True)
    assert len(set(exact)) == 1, exact
    # the weighted path with equal weights: same heads everywhere; the rounding
    # fill may hand single channel groups to the first blocks, nothing more
    loose = solve(b, target, [1.0] * 6)
    assert len({h for h, _ in loose}) == 1, loose
    cs = [c for _, c in loose]
    assert max(cs) - min(cs) <= 8, loose
    # uniform=True ignores weights
    assert solve(b, target, WEIGHTS, uniform=True) == exact


@pytest.mark.parametrize("min_heads,cm", [(1, 8), (2, 8), (3, 16)])
def test_solve_respects_min_heads_and_channel_multiple(min_heads, cm):
    b = _budget()
    for ratio in (0.05, 0.2, 0.5, 0.9):
        counts = solve(b, ratio * b.total, WEIGHTS, min_heads=min_heads, channel_multiple=cm)
        for (h, c), H, C in zip(counts, b.heads, b.chans):
            assert min_heads <= h <= H
            assert cm <= c <= C and (c % cm == 0 or c == C), (ratio, counts)


def test_solve_removed_blocks_do_not_count():
    """``solve`` leaves the removed blocks' rows in place (the caller,
    ``_plan_from_counts``, drops them); the budget must exclude them and hand
    their share to the kept blocks."""
    b = _budget()
    target = 0.5 * b.total
    removed = [1, 4]
    with_rm = solve(b, target, [1.0] * 6, removed=removed)
    without = solve(b, target, [1.0] * 6)
    p = b.params(with_rm, removed)
    assert p <= target and target - p < 8 * CHAN_COST
    kept = [i for i in range(6) if i not in removed]
    assert sum(with_rm[i][1] for i in kept) > sum(without[i][1] for i in kept)
    plan = M._plan_from_counts([(torch.rand(4), torch.rand(256)) for _ in range(6)], with_rm, removed)
    assert plan.keep_blocks == kept and set(plan.heads) == set(kept) and set(plan.channels) == set(kept)


def test_solve_is_monotone_in_the_target():
    b = _budget()
    prev_counts, prev_p = None, -1.0
    for ratio in [0.2 + 0.025 * k for k in range(29)]:
        counts = solve(b, ratio * b.total, WEIGHTS)
        p = b.params(counts)
        assert p >= prev_p, ratio
        if prev_counts is not None:
            # per block, up to one channel group of rounding-fill jitter
            for (h0, c0), (h1, c1) in zip(prev_counts, counts):
                assert h1 >= h0 and c1 >= c0 - 8, (ratio, prev_counts, counts)
        prev_counts, prev_p = counts, p


# --- 2. the entropy estimators --------------------------------------------------

def _gauss(T: int, cov: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(cov)
    return torch.randn(T, cov.shape[0], generator=g, dtype=torch.float64) @ L.T


def _cov(m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, m, generator=g, dtype=torch.float64)
    return A @ A.T / m + 0.2 * torch.eye(m, dtype=torch.float64)


@pytest.mark.parametrize("m", [2, 8])
def test_gaussian_entropy_matches_closed_form(m):
    cov = _cov(m, seed=m)
    y = _gauss(40_000, cov, seed=1) + 3.0  # the mean must not matter
    want = 0.5 * torch.logdet(cov + EPS * torch.eye(m, dtype=torch.float64)).item()
    assert gaussian_entropy(y) == pytest.approx(want, abs=0.03 * m)
    # eps is the documented floor: a zero-variance direction contributes 0.5 log eps
    flat = torch.cat([y, torch.zeros(y.shape[0], 1, dtype=y.dtype)], 1)
    assert gaussian_entropy(flat) - gaussian_entropy(y) == pytest.approx(0.5 * math.log(EPS), abs=1e-3)


def test_conditional_entropy_matches_closed_form():
    """out = A in + n with n independent: H(out | in) = 0.5 logdet(cov_n) (up to eps)."""
    m = 6
    x = _gauss(40_000, _cov(m, 3), seed=4)
    cov_n = _cov(m, 5)
    A = torch.randn(m, m, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    out = x @ A.T + _gauss(40_000, cov_n, seed=7)
    want = 0.5 * torch.logdet(cov_n + EPS * torch.eye(m, dtype=torch.float64)).item()
    assert conditional_entropy(out, x) == pytest.approx(want, abs=0.05 * m)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 300.0])
def test_token_normalized_scores_are_scale_invariant(scale):
    """The `cond` score sees states through ``_norm_tokens`` then Phi (as
    ``calib.collect`` measures x_in / mid / x_out): scaling the residual stream
    changes nothing."""
    g = torch.Generator().manual_seed(0)
    d, T = 32, 512
    phi = measurement_matrix(d, 16, seed=0)
    x = torch.randn(T, d, generator=g) + 0.3 * torch.randn(1, d, generator=g)
    out = x + 0.5 * torch.randn(T, d, generator=g)
    meas = lambda h: _norm_tokens(h) @ phi.T
    assert torch.allclose(meas(scale * x), meas(x), rtol=1e-3, atol=1e-2)  # _norm_tokens adds 1e-6 to the rms
    ref = conditional_entropy(meas(out), meas(x))
    assert conditional_entropy(meas(scale * out), meas(scale * x)) == pytest.approx(ref, abs=0.05)


def _loss_form(e: torch.Tensor, x: torch.Tensor) -> float:
    """The `loss` score's form: H(Phi e) - H(Phi x)."""
    return gaussian_entropy(e) - gaussian_entropy(x)


@pytest.mark.parametrize("scale", [1.0, 4.0, 50.0])
def test_loss_score_is_scale_invariant_above_the_eps_floor(scale):
    """docs/method.md: the ratio form H(Phi e) - H(Phi x) is invariant to the
    stream's scale. True when the measured variances are well above eps."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 16, generator=g, dtype=torch.float64)
    e = 0.5 * torch.randn(4000, 16, generator=g, dtype=torch.float64)
    assert _loss_form(scale * e, scale * x) == pytest.approx(_loss_form(e, x), abs=0.02 * 16)


@pytest.mark.xfail(strict=True, reason=(
    "measured: eps=1e-3 is absolute, so when the pruning error's variance is below ~1e-3 "
    "(the tiny random-init ViTs of the tests: ~1e-4..1e-8 per measurement) H(Phi e) sits at the "
    "floor 0.5*m*log(eps) and the loss score is NOT invariant to the stream's scale; the ordering "
    "of blocks survives (monotone) but the spread is compressed"))
def test_loss_score_is_scale_invariant_below_the_eps_floor():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 16, generator=g, dtype=torch.float64)
    e = 0.5 * torch.randn(4000, 16, generator=g, dtype=torch.float64)
    assert _loss_form(0.01 * e, 0.01 * x) == pytest.approx(_loss_form(e, x), abs=0.02 * 16)


def test_independent_informative_dimension_increases_entropy():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    dead = torch.cat([base, torch.zeros(2000, 1, dtype=base.dtype)], 1)        # a constant direction
    live = torch.cat([base, 0.3 * torch.randn(2000, 1, generator=g, dtype=base.dtype)], 1)
    assert gaussian_entropy(live) > gaussian_entropy(dead) + 1.0
    # the same seen through a random Phi, as calib measures states
    d = 24
    phi = measurement_matrix(d, 8, seed=0).double()
    z = torch.randn(2000, d, generator=g, dtype=torch.float64)
    z[:, 3:] = z[:, :3] @ torch.randn(3, d - 3, generator=g, dtype=torch.float64)  # rank 3
    z_more = z.clone()
    z_more[:, 5] += torch.randn(2000, generator=g, dtype=torch.float64)  # an independent direction
    assert gaussian_entropy(z_more @ phi.T) > gaussian_entropy(z @ phi.T) + 1.0


def test_conditional_entropy_copy_block_below_signal_block():
    """hei's `cond` score: a unit that copies its input adds nothing; a unit
    that adds independent signal scores higher (through _norm_tokens + Phi)."""
    g = torch.Generator().manual_seed(3)
    d, T = 32, 1024
    phi = measurement_matrix(d, 16, seed=0)
    x = torch.randn(T, d, generator=g)
    meas = lambda h: _norm_tokens(h) @ phi.T
    copy = conditional_entropy(meas(x), meas(x))
    rescaled = conditional_entropy(meas(3.0 * x), meas(x))          # a pure rescale is still a copy
    signal = conditional_entropy(meas(x + torch.randn(T, d, generator=g)), meas(x))
    weak = conditional_entropy(meas(x + 0.2 * torch.randn(T, d, generator=g)), meas(x))
    assert copy == pytest.approx(rescaled, abs=1e-2)
    assert signal > weak > copy + 5.0, (copy, weak, signal)


# --- 3. planted structure on a tiny ViT -------------------------------------------

DEPTH = 6
IRRELEVANT = (1, 3, 4)       # near-identity blocks: residual contributions x 0.02
RATIO = 0.5


@pytest.fixture(scope="module")
def planted():
    """A tiny timm ViT (depth 6, dim 64, 4 heads, MLP 256) whose blocks 1, 3, 4
    are near-identity, and user data of 3 colour classes (48 images)."""
    import timm

    from pocketsize.loading import Loaded
    from pocketsize.models import adapter_for

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                          depth=DEPTH, num_heads=4, num_classes=3).eval()
    with torch.no_grad():
        for i in IRRELEVANT:
            for lin in (m.blocks[i].attn.proj, m.blocks[i].mlp.fc2):
                lin.weight.mul_(0.02)
                lin.bias.mul_(0.02)
    ad = adapter_for(m)
    loaded = Loaded(m, ad, {"source": "planted", "preprocessing": ad.preprocessing(m)})
    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.randn(3, 3, 1, 1, generator=g)[y] + 0.5 * torch.randn(48, 3, 32, 32, generator=g)
    # one calibration pass, shared by every plan below (it depends only on the
    # model, the data, measurements, calib_tokens and the seed, all fixed here)
    stats = StepContext(loaded, x, None, None, PruneConfig(calib_samples=48), seed=0).stats("user")
    return loaded, x, stats


def _ctx(planted, ratio: float = RATIO, **hei) -> StepContext:
    """``hei_beta=`` / ``hei_score=``: fields of PruneConfig.hei."""
    loaded, x, stats = planted
    cfg = PruneConfig(ratio=ratio, calib_samples=48, hei={k.removeprefix("hei_"): v for k, v in hei.items()})
    return StepContext(loaded, x, None, None, cfg, seed=0, _cache={"user": stats})


def _kept_fractions(planted, method: str, ratio: float = RATIO, **extra) -> list[float]:
    """Per block: the fraction of its prunable parameters (heads + channels) the
    method's plan keeps at ``ratio`` of the model. Looks the planner up in
    METHODS at call time, so a swapped registry entry is what gets measured."""
    loaded = planted[0]
    budget = Budget.of(loaded)
    plan = METHODS[method](_ctx(planted, ratio, **extra), ratio * budget.total).plan
    out = []
    for i in range(len(budget.heads)):
        full = budget.heads[i] * budget.head_cost[i] + budget.chans[i] * budget.chan_cost[i]
        kept = (len(plan.heads.get(i, [])) * budget.head_cost[i] + len(plan.channels.get(i, [])) * budget.chan_cost[i]
                if i in plan.keep_blocks else 0.0)
        out.append(kept / full)
    return out


def _planted_check(planted, **hei_extra) -> tuple[bool, dict]:
    """hei cuts the planted near-identity blocks more than activation (by at
    least 5 points of their parameters), keeps more of the relevant blocks, and
    its allocation is not uniform."""
    hei = _kept_fractions(planted, "hei", **hei_extra)
    act = _kept_fractions(planted, "activation")
    rel = [i for i in range(DEPTH) if i not in IRRELEVANT]
    mean = lambda v, idx: sum(v[i] for i in idx) / len(idx)
    info = {"hei": [round(v, 3) for v in hei], "activation": [round(v, 3) for v in act],
            "hei_irrelevant": mean(hei, IRRELEVANT), "act_irrelevant": mean(act, IRRELEVANT),
            "hei_relevant": mean(hei, rel), "act_relevant": mean(act, rel)}
    ok = (info["hei_irrelevant"] < info["act_irrelevant"] - 0.05
          and info["hei_relevant"] > info["act_relevant"]
          and max(hei) - min(hei) > 0.15
          and max(hei[i] for i in IRRELEVANT) < min(hei[i] for i in rel))
    return ok, info


def test_hei_cuts_planted_irrelevant_blocks_more_than_activation(planted):
    ok, info = _planted_check(planted)
    assert ok, info


# --- 4. direction guards ----------------------------------------------------------

def test_guard_fails_when_beta_sign_is_flipped(planted):
    ok, info = _planted_check(planted, hei_beta=-0.3)
    assert not ok, f"the planted check cannot tell a reversed allocation apart: {info}"
    assert info["hei_irrelevant"] > info["act_irrelevant"], info  # reversed: the planted blocks are kept more


def test_guard_fails_when_hei_is_the_activation_planner(planted, monkeypatch):
    monkeypatch.setitem(METHODS, "hei", METHODS["activation"])
    ok, info = _planted_check(planted)
    assert not ok, f"the planted check cannot tell hei from activation: {info}"


def test_plan_hei_gives_the_highest_scored_block_the_most(planted, monkeypatch):
    """Crafted scores straight into plan_hei (estimator bypassed): the block
    with the highest entropy-increase score keeps the most heads and channels,
    the lowest keeps the least; with beta = 0 the plan is the activation plan."""
    loaded = planted[0]
    crafted = [-1.0, -3.0, 0.5, 2.0, 0.0, 1.0]
    monkeypatch.setattr(M, "hei_loss_scores",
                        lambda ctx, stats, frac: [{"attn": s, "mlp": s} for s in crafted])
    budget = Budget.of(loaded)

    def counts(**extra):
        p = M.plan_hei(_ctx(planted, **extra), RATIO * budget.total).plan
        return [(len(p.heads[i]), len(p.channels[i])) for i in range(DEPTH)]

    got = counts()
    top, bottom = crafted.index(max(crafted)), crafted.index(min(crafted))
    assert got[top][1] == max(c for _, c in got) and got[bottom][1] == min(c for _, c in got), got
    assert got[top][1] > got[bottom][1] and got[top][0] > got[bottom][0], got
    order = sorted(range(DEPTH), key=crafted.__getitem__)
    assert [got[i][1] for i in order] == sorted(got[i][1] for i in order), (crafted, got)
    flat = counts(hei_beta=0.0)
    assert len({h for h, _ in flat}) == 1 and max(c for _, c in flat) - min(c for _, c in flat) <= 8, flat
    reversed_ = counts(hei_beta=-0.3)
    assert reversed_[top][1] < reversed_[bottom][1], reversed_


# --- 5. the allocation strength chosen on validation (beta "auto") -----------------

def _plan_counts(plan) -> list[tuple[int, int]]:
    return [(len(plan.heads[i]), len(plan.channels[i])) for i in sorted(plan.heads)]


def test_auto_beta_keeps_the_plan_the_judge_prefers(planted):
    """beta "auto" tries every strength through ctx.judge and keeps the least
    harmful plan: a judge that penalises non-uniform plans gets the beta = 0
    plan, one that rewards them gets the strongest tilt; ties go to the first."""
    loaded = planted[0]
    target = RATIO * Budget.of(loaded).total
    fixed = {b: _plan_counts(M.plan_hei(_ctx(planted, hei_beta=b), target).plan) for b in (0.0, 0.3, 1.0)}
    assert fixed[0.0] != fixed[1.0]  # the strengths give different plans, else the test proves nothing

    def spread(plan) -> float:
        c = [ch for _, ch in _plan_counts(plan)]
        return float(max(c) - min(c))

    def run(judge) -> M.StepPlan:
        ctx = _ctx(planted, hei_beta="auto", hei_betas=(0.3, 0.0, 1.0))
        ctx.judge = judge
        return M.plan_hei(ctx, target)

    flat = run(spread)  # less spread = less harm
    assert _plan_counts(flat.plan) == fixed[0.0] and flat.info["beta"] == 0.0, flat.info
    assert flat.info["auto"]["tried"] == [0.3, 0.0, 1.0] and len(flat.info["auto"]["validation_harm"]) == 3
    tilted = run(lambda plan: -spread(plan))
    assert _plan_counts(tilted.plan) == fixed[1.0] and tilted.info["beta"] == 1.0
    tie = run(lambda plan: 0.0)
    assert _plan_counts(tie.plan) == fixed[0.3] and tie.info["beta"] == 0.3


def test_auto_beta_without_a_judge_uses_the_first_strength(planted):
    loaded = planted[0]
    target = RATIO * Budget.of(loaded).total
    auto = M.plan_hei(_ctx(planted, hei_beta="auto", hei_betas=(1.0, 0.0)), target)
    assert _plan_counts(auto.plan) == _plan_counts(M.plan_hei(_ctx(planted, hei_beta=1.0), target).plan)


def test_hei_options_refuse_bad_strengths():
    from pocketsize.compress.config import HeiOptions
    from pocketsize.errors import BadInput

    assert HeiOptions(beta="auto").auto and HeiOptions(betas=[0.0, 1.0]).betas == (0.0, 1.0)
    for bad in ({"beta": "strong"}, {"beta": float("nan")}, {"betas": ()}, {"betas": (0.3, float("inf"))}):
        with pytest.raises(BadInput):
            HeiOptions(**bad)
