"""--target-latency: the latency model (measured block grid -> predicted p50),
the allocator meeting a latency instead of a parameter count, and the CLI.

The allocator tests use hand-written latency tables (fast, exact); the
profile tests measure a tiny ViT's grid with the real ONNX Runtime runner on
this host, with a shortened grid.
"""

from __future__ import annotations

import json

import pytest


from cli_helpers import cli  # tests/ is on sys.path
from pocketsize.errors import BadInput, TargetNotMet
from pocketsize.latency import LatencyModel, Signature, friendly_multiple

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
QUICK = dict(steps=2, recovery_steps=2, probe_epochs=2, finetuned_reference=False)
SIG = Signature(blocks=3, heads=4, mlp_hidden=256, dim=64, input_shape=(1, 3, 32, 32))  # the tiny timm ViT


def table(base: float = 1.0, scale: float = 1.0) -> LatencyModel:
    """A hand-written latency model for the tiny timm ViT: heads cost 0.5 ms each, 64 channels 0.5 ms."""
    return LatencyModel(SIG, {"kind": "local", "name": "test"}, "onnx", 1, base,
                        attn={1: 1.0, 2: 1.5, 3: 2.0, 4: 2.5}, mlp={8: 0.6, 64: 1.0, 128: 1.5, 192: 2.0, 256: 2.5},
                        measured_p50_ms=8.5, scale=scale)


def test_prediction_is_separable_interpolated_and_round_trips():
    lm = table()
    assert lm.unpruned_ms() == pytest.approx(1.0 + 3 * 2.5)
    assert lm.block_ms(2, 128) == pytest.approx(1.5 + 1.5 - 2.5)
    assert lm.block_ms(4, 96) == pytest.approx(1.25)  # halfway between 64 and 128
    assert lm.predict([(4, 256)] * 3, removed=[1]) == pytest.approx(1.0 + 2 * 2.5)
    assert lm.block_ms(1, 1) == pytest.approx(lm.block_ms(1, 8))  # clamped below the grid, never extrapolated
    again = LatencyModel.from_dict(json.loads(json.dumps(lm.to_dict())))
    assert again == lm
    with pytest.raises(BadInput, match="measure it again"):
        LatencyModel.from_dict({"signature": {}})


def test_friendly_multiple_sees_a_tiling_tax():
    grid = {64: 0.64, 128: 1.28, 256: 2.56}
    assert friendly_multiple({**grid, 120: 1.2, 248: 2.48}, [120, 248]) == 8
    assert friendly_multiple({**grid, 120: 1.5, 248: 2.9}, [120, 248]) == 16  # both slower than 128 / 256
    assert friendly_multiple({**grid, 112: 1.5, 120: 1.5}, [112, 120]) == 32  # 112 = 16 x 7 is taxed too
    assert friendly_multiple({**grid, 120: 1.3}, [120]) == 8  # 1.6% slower: inside the noise margin


def test_solve_meets_a_latency_target(user):
    from pocketsize.compress.allocate import Budget, solve
    from pocketsize.loading import load_model

    loaded = load_model(str(user[0]))
    budget = Budget.of(loaded, table())
    assert budget.full == pytest.approx(8.5)
    for target in (7.0, 5.0, 3.5):
        counts = solve(budget, target, [1.0, 2.0, 0.5])
        got = budget.latency.predict(counts)
        assert got <= target + 1e-9 and got > target - 0.5, (target, counts, got)
    # a parameter budget is untouched by the latency model's absence
    plain = Budget.of(loaded)
    assert plain.cost(list(zip(plain.heads, plain.chans))) == plain.total


@pytest.fixture(scope="module")
def user(tmp_path_factory, image_folder_factory, tiny_vit):
    from timm.models import save_for_hf

    model = tmp_path_factory.mktemp("m")
    save_for_hf(tiny_vit("timm", num_classes=3), model, safe_serialization=True)
    return model, image_folder_factory(classes=3, per_class=12, seed=3)


def test_prune_to_a_latency_target(user):
    from pocketsize.compress import PruneConfig, prune

    model, data = user
    out = prune(str(model), str(data), PruneConfig(target_latency_ms=5.0, latency=table().to_dict(), **QUICK))
    lat = out.report["latency"]
    assert 4.5 < lat["predicted_ms"] <= 5.0 * 1.01
    assert lat["predicted_before_ms"] == pytest.approx(8.5)
    assert all("predicted_ms" in s for s in out.report["steps"] if s["accepted"])
    assert out.report["params_ratio"] < 0.9


def test_unreachable_or_pointless_latency_targets_fail_in_one_line(user):
    from pocketsize.compress import PruneConfig, prune

    model, data = user
    with pytest.raises(TargetNotMet, match=r"below the fastest plan.*use --target-latency"):
        prune(str(model), str(data), PruneConfig(target_latency_ms=0.5, latency=table().to_dict(), **QUICK))
    with pytest.raises(BadInput, match=r"already runs in 8.50 ms"):
        prune(str(model), str(data), PruneConfig(target_latency_ms=9.0, latency=table().to_dict(), **QUICK))
    other = table().to_dict()
    other["signature"]["input_shape"] = [1, 3, 64, 64]
    with pytest.raises(BadInput, match="measured for 3 blocks"):
        prune(str(model), str(data), PruneConfig(target_latency_ms=5.0, latency=other, **QUICK))
    with pytest.raises(BadInput, match="needs a latency model"):
        prune(str(model), str(data), PruneConfig(target_latency_ms=5.0, **QUICK))


@pytest.fixture(scope="module")
def measured(user, tmp_path_factory):
    """The tiny model's latency model, measured once on this host with ONNX Runtime
    (a shortened grid), in a private cache folder."""
    from pocketsize import latency_grid
    from pocketsize.loading import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(latency_grid, "MLP_GRID", 4)
        lm = latency_grid.profile(load_model(str(user[0])), "local", "onnx", 1)
        yield lm, mp


def test_profile_measures_the_grid_on_the_device_and_caches_it(measured, user):
    from pocketsize import latency_grid
    from pocketsize.loading import load_model

    lm, mp = measured
    assert lm.signature == SIG and lm.runtime == "onnx" and lm.runtime_version
    assert set(lm.attn) == {1, 2, 3, 4} and max(lm.mlp) == 256 and len(lm.mlp) >= 4
    assert lm.device["kind"] == "local" and lm.measured_p50_ms > 0
    # base and scale are a least-squares fit (free intercept) over six whole models, the
    # unpruned one first: its prediction is its fitted value and the residuals sum to 0.
    # How close predictions come to measurements is a benchmark (experiments.latency
    # --stage model), not a unit test: on a busy 2-core host a 0.2 ms model moves by 25%.
    note = next(n for n in lm.notes if n.startswith("calibration models"))
    pairs = [tuple(map(float, p.split("/"))) for p in note.split(": ", 1)[1].split(", ")]
    assert len(pairs) == 6 and pairs[0][0] == pytest.approx(lm.measured_p50_ms, abs=0.005)
    assert lm.unpruned_ms() == pytest.approx(pairs[0][1], abs=0.005)
    assert sum(m - f for m, f in pairs) == pytest.approx(0.0, abs=0.01 * len(pairs))  # 2-decimal rounding

    def boom(*a, **k):
        raise AssertionError("measured again instead of reading the cache")

    mp.setattr(latency_grid, "measure", boom)
    assert latency_grid.profile(load_model(str(user[0])), "local", "onnx", 1) == lm


def test_profile_refuses_emulated_devices_and_language_models(user, tiny_vit):
    from pocketsize import latency_grid
    from pocketsize.loading import load_model

    with pytest.raises(BadInput, match="emulated"):
        latency_grid.profile(load_model(str(user[0])), "qemu-aarch64", "onnx", 1)
    with pytest.raises(BadInput, match="--runtime"):
        latency_grid.profile(load_model(str(user[0])), "local", "tflite", 1)




def test_interleave_runner_alternates_models_and_reverses_the_order():
    """benchmarks/runner/interleave.py: every model gets a block of inferences in every
    round, in turn, and every other round in reverse, so a host state hits all alike."""
    from pocketsize.benchmarks.runner.interleave import interleaved

    calls = []
    infers = [lambda x, i=i: calls.append(i) for i in range(3)]
    times = interleaved(infers, None, rounds=2, block=2, warmup=1)
    assert [len(t) for t in times] == [2, 2, 2] and all(t >= 0 for ts in times for t in ts)
    assert calls == [0, 1, 2] + [0, 0, 1, 1, 2, 2] + [2, 2, 1, 1, 0, 0]


@pytest.mark.parametrize("runtime", ["onnx", "executorch"])
def test_time_counts_interleaved_in_one_process(user, runtime):
    """The equal-MACs comparison's timing: real artifacts of two widths, one local process."""
    from pocketsize import latency_grid
    from pocketsize.loading import load_model

    loaded = load_model(str(user[0]))
    counts = [[(4, 256)] * 3, [(1, 64)] * 3]
    times = latency_grid.time_counts(loaded, counts, "local", runtime, 1, rounds=3, interleave=2)
    assert [len(t) for t in times] == [3, 3] and all(t > 0 for ts in times for t in ts)
    with pytest.raises(BadInput, match="local device only"):
        latency_grid.time_counts(loaded, counts, "qemu-aarch64", runtime, 1, rounds=1, interleave=2)


def reachable(lm: LatencyModel) -> float:
    """Halfway between the fastest plan (every block at one head and one channel group,
    as compress's floor) and the unpruned model, on this host's measured grid: a fixed
    fraction of the unpruned p50 can fall below the floor when the host is busy, since a
    tiny ViT's time is mostly fixed cost."""
    narrow = lm.predict([(1, max(8, lm.multiple))] * lm.signature.blocks)
    return round((narrow + lm.unpruned_ms()) / 2, 3)


def test_cli_compress_to_a_latency(measured, user, tmp_path, capsys):
    lm, _ = measured
    model, data = user
    target = reachable(lm)
    rc, out, err = cli(["compress", model, "--data", data, "--out", tmp_path / "c", "--target-latency", target,
                         "--steps", "2", "--recovery-steps", "2", "--no-finetuned-reference"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "c" / "compress_report.json").read_text())
    assert report["latency"]["predicted_ms"] <= target * 1.01
    assert "latency (onnx, 1 thread(s)): target" in err


def test_cli_refuses_ratio_and_latency_together(user, tmp_path, capsys):
    model, data = user
    rc, _, err = cli(["compress", model, "--data", data, "--out", tmp_path / "c", "--ratio", "0.5",
                       "--target-latency", "3"], capsys)
    assert rc == 2 and "not both" in err and not (tmp_path / "c").exists()
    rc, _, err = cli(["compress", model, "--data", data, "--out", tmp_path / "c", "--target-latency", "-1"],
                      capsys)
    assert rc == 2 and "--target-latency -1" in err


def test_cli_run_reports_target_predicted_and_measured(measured, user, tmp_path, capsys):
    lm, _ = measured
    model, data = user
    target = reachable(lm)
    common = ["--data", data, "--target-latency", target, "--steps", "2", "--recovery-steps", "2",
              "--no-finetuned-reference", "--warmup", "1", "--iterations", "5"]
    rc, _, err = cli(["run", model, "--out", tmp_path / "bad", "--to", "onnx", "--runtime", "executorch", *common],
                      capsys)
    assert rc == 2 and "--runtime executorch is not exported" in err and not (tmp_path / "bad").exists()
    rc, _, err = cli(["run", model, "--out", tmp_path / "r", "--to", "onnx", *common], capsys)
    assert rc == 0, err
    lat = json.loads((tmp_path / "r" / "summary.json").read_text())["latency"]
    assert lat["target_ms"] == target and lat["predicted_ms"] <= target * 1.01
    assert lat["measured_ms"] > 0 and lat["original_measured_ms"] > 0 and lat["runtime"] == "onnx"
    assert "measured" in err and "target" in err
