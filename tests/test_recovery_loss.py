"""--recovery-loss: what the image recovery trains on (compress/train.py).

``match`` must stay function matching: new (flipped, mixed) inputs every step
and the teacher's features in the loss. These tests fail if it silently turns
back into the labelled-image recovery (``logits``)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pocketsize.compress import prune, train
from pocketsize.compress.config import PruneConfig
from pocketsize.data import load_image_data
from pocketsize.errors import BadInput
from pocketsize.loading import Loaded
from pocketsize.models import adapter_for


def _loaded(tiny_vit) -> Loaded:
    m = tiny_vit("timm")
    ad = adapter_for(m)
    return Loaded(m, ad, {"source": "tiny", "preprocessing": ad.preprocessing(m)})


@pytest.fixture(scope="module")
def data(image_folder, tiny_vit):
    return load_image_data(image_folder, _loaded(tiny_vit).meta["preprocessing"], seed=0)


@pytest.fixture
def pair(tiny_vit, data):
    """A personalized teacher and a student whose blocks were knocked off it (not the head)."""
    teacher = _loaded(tiny_vit)
    train.fit_head(teacher, data.train, data.val, data.labels, epochs=2)
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in torch.nn.ModuleList(student.adapter.blocks(student.model)).parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    return teacher, student


def _feature_gap(student: Loaded, teacher: Loaded, split) -> float:
    return train.feature_mse(train._features(student, split), train._features(teacher, split)).item()


def _seen_inputs(loaded: Loaded, monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    ad = loaded.adapter
    for name in ("features", "logits"):
        real = getattr(ad, name)

        def spy(model, x, _real=real):
            if model is loaded.model:
                seen.append(x.detach().clone())
            return _real(model, x)

        monkeypatch.setattr(ad, name, spy)
    return seen


def _is_training_image(x: torch.Tensor, split) -> bool:
    pool = torch.cat([xb for xb, _ in split.batches(64)])
    return bool((pool - x).flatten(1).abs().amax(1).min() < 1e-5)


def test_match_trains_on_new_inputs_and_logits_on_the_users_images(pair, data, monkeypatch):
    teacher, student = pair
    for loss, fresh in (("match", True), ("logits", False)):
        s = copy.deepcopy(student)
        seen = _seen_inputs(s, monkeypatch)
        train.recover(s, teacher, data.train, 2, 1e-4, 1e-4, 8, seed=0, loss=loss)
        monkeypatch.undo()
        images = [x for batch in seen for x in batch]
        assert images
        new = sum(not _is_training_image(x, data.train) for x in images)
        assert (new > len(images) // 2) if fresh else new == 0, (loss, new, len(images))


def test_match_pulls_the_features_back_to_the_teacher(pair, data):
    teacher, student = pair
    before = _feature_gap(student, teacher, data.train)
    train.recover(student, teacher, data.train, 30, 3e-4, 1e-4, 8, seed=0, loss="match")
    after = _feature_gap(student, teacher, data.train)
    assert after < 0.6 * before, (before, after)


def test_match_without_a_teacher_trains_on_mixed_labels(pair, data):
    _, student = pair
    losses = train.recover(student, None, data.train, 3, 1e-4, 1e-4, 8, seed=0, loss="match")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_feature_mse_is_in_units_of_the_teachers_spread():
    t = torch.randn(16, 8)
    assert train.feature_mse(t, t).item() == 0.0
    # the same relative error costs the same at any scale of the features
    a = train.feature_mse(t + 0.1, t).item()
    b = train.feature_mse(10 * (t + 0.1), 10 * t).item()
    assert a == pytest.approx(b, rel=1e-5)


def test_recovery_loss_reaches_the_pruned_models_recovery(tiny_vit, data, monkeypatch):
    losses = []
    real = train.recover

    def spy(*a, **k):
        losses.append((k.get("stage"), k.get("loss")))
        return real(*a, **k)

    monkeypatch.setattr(train, "recover", spy)
    cfg = PruneConfig(ratio=0.5, recovery_steps=2, calib_samples=8, probe_epochs=2, steps=2, recovery_loss="match")
    pruned = prune(_loaded(tiny_vit), data, cfg)
    assert losses and all(loss == "match" for _, loss in losses)
    assert {stage for stage, _ in losses} >= {"fine-tuned reference", "recovery 2/2"}
    assert pruned.report["config"]["recovery_loss"] == "match"


def test_bad_recovery_loss_is_one_line_naming_the_choices():
    with pytest.raises(BadInput, match=r"--recovery-loss 'mse' is not one of logits, match"):
        PruneConfig(recovery_loss="mse")


def test_cli_flag_sets_the_config():
    import argparse

    from pocketsize.cli.compress import add_prune_args, config_from_args

    p = argparse.ArgumentParser()
    add_prune_args(p, ["hei"])
    assert config_from_args(p.parse_args([])).recovery_loss == "logits"
    assert config_from_args(p.parse_args(["--recovery-loss", "match"])).recovery_loss == "match"


def test_language_models_refuse_it():
    from pocketsize.compress.llm import LMTask

    cfg = dataclasses.replace(PruneConfig(), recovery_loss="match")
    with pytest.raises(BadInput, match="--recovery-loss match applies to image models"):
        LMTask().check(None, None, cfg)
