"""Every pruning method through compress.prune on a tiny timm ViT: the kept
fraction of parameters equals the ratio within 0.01 (the contract), plan.json has
the documented keys with both unit kinds scored, the report adds up, and the same
seed gives the same plan."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from pocketsize.compress.config import HeiOptions, PruneConfig
from pocketsize.data import load_image_data
from pocketsize.loading import Loaded
from pocketsize.compress.methods import METHODS, get_method
from pocketsize.models import adapter_for
from pocketsize.compress.plan import count_params
from pocketsize.compress import prune
from pocketsize.errors import BadInput

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

FAST = PruneConfig(ratio=0.5, recovery_steps=2, calib_samples=8, probe_epochs=2, steps=2)


def _loaded(tiny_vit, kind: str = "timm") -> Loaded:
    m = tiny_vit(kind)
    ad = adapter_for(m)
    return Loaded(m, ad, {"source": "tiny", "preprocessing": ad.preprocessing(m)})


@pytest.fixture(scope="module")
def data(image_folder, tiny_vit):
    """The image folder read once at the tiny timm model's preprocessing."""
    loaded = _loaded(tiny_vit)
    return load_image_data(image_folder, loaded.meta["preprocessing"], seed=0)


def _run(tiny_vit, data, kind="timm", **kw):
    return prune(_loaded(tiny_vit, kind), data, dataclasses.replace(FAST, **kw))


def _check_plan(plan: dict, model_loaded: Loaded, cfg: PruneConfig) -> None:
    assert plan["method"] == cfg.method and plan["seed"] == cfg.seed and plan["ratio"] == cfg.ratio
    units = plan["units"]
    assert [u["name"] for u in units] == [f"blocks.{b}.{p}" for b in range(3) for p in ("attn", "mlp")]
    for u in units:
        assert set(u) >= {"name", "kind", "score", "kept", "total"}
        assert u["kind"] in ("personalized", "common")
        assert 0 <= u["kept"] <= u["total"]
    kinds = {u["kind"] for u in units}
    assert kinds == {"personalized", "common"}, f"{cfg.method}: plan has only {kinds}"
    for kind in kinds:
        scored = [u["score"] for u in units if u["kind"] == kind]
        assert all(isinstance(s, float) and math.isfinite(s) for s in scored), (cfg.method, scored)
    # the plan describes the model that was produced
    ad = model_loaded.adapter
    shapes = [ad.block_shape(b) for b in ad.blocks(model_loaded.model)]
    alive = [u for u in units if u["kept"] > 0]
    assert sorted(u["kept"] for u in alive if u["name"].endswith("attn")) == sorted(s.heads for s in shapes)
    assert sorted(u["kept"] for u in alive if u["name"].endswith("mlp")) == sorted(s.mlp_hidden for s in shapes)
    json.dumps(plan)  # JSON-serializable as is


@pytest.mark.parametrize("ratio", [0.5, 0.35])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_hits_the_ratio(method, ratio, tiny_vit, data):
    pruned = _run(tiny_vit, data, method=method, ratio=ratio)
    rep = pruned.report
    assert abs(rep["params_ratio"] - ratio) <= 0.01, rep["params_ratio"]
    assert rep["params_after"] == count_params(pruned.loaded.model)
    assert rep["params_ratio"] == pytest.approx(rep["params_after"] / rep["params_before"])
    assert rep["macs_after"] < rep["macs_before"]
    assert rep["metric"] == "accuracy" and 0.0 <= rep["before"] <= 1.0 and 0.0 <= rep["after"] <= 1.0
    assert rep["steps"] and all({"ratio", "metric", "accepted"} <= set(s) for s in rep["steps"])
    assert any(s["accepted"] for s in rep["steps"])
    _check_plan(pruned.plan, pruned.loaded, dataclasses.replace(FAST, method=method, ratio=ratio))
    logits = pruned.loaded.adapter.logits(pruned.loaded.model, data.test.normalized(0, 2))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", ["hf-vit", "hf-dinov2"])
@pytest.mark.parametrize("method", ["hei", "block-influence"])
def test_hf_models_hit_the_ratio(kind, method, tiny_vit, image_folder):
    pruned = prune(_loaded(tiny_vit, kind), str(image_folder), dataclasses.replace(FAST, method=method, ratio=0.35))
    assert abs(pruned.report["params_ratio"] - 0.35) <= 0.01
    _check_plan(pruned.plan, pruned.loaded, dataclasses.replace(FAST, method=method, ratio=0.35))


def test_one_shot_hits_the_ratio_with_the_same_recovery_budget(tiny_vit, data):
    pruned = _run(tiny_vit, data, buffer=False, recovery_steps=4)
    rep = pruned.report
    assert abs(rep["params_ratio"] - 0.5) <= 0.01
    accepted = [s for s in rep["steps"] if s["accepted"]]
    assert len(accepted) == 1 and accepted[0]["recovery_steps"] == 4
    buffered = _run(tiny_vit, data, buffer=True, recovery_steps=4, steps=2)
    assert sum(s.get("recovery_steps", 0) for s in buffered.report["steps"] if s["accepted"]) == 4


def test_ratio_one_keeps_everything(tiny_vit, data):
    pruned = _run(tiny_vit, data, ratio=1.0)
    assert pruned.report["params_after"] == pruned.report["params_before"]
    assert all(u["kept"] == u["total"] for u in pruned.plan["units"])


def test_block_influence_removes_blocks_at_low_ratio(tiny_vit, data):
    pruned = _run(tiny_vit, data, method="block-influence", ratio=0.35, steps=1)
    assert len(pruned.loaded.adapter.blocks(pruned.loaded.model)) < 3
    dead = [u for u in pruned.plan["units"] if u["kept"] == 0]
    assert dead and len(dead) % 2 == 0  # a removed block drops its attn and its mlp unit
    assert abs(pruned.report["params_ratio"] - 0.35) <= 0.01


@pytest.mark.parametrize("method", ["hei", "random"])
def test_same_seed_same_plan(method, tiny_vit, data):
    a = _run(tiny_vit, data, method=method, seed=3)
    b = _run(tiny_vit, data, method=method, seed=3)
    assert a.plan == b.plan
    assert a.report["params_after"] == b.report["params_after"]
    assert a.report["after"] == b.report["after"]
    for pa, pb in zip(a.loaded.model.parameters(), b.loaded.model.parameters()):
        assert torch.equal(pa, pb)


def test_different_seed_changes_random_plan(tiny_vit, data):
    a = _run(tiny_vit, data, method="random", seed=0, steps=1)
    b = _run(tiny_vit, data, method="random", seed=1, steps=1)
    assert a.plan["keep"] != b.plan["keep"]


def test_same_seed_same_plan_json_files(tiny_vit, image_folder, tmp_path):
    """Through the files the CLI writes: plan.json compares equal as dicts."""
    from pocketsize.compress import write_outputs

    for name in ("a", "b"):
        write_outputs(prune(_loaded(tiny_vit), str(image_folder), dataclasses.replace(FAST, seed=5)), tmp_path / name)
    pa, pb = (json.loads((tmp_path / n / "plan.json").read_text()) for n in ("a", "b"))
    assert pa == pb and pa["seed"] == 5


# --- config ------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_config_rejects_ratio_outside_unit_interval(ratio):
    with pytest.raises(BadInput, match="ratio"):
        PruneConfig(ratio=ratio)


def test_config_rejects_unknown_method_listing_valid():
    with pytest.raises(BadInput) as e:
        PruneConfig(method="nope")
    assert all(m in str(e.value) for m in METHODS)
    with pytest.raises(BadInput):
        get_method("nope")


def test_config_roundtrips_through_json():
    cfg = PruneConfig(ratio=0.35, method="hei", seed=7, buffer=False, hei=HeiOptions(beta=0.5))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["version"] == 7 and d["lm"]["qat_group"] is None and d["teacher"] == "base" and d["recovery_loss"] == "logits"
    assert d["hei"] == {"beta": 0.5, "betas": [0.3, 0.0, 1.0], "score": "loss"}
    assert PruneConfig.from_dict(d) == cfg
    with pytest.raises(BadInput, match="unknown PruneConfig keys"):
        PruneConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ratio = 0.2  # type: ignore[misc]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine, not in CI)")
@pytest.mark.parametrize("method", sorted(METHODS))
def test_cuda_prune_matches_cpu_and_returns_on_cpu(tiny_vit, data, method):
    """The device only moves the arithmetic: the kept ratio, the same widths where
    the allocation is data-independent, and a model that comes back on the CPU."""
    cpu = _run(tiny_vit, data, method=method)
    gpu = _run(tiny_vit, data, method=method, device="cuda")
    assert all(p.device.type == "cpu" for p in gpu.loaded.model.parameters())
    assert abs(gpu.report["params_ratio"] - 0.5) <= 0.01
    if method not in ("hei", "block-influence"):  # uniform allocations: widths do not depend on the data
        assert [u["kept"] for u in gpu.plan["units"]] == [u["kept"] for u in cpu.plan["units"]]
    assert abs(gpu.report["after"] - cpu.report["after"]) <= 0.2


def test_device_auto_resolves_and_missing_accelerator_is_bad_input():
    from pocketsize.compress.pruning import resolve_device

    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="--torch-device cpu"):
            resolve_device("cuda")
    with pytest.raises(BadInput, match="cuda, cuda:N"):
        PruneConfig(device="tpu")


@pytest.mark.parametrize("score", ["loss", "cond", "pred"])
def test_hei_score_variants_hit_the_ratio_and_contrast_with_generic(tiny_vit, data, score):
    """Every entropy-increase estimator plans a model at the ratio, with and
    without generic contrast data (here: the user's own images, mirrored)."""
    import copy as _copy

    generic = _copy.deepcopy(data)
    generic.train.x = generic.train.x.flip(-1)
    cfg = dataclasses.replace(FAST, hei=HeiOptions(score=score, beta=0.6))
    for gen in (None, generic):
        res = prune(_loaded(tiny_vit), data, cfg, generic=gen)
        assert abs(res.report["params_ratio"] - 0.5) <= 0.01
        assert all(math.isfinite(u["score"]) for u in res.plan["units"] if u["score"] is not None)


def test_unknown_hei_score_is_bad_input(tiny_vit, data):
    with pytest.raises(BadInput, match="--hei-score 'vibes' is not one of loss, cond, pred"):
        _run(tiny_vit, data, hei=HeiOptions(score="vibes"))


@pytest.mark.parametrize("kind", ["timm", "hf-dinov2-cls"])
def test_taylor_scores_come_from_torch_pruning_and_equal_the_criterion(tiny_vit, data, kind):
    """`taylor` goes through torch-pruning's DependencyGraph + GroupTaylorImportance;
    per head and per channel that is |w * dL/dw| summed over the coupled layers."""
    import torch.nn.functional as F

    from pocketsize.compress.methods import StepContext, _taylor

    loaded = _loaded(tiny_vit, kind)
    if kind == "timm":
        loaded.adapter.set_num_classes(loaded.model, data.labels)
    x, y = data.train.normalized()[:8], data.train.y[:8] % loaded.adapter.num_classes(loaded.model)
    got = _taylor(StepContext(loaded, x, y, None, FAST, seed=0))
    ad, model = loaded.adapter, loaded.model
    model.zero_grad()
    F.cross_entropy(ad.logits(model, x[:8]), y[:8]).backward()  # one batch of 16 covers all 8 samples
    t = lambda p: (p.detach() * p.grad).abs()  # noqa: E731
    for blk, (h, c) in zip(ad.blocks(model), got):
        s = ad.block_shape(blk)
        want_h = sum(ad.head_weight_view(blk, lin, t(lin.weight)).sum(dim=(0, 2, 3)) for lin in ad.head_in(blk))
        wo = ad.head_out(blk).weight
        want_h = want_h + t(wo).reshape(wo.shape[0], s.heads, s.head_dim).sum(dim=(0, 2))
        want_c = t(ad.mlp_in(blk)[0].weight).sum(1) + t(ad.mlp_out(blk).weight).sum(0)
        assert torch.allclose(h, want_h, rtol=1e-4, atol=1e-8)
        assert torch.allclose(c, want_c, rtol=1e-4, atol=1e-8)


def test_hei_auto_beta_records_its_choice_and_hits_the_ratio(tiny_vit, data):
    """--hei-beta auto through the real step loop: every accepted step records
    the strengths it tried, their validation harm and the one it kept, and the
    kept plan is the one the loop measured (the ratio and the report agree)."""
    cfg = dataclasses.replace(FAST, hei=HeiOptions(beta="auto", betas=(0.3, 0.0, 1.0)))
    pruned = prune(_loaded(tiny_vit), data, cfg)
    assert abs(pruned.report["params_ratio"] - 0.5) <= 0.01
    accepted = [s for s in pruned.report["steps"] if s["accepted"]]
    assert accepted
    for s in accepted:
        auto = s["planner"]["auto"]
        assert auto["tried"] == [0.3, 0.0, 1.0] and len(auto["validation_harm"]) == 3
        best = min(auto["validation_harm"])
        assert s["planner"]["beta"] == auto["tried"][auto["validation_harm"].index(best)]
    assert json.loads(json.dumps(pruned.report["config"]))["hei"]["beta"] == "auto"


def test_references_are_the_base_and_the_unpruned_model_after_the_same_recovery(tiny_vit, data, monkeypatch):
    """references.finetuned is the *unpruned* model trained with the whole recovery
    budget of the run (same recipe), evaluated on the same held-out split; off, it is null."""
    from pocketsize.compress import train

    calls = []
    real = train.recover

    def spy(student, teacher, split, steps, *a, **k):
        calls.append((count_params(student.model), steps, k.get("stage")))
        return real(student, teacher, split, steps, *a, **k)

    monkeypatch.setattr(train, "recover", spy)
    loaded = _loaded(tiny_vit)
    n = None
    pruned = prune(loaded, data, dataclasses.replace(FAST, recovery_steps=4))
    n = pruned.report["params_before"]
    refs = pruned.report["references"]
    assert refs["base"] == pruned.report["before"] and 0.0 <= refs["finetuned"] <= 1.0
    assert (n, 4, "fine-tuned reference") in calls  # the whole budget, on the unpruned model
    assert count_params(loaded.model) == n  # the caller's model was not trained or cut
    calls.clear()
    off = prune(_loaded(tiny_vit), data, dataclasses.replace(FAST, finetuned_reference=False))
    assert off.report["references"] == {"base": off.report["before"], "finetuned": None}
    assert all(stage != "fine-tuned reference" for _, _, stage in calls)


def test_general_text_is_refused_for_an_image_model(tiny_vit, data, tmp_path):
    from pocketsize.compress.config import LMOptions

    with pytest.raises(BadInput, match="--lm-general-text applies to language models only"):
        prune(_loaded(tiny_vit), data, dataclasses.replace(FAST, lm=LMOptions(general_text=str(tmp_path))))


@pytest.mark.parametrize("reference", [True, False])
def test_teacher_finetuned_distills_from_the_trained_reference(tiny_vit, data, monkeypatch, reference):
    """--teacher finetuned: every recovery of the pruned model distills from the reference
    the run trained first (even with --no-finetuned-reference, which then still reports it);
    --teacher base distills from the untrained copy, as before."""
    from pocketsize.compress import train

    teachers = {}
    real = train.recover

    def spy(student, teacher, split, steps, *a, **k):
        stage = k.get("stage")
        teachers[stage] = teacher
        out = real(student, teacher, split, steps, *a, **k)
        if stage == "fine-tuned reference":
            teachers["trained"] = student
        return out

    monkeypatch.setattr(train, "recover", spy)
    cfg = dataclasses.replace(FAST, recovery_steps=4, teacher="finetuned", finetuned_reference=reference)
    pruned = prune(_loaded(tiny_vit), data, cfg)
    recov = [t for stage, t in teachers.items() if stage.startswith("recovery")]
    assert recov and all(t is teachers["trained"] for t in recov)
    assert pruned.report["references"]["finetuned"] is not None
    assert pruned.report["config"]["teacher"] == "finetuned"
    teachers.clear()
    prune(_loaded(tiny_vit), data, dataclasses.replace(cfg, teacher="base"))
    recov = [t for stage, t in teachers.items() if stage.startswith("recovery")]
    assert recov and all(t is recov[0] and t is not teachers.get("trained") for t in recov)
    assert ("fine-tuned reference" in teachers) == reference
    if reference:  # the base copy taught the reference too
        assert teachers["fine-tuned reference"] is recov[0]


def test_without_distillation_the_unpruned_model_still_comes_back(tiny_vit, data):
    """``distill=False`` drops the teacher from the recovery, not the unpruned model that
    ``pocketsize run`` exports as the original (it crashed on None before)."""
    out = prune(_loaded(tiny_vit), data, dataclasses.replace(FAST, distill=False, finetuned_reference=False))
    assert out.teacher is not None
    assert count_params(out.teacher.model) == out.report["params_before"] > count_params(out.loaded.model)
