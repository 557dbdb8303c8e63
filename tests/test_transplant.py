"""`--plan PLAN.json`: another run's per-block widths on this model and user.

The transplant control of personalization (user X's plan on user Y) and the
fleet feature (one artifact shape for many users): the widths come from the
plan, the units inside each block from this user's activations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketsize.cli import main

from cli_helpers import cli  # tests/ is on sys.path
from pocketsize.compress.transplant import Allocation

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
QUICK = ["--steps", "2", "--recovery-steps", "2"]




def _save_timm(tiny_vit, d: Path, **kw) -> Path:
    from timm.models import save_for_hf

    save_for_hf(tiny_vit("timm", num_classes=3, **kw), d, safe_serialization=True)
    return d


def _widths(plan: dict) -> list[tuple[str, int]]:
    return [(u["name"], u["kept"]) for u in plan["units"]]


@pytest.fixture(scope="module")
def user_x(tmp_path_factory, tiny_vit, image_folder_factory):
    """One compress run of user X (hei, keep 0.5): its model folder and plan."""
    model = _save_timm(tiny_vit, tmp_path_factory.mktemp("timm"))
    data = image_folder_factory(classes=3, per_class=12, seed=1)
    out = tmp_path_factory.mktemp("x") / "run"
    assert main([str(a) for a in ["compress", model, "--data", data, "--out", out, "--ratio", "0.5", *QUICK]]) == 0
    return model, out


def test_plan_transplants_the_widths_and_picks_units_for_this_user(user_x, image_folder_factory, tmp_path, capsys):
    model, x_run = user_x
    x_plan = json.loads((x_run / "plan.json").read_text())
    other = image_folder_factory(classes=3, per_class=12, seed=7, noise=60.0)  # user Y: other images
    rc, _, err = cli(["compress", model, "--data", other, "--out", tmp_path / "y", "--ratio", "0.5",
                       "--plan", x_run / "plan.json", *QUICK], capsys)
    assert rc == 0, err
    y_plan = json.loads((tmp_path / "y" / "plan.json").read_text())
    assert _widths(y_plan) == _widths(x_plan)  # the same shapes: one artifact layout serves both users
    assert y_plan["allocation_from"] == str(x_run / "plan.json")
    report = json.loads((tmp_path / "y" / "compress_report.json").read_text())
    assert abs(report["params_ratio"] - 0.5) <= 0.01


def test_plan_from_another_architecture_is_bad_input(user_x, tiny_vit, image_folder, tmp_path, capsys):
    _, x_run = user_x
    deeper = _save_timm(tiny_vit, tmp_path / "deeper")
    cfg = json.loads((deeper / "config.json").read_text())
    cfg["model_args"]["depth"] = 4  # 4 blocks instead of the plan's 3
    (deeper / "config.json").write_text(json.dumps(cfg))
    from timm.models import save_for_hf
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **cfg["model_args"])
    save_for_hf(m, deeper, safe_serialization=True)
    rc, _, err = cli(["compress", deeper, "--data", image_folder, "--out", tmp_path / "o",
                       "--plan", x_run / "plan.json", *QUICK], capsys)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "another architecture" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", ["{", '{"units": []}', '{"units": [{"name": "blocks.0.attn"}]}'])
def test_a_malformed_plan_is_bad_input(user_x, image_folder, tmp_path, capsys, content):
    model, _ = user_x
    bad = tmp_path / "plan.json"
    bad.write_text(content)
    rc, _, err = cli(["compress", model, "--data", image_folder, "--out", tmp_path / "o", "--plan", bad], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--plan" in err


def test_average_is_the_depth_prior():
    a = Allocation(((4, 4), (2, 4)), ((64, 128), (32, 128)), "a")
    b = Allocation(((2, 4), (2, 4)), ((128, 128), (0, 128)), "b")
    avg = Allocation.average([a, b], "prior")
    assert avg.heads == ((3, 4), (2, 4)) and avg.channels == ((96, 128), (16, 128)) and avg.source == "prior"
    assert Allocation.from_dict(avg.to_dict()) == avg
    with pytest.raises(Exception, match="different architectures"):
        Allocation.average([a, Allocation(((4, 6), (2, 4)), ((64, 128), (32, 128)))])


def test_weights_reproduce_the_recorded_widths_at_scale_one():
    """Solver scale t = 1 gives the recorded counts; a removed block is removed."""
    from pocketsize.compress.allocate import Budget

    budget = Budget([4, 4, 4], [128, 128, 128], [10.0] * 3, [2.0] * 3, [2000] * 3, 10000)
    alloc = Allocation(((4, 4), (1, 4), (0, 4)), ((128, 128), (32, 128), (0, 128)))
    chan_w, head_w, removed = alloc.weights_for(budget, [0, 1, 2])
    assert removed == [2]
    assert [round(w * 4) for w in head_w[:2]] == [4, 1] and [round(w * 128) for w in chan_w[:2]] == [128, 32]


def test_plan_dict_round_trips_through_json():
    import json

    from pocketsize.compress.plan import Plan

    plan = Plan([0, 2], {0: [1, 3], 2: [0]}, {0: [4, 5, 7], 2: [2]})
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
