"""Output reconstruction at the cut (compress/reconstruct.py, ``--reconstruct``): the kept inputs of
each output projection are refit by least squares on the step's calibration sample. The tests fail
if the refit degrades into the plain cut (no change), if it is wrong (the least-squares optimum on
the calibration tokens is checked against a direct solve), or if it misses a projection (heads of
a ViT and of a GQA language model, MLP channels, biases)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("torch_one_thread")]


def test_refit_is_the_least_squares_optimum():
    from pocketsize.compress.reconstruct import _augmented, refit_columns

    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 6, generator=g)
    x = torch.cat([z, z @ torch.randn(6, 6, generator=g) + 0.1 * torch.randn(400, 6, generator=g)], 1) + 0.5
    lin = torch.nn.Linear(12, 5)
    y = lin(x).detach()
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    a = _augmented(x, True).double()
    gram = a.T @ a
    before, bias_before = lin.weight.detach().clone(), lin.bias.detach().clone()
    refit_columns(lin, gram, keep, ridge=0.0)
    # the direct solve: kept inputs plus a constant fit the full output
    xa = torch.cat([x[:, keep], torch.ones(400, 1)], 1).double()
    sol = torch.linalg.lstsq(xa, y.double()).solution.T
    torch.testing.assert_close(lin.weight[:, keep].double(), sol[:, :-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lin.bias.double(), sol[:, -1], rtol=1e-4, atol=1e-4)
    drop = torch.tensor([i for i in range(12) if i not in keep.tolist()])
    assert torch.equal(lin.weight[:, drop], before[:, drop])  # the cut removes these next
    cut = x[:, keep] @ lin.weight[:, keep].T + lin.bias
    plain = x[:, keep] @ before[:, keep].T + bias_before  # the cut without the refit
    assert (cut - y).pow(2).mean() < 0.5 * (plain - y).pow(2).mean()


def _wrap(model):
    from pocketsize.loading import Loaded
    from pocketsize.models import adapter_for

    ad = adapter_for(model)
    meta = {"source": "tiny"}
    if hasattr(ad, "preprocessing"):
        meta["preprocessing"] = ad.preprocessing(model)
    return Loaded(model, ad, meta)


def _block_out_error(loaded, x, plan, grams):
    """Mean squared error of the final features after the cut, against the uncut model."""
    import copy

    from pocketsize.compress.plan import apply_plan
    from pocketsize.compress.reconstruct import compensate

    with torch.no_grad():
        ref = loaded.adapter.logits(loaded.model, x)
        cut = copy.deepcopy(loaded)
        if grams is not None:
            compensate(cut, plan, grams)
        apply_plan(cut, plan)
        return float((cut.adapter.logits(cut.model, x) - ref).pow(2).mean())


def _plan(loaded, heads_kept: int, frac: float):
    from pocketsize.compress.plan import Plan

    ad = loaded.adapter
    blocks = ad.blocks(loaded.model)
    heads, channels = {}, {}
    for i, b in enumerate(blocks):
        s = ad.block_shape(b)
        heads[i] = list(range(0, s.heads, s.heads // heads_kept))[:heads_kept]
        channels[i] = list(range(0, s.mlp_hidden, 2))[: int(s.mlp_hidden * frac)]
    return Plan(keep_blocks=list(range(len(blocks))), heads=heads, channels=channels)


@pytest.mark.parametrize("kind", ["timm-dinov2-reg", "hf-vit"])
def test_vit_cut_with_refit_is_closer_to_the_uncut_model(tiny_vit, kind):
    from pocketsize.compress.reconstruct import collect_grams

    loaded = _wrap(tiny_vit(kind, num_classes=3))
    size = 28 if kind.startswith("timm-dinov2") else 32
    x = torch.randn(48, 3, size, size, generator=torch.Generator().manual_seed(1))
    grams = collect_grams(loaded, x)
    assert grams.tokens == 48 * _tokens(loaded, x[:1])  # every token of every image
    plan = _plan(loaded, heads_kept=2, frac=0.5)
    plain, refit = _block_out_error(loaded, x, plan, None), _block_out_error(loaded, x, plan, grams)
    assert refit < 0.8 * plain, (refit, plain)


def _tokens(loaded, x):
    seen = []
    ad = loaded.adapter
    h = ad.mlp_out(ad.blocks(loaded.model)[0]).register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    with torch.no_grad():
        ad.logits(loaded.model, x)
    h.remove()
    return seen[0][:-1].numel()


def test_gqa_llm_cut_with_refit_is_closer(tmp_path):
    from lm_helpers import make_model
    from pocketsize.compress.llm import LMTask
    from pocketsize.compress.reconstruct import collect_grams

    loaded = _wrap(make_model("llama", 320, layers=2, mlp=256))
    LMTask().enter(loaded, None)
    x = torch.randint(0, 320, (16, 48), generator=torch.Generator().manual_seed(0))
    grams = collect_grams(loaded, x)
    assert grams.tokens == 16 * 48 and grams.attn[0].shape == (64, 64) and grams.mlp[0].shape == (256, 256)
    plan = _plan(loaded, heads_kept=1, frac=0.5)  # one of the two KV groups, half the channels
    plain, refit = _block_out_error(loaded, x, plan, None), _block_out_error(loaded, x, plan, grams)
    assert refit < 0.8 * plain, (refit, plain)


def test_prune_runs_the_refit_only_when_asked(tiny_vit, image_folder, monkeypatch):
    from pocketsize.compress import PruneConfig, prune
    from pocketsize.compress import reconstruct

    calls = []
    real = reconstruct.compensate
    monkeypatch.setattr("pocketsize.compress.steps.compensate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = dict(ratio=0.6, recovery_steps=0, steps=2, finetuned_reference=False, calib_samples=8, measurements=8)
    prune(_wrap(tiny_vit("timm")), str(image_folder), PruneConfig(**cfg))
    assert not calls
    r = prune(_wrap(tiny_vit("timm")), str(image_folder), PruneConfig(reconstruct=True, **cfg))
    assert calls and r.report["config"]["reconstruct"] is True


def test_language_models_refit_by_default(tmp_path):
    """``reconstruct=None`` is the task's default: on for a language model (measured), recorded in the report."""
    from lm_helpers import write_corpus
    from pocketsize.compress import LMOptions, PruneConfig, prune
    from pocketsize.loading import load_model

    corpus = write_corpus(tmp_path, ["llama"], layers=4, mlp=256)
    cfg = dict(ratio=0.8, recovery_steps=0, steps=1, finetuned_reference=False, calib_samples=8, measurements=8,
               lm=LMOptions(seq_len=32))
    on = prune(load_model(corpus / "llama"), str(corpus / "personal.txt"), PruneConfig(**cfg)).report
    off = prune(load_model(corpus / "llama"), str(corpus / "personal.txt"), PruneConfig(reconstruct=False, **cfg)).report
    assert on["config"]["reconstruct"] is None and on["reconstruct"] is True and off["reconstruct"] is False
    assert on["after"] != off["after"]
