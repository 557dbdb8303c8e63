"""compress adapters on tiny random ViTs of every family: structural edits keep the
forward pass working and compute what masking the removed units computes, the
parameter count is exactly what the budget predicts, and a saved model reloads
(from stock classes) with the same parameters and identical outputs."""

from __future__ import annotations

import json

import pytest
import torch

from pocketsize import compress
from pocketsize.compress.allocate import Budget
from pocketsize.compress import write_outputs
from pocketsize.compress.config import PruneConfig
from pocketsize.loading import META_FILE, WEIGHTS_FILE, Loaded, save_model_dir
from pocketsize.models import adapter_for, adapter_names, get_adapter
from pocketsize.compress.plan import Plan, apply_plan, count_params
from pocketsize.compress import prune
from conftest import TINY_VIT_KINDS
from pocketsize.errors import BadInput

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

FAMILY = {"timm": "timm-vit", "timm-dinov2-reg": "timm-vit", "hf-vit": "hf-vision", "hf-vit-model": "hf-vision", "hf-deit": "hf-vision",
          "hf-dinov2": "hf-vision", "hf-dinov2-cls": "hf-vision"}
FAST = PruneConfig(ratio=0.5, recovery_steps=2, calib_samples=8, probe_epochs=2, steps=2)


def _loaded(model) -> Loaded:
    ad = adapter_for(model)
    return Loaded(model, ad, {"source": "tiny", "preprocessing": ad.preprocessing(model)})


def _x(loaded: Loaded, n: int = 2, seed: int = 0) -> torch.Tensor:
    c, h, w = loaded.adapter.preprocessing(loaded.model)["input_size"]
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _out(model, x: torch.Tensor) -> torch.Tensor:
    """What the model computes: logits, or the last hidden state of a bare backbone."""
    model.eval()
    if type(model).__module__.startswith("transformers."):
        o = model(pixel_values=x)
        return o.logits if hasattr(o, "logits") else o.last_hidden_state
    return model(x)


def _nonuniform_plan(loaded: Loaded, removed=(1,), seed: int = 0) -> tuple[Plan, list[tuple[int, int]]]:
    """Different (non-contiguous, shuffled) heads and channels kept in every block."""
    ad = loaded.adapter
    g = torch.Generator().manual_seed(seed)
    shapes = [ad.block_shape(b) for b in ad.blocks(loaded.model)]
    counts = []
    for l, s in enumerate(shapes):
        counts.append((max(1, s.heads - 1 - (l % 2) * (s.heads // 2)), max(8, s.mlp_hidden // (l + 2))))
    keep = [l for l in range(len(shapes)) if l not in removed]
    heads = {l: sorted(torch.randperm(shapes[l].heads, generator=g)[: counts[l][0]].tolist()) for l in keep}
    chans = {l: sorted(torch.randperm(shapes[l].mlp_hidden, generator=g)[: counts[l][1]].tolist()) for l in keep}
    return Plan(keep, heads, chans), counts


def test_registry_lists_families_and_rejects_unknown():
    assert {"timm-vit", "hf-vision"} <= set(adapter_names())
    with pytest.raises(BadInput, match="valid"):
        get_adapter("not-a-family")
    with pytest.raises(BadInput, match="no adapter handles"):
        adapter_for(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", TINY_VIT_KINDS)
def test_adapter_matches_and_reads_shapes(kind, tiny_vit):
    loaded = _loaded(tiny_vit(kind))
    ad = loaded.adapter
    assert ad.name == FAMILY[kind]
    blocks = ad.blocks(loaded.model)
    assert len(blocks) == 3
    for b in blocks:
        s = ad.block_shape(b)
        assert (s.heads, s.head_dim) == (4, 16)
        assert s.mlp_hidden == ad.mlp_out(b).in_features == ad.mlp_in(b)[0].out_features
    # the recorded preprocessing matches what the patch embedding accepts
    feats = ad.features(loaded.model, _x(loaded))
    assert feats.shape[0] == 2 and torch.isfinite(feats).all()


@pytest.mark.parametrize("kind", TINY_VIT_KINDS)
def test_pruning_equals_masking(kind, tiny_vit):
    """Removing heads/channels computes exactly what zeroing their output
    projection columns computes in the unpruned model (right rows removed)."""
    model = tiny_vit(kind, num_classes=3)
    masked, pruned = _loaded(model), _loaded(tiny_vit(kind, num_classes=3))
    pruned.model.load_state_dict(model.state_dict())
    plan, _ = _nonuniform_plan(pruned, removed=())
    ad = masked.adapter
    with torch.no_grad():
        for l, blk in enumerate(ad.blocks(masked.model)):
            s = ad.block_shape(blk)
            drop_h = [h for h in range(s.heads) if h not in plan.heads[l]]
            for h in drop_h:
                ad.head_out(blk).weight[:, h * s.head_dim:(h + 1) * s.head_dim] = 0
            drop_c = [c for c in range(s.mlp_hidden) if c not in plan.channels[l]]
            ad.mlp_out(blk).weight[:, drop_c] = 0
    apply_plan(pruned, plan)
    x = _x(pruned)
    ref, got = _out(masked.model, x), _out(pruned.model, x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4), (got - ref).abs().max()
    for l, blk in enumerate(ad.blocks(pruned.model)):
        s = ad.block_shape(blk)
        assert (s.heads, s.mlp_hidden) == (len(plan.heads[l]), len(plan.channels[l]))


@pytest.mark.parametrize("kind", TINY_VIT_KINDS)
@pytest.mark.parametrize("removed", [(), (1,), (0, 2)])
def test_param_count_matches_budget(kind, removed, tiny_vit):
    loaded = _loaded(tiny_vit(kind, num_classes=3))
    budget = Budget.of(loaded)
    assert budget.total == count_params(loaded.model)
    plan, counts = _nonuniform_plan(loaded, removed=removed)
    predicted = budget.params(counts, removed)
    apply_plan(loaded, plan)
    assert count_params(loaded.model) == predicted
    assert len(loaded.adapter.blocks(loaded.model)) == 3 - len(removed)
    assert loaded.meta["params"] == predicted  # refresh_meta ran
    out = _out(loaded.model, _x(loaded))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", TINY_VIT_KINDS)
def test_unit_costs_are_exact(kind, tiny_vit):
    """One head / one MLP channel cost what removing it actually removes."""
    loaded = _loaded(tiny_vit(kind))
    ad = loaded.adapter
    blk = ad.blocks(loaded.model)[0]
    head_cost, chan_cost = ad.unit_costs(blk)
    s = ad.block_shape(blk)
    n0 = count_params(loaded.model)
    ad.prune_heads(blk, list(range(1, s.heads)))
    n1 = count_params(loaded.model)
    ad.prune_mlp(blk, list(range(8, s.mlp_hidden)))
    n2 = count_params(loaded.model)
    assert n0 - n1 == head_cost
    assert n1 - n2 == 8 * chan_cost


@pytest.mark.parametrize("kind", TINY_VIT_KINDS)
def test_save_load_roundtrip_nonuniform_and_removed_blocks(kind, tiny_vit, tmp_path):
    loaded = _loaded(tiny_vit(kind, num_classes=3))
    plan, _ = _nonuniform_plan(loaded, removed=(1,))
    apply_plan(loaded, plan)
    save_model_dir(loaded, tmp_path / "model")
    assert {p.name for p in (tmp_path / "model").iterdir()} == {WEIGHTS_FILE, META_FILE}
    meta = json.loads((tmp_path / "model" / META_FILE).read_text())
    assert meta["family"] == FAMILY[kind]
    assert [(s["heads"], s["mlp_hidden"]) for s in meta["layers"]] == [
        (len(plan.heads[l]), len(plan.channels[l])) for l in plan.keep_blocks]
    back = compress.load(tmp_path / "model")
    assert type(back) is type(loaded.model)
    assert type(back).__module__.split(".")[0] in ("timm", "transformers")  # stock classes
    assert count_params(back) == count_params(loaded.model) == meta["params"]
    x = _x(loaded, n=3, seed=1)
    assert torch.equal(_out(back, x), _out(loaded.model, x))


@pytest.mark.parametrize("kind", ["timm", "hf-vit", "hf-vit-model", "hf-dinov2", "hf-dinov2-cls"])
def test_prune_then_reload_is_identical(kind, tiny_vit, image_folder, tmp_path):
    """compress.prune -> write_outputs -> compress.load(DIR/model): exactly
    params_after parameters and identical outputs to the in-memory model."""
    num_classes = 5 if kind in ("hf-vit", "hf-dinov2-cls") else 0  # a head for the wrong classes, or none
    loaded = _loaded(tiny_vit(kind, num_classes=num_classes))
    pruned = prune(loaded, str(image_folder), FAST)
    rep = pruned.report
    assert abs(rep["params_ratio"] - 0.5) <= 0.01
    write_outputs(pruned, tmp_path)
    assert {"model", "plan.json", "compress_report.json"} <= {p.name for p in tmp_path.iterdir()}
    back = compress.load(tmp_path / "model")
    assert count_params(back) == rep["params_after"] == count_params(pruned.loaded.model)
    x = pruned.data.test.normalized(0, 4)
    ref = pruned.loaded.adapter.logits(pruned.loaded.model.eval(), x)
    got = _out(back, x)
    assert ref.shape == (4, 3)  # the user's three classes
    assert torch.equal(got, ref) or (got - ref).abs().max() < 1e-6
    # the reloaded model scores the same on the held-out split as the report says
    acc = (pruned.loaded.adapter.logits(back, pruned.data.test.normalized()).argmax(-1) == pruned.data.test.y)
    assert acc.float().mean().item() == pytest.approx(rep["after"])
    meta = json.loads((tmp_path / "model" / META_FILE).read_text())
    assert meta["labels"] == ["class_0", "class_1", "class_2"]
    assert meta["preprocessing"]["input_size"] == [3, 32, 32]
