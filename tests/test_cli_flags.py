"""Every stage flag is declared once and offered by `run` and `demo`; PruneConfig's
typed options round-trip and reject bad values naming the flag."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from pocketsize.cli import build_parser, main
from pocketsize.compress.config import HeiOptions, LMOptions, PruneConfig
from pocketsize.errors import BadInput

# flags that belong to one command, not to its stage: each command declares its own
OWN = {"--data", "--out", "--help"}
# `run`/`demo` bench exactly what they export (--to), so bench's --formats has no job there
NOT_IN_RUN = {"--formats"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings if s.startswith("--") and s not in OWN}


@pytest.mark.parametrize("stage", ["compress", "export", "bench"])
@pytest.mark.parametrize("whole", ["run", "demo"])
def test_every_stage_flag_is_offered_by_run_and_demo(stage, whole):
    parsers = _subparsers()
    stage_flags, whole_flags = _flags(parsers[stage]), _flags(parsers[whole])
    missing = set(stage_flags) - set(whole_flags) - NOT_IN_RUN
    assert not missing, f"`pocketsize {whole}` lacks {stage}'s {sorted(missing)}"
    for flag, a in stage_flags.items():
        if flag in NOT_IN_RUN:
            continue
        b = whole_flags[flag]
        # declared once: same destination, type, choices and action; the same default except
        # --to, which `export` requires and `run`/`demo` default
        assert (a.dest, a.type, a.choices, type(a)) == (b.dest, b.type, b.choices, type(b)), flag
        if flag != "--to":
            assert a.default == b.default, (flag, a.default, b.default)


def test_no_flag_of_run_is_unknown_to_the_stages():
    """run/demo add nothing of their own beyond what the stages declare."""
    parsers = _subparsers()
    stage = set().union(*(_flags(parsers[s]) for s in ("compress", "export", "bench")))
    for whole in ("run", "demo"):
        assert set(_flags(parsers[whole])) <= stage, sorted(set(_flags(parsers[whole])) - stage)


def test_help_shows_the_config_defaults():
    from pocketsize.benchmarks.config import BenchConfig
    from pocketsize.export import ExportConfig

    parsers = _subparsers()
    b, e, c = BenchConfig(), ExportConfig(), PruneConfig()
    expect = {"--timeout": f"{b.timeout_s:g}", "--threads": str(b.threads), "--warmup": str(b.warmup),
              "--parity-samples": str(e.parity_samples), "--calib-samples": str(e.calib_samples),
              "--coreml-target": e.coreml_target, "--recovery-steps": str(c.recovery_steps),
              "--hei-beta": str(c.hei.beta), "--hei-score": c.hei.score}
    for whole in ("run", "demo"):
        flags = _flags(parsers[whole])
        for flag, default in expect.items():
            assert f"default {default}" in flags[flag].help, (whole, flag, flags[flag].help)


def test_defaults_through_run_are_the_config_defaults(tmp_path):
    from pocketsize.benchmarks.config import BenchConfig
    from pocketsize.cli.bench import bench_config_from_args
    from pocketsize.cli.compress import config_from_args
    from pocketsize.cli.export import export_config_from_args
    from pocketsize.export import ExportConfig

    for argv in (["run", "M", "--data", "d", "--out", "o"], ["demo"]):
        args = build_parser().parse_args(argv)
        assert config_from_args(args) == PruneConfig()
        assert bench_config_from_args(args) == BenchConfig()
        to = ("executorch", "onnx") if argv[0] == "run" else ("executorch", "onnx", "coreml")
        assert export_config_from_args(args) == ExportConfig(targets=to)


def test_run_and_demo_pass_every_stage_option_to_the_pipeline(tmp_path, monkeypatch, capsys):
    import pocketsize.cli.run as cli_run

    seen = []

    class Stop(Exception):
        pass

    def fake_run(*a, **k):
        seen.append((a, k))
        raise Stop

    monkeypatch.setattr(cli_run, "run", fake_run)
    monkeypatch.setattr(cli_run, "demo_data", lambda: tmp_path / "demo-data")
    generic = tmp_path / "generic"
    generic.mkdir()
    (tmp_path / "demo-data").mkdir()
    flags = ["--threads", "2", "--timeout", "5", "--eval-samples", "3", "--min-duration", "0.5",
             "--warmup", "1", "--iterations", "2", "--prompt-tokens", "8", "--decode-tokens", "4",
             "--to", "onnx", "--quantize", "int8", "--parity-samples", "4", "--calib-samples", "5",
             "--int8-activations", "dynamic", "--coreml-target", "iOS18", "--no-xnnpack-rewrites",
             "--ratio", "0.6", "--seed", "3", "--steps", "2", "--recovery-steps", "4", "--uniform",
             "--image-size", "64", "--hei-beta", "0.6", "--hei-score", "pred", "--generic", str(generic),
             "--teacher", "finetuned"]
    for argv in (["run", "M", "--data", str(tmp_path), "--out", str(tmp_path / "o1")],
                 ["demo", "--out", str(tmp_path / "o2")]):
        assert main(argv + flags) == 1  # Stop: an unexpected error, after the configs were built
        a, k = seen.pop()
        cfg, e, b = a[3], k["export_config"], k["bench_config"]
        assert (cfg.ratio, cfg.seed, cfg.steps, cfg.recovery_steps, cfg.uniform, cfg.image_size) == \
            (0.6, 3, 2, 4, True, 64)
        assert cfg.hei == HeiOptions(beta=0.6, score="pred") and cfg.teacher == "finetuned"
        assert (e.targets, e.quantize, e.parity_samples, e.calib_samples, e.int8_activations, e.coreml_target,
                e.xnnpack_rewrites) == (("onnx",), "int8", 4, 5, "dynamic", "iOS18", False)
        assert e.data == (str(tmp_path) if argv[0] == "run" else str(tmp_path / "demo-data"))
        assert (b.threads, b.timeout_s, b.eval_samples, b.min_duration_s, b.warmup, b.iterations,
                b.prompt_tokens, b.decode_tokens, b.formats) == (2, 5.0, 3, 0.5, 1, 2, 8, 4, None)
        assert k["generic"] == str(generic)
    capsys.readouterr()


def test_nested_options_round_trip_through_json():
    cfg = PruneConfig(ratio=0.35, seed=7, image_size=96, uniform=True, hei=HeiOptions(beta=0.6, score="cond"),
                      lm=LMOptions(seq_len=32, batch_size=4, nll_tolerance=0.25, lr=1e-4))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["hei"] == {"beta": 0.6, "betas": [0.3, 0.0, 1.0], "score": "cond"} and d["lm"]["seq_len"] == 32
    assert "extra" not in d
    back = PruneConfig.from_dict(d)
    assert back == cfg and isinstance(back.hei, HeiOptions) and isinstance(back.lm, LMOptions)
    # PruneConfig(**to_dict()) (experiments pass the dict through worker processes) too
    assert PruneConfig(**{k: v for k, v in d.items() if k != "version"}) == cfg
    # a partial nested dict keeps the other defaults
    assert PruneConfig.from_dict({"lm": {"seq_len": 64}}).lm == LMOptions(seq_len=64)


@pytest.mark.parametrize("d, match", [
    ({"hei": {"beta": 0.3, "gamma": 1}}, r"unknown PruneConfig.hei keys \['gamma'\]"),
    ({"lm": {"lm_batch_size": 4}}, r"unknown PruneConfig.lm keys \['lm_batch_size'\]"),
    ({"extra": {"hei_beta": 0.3}}, r"unknown PruneConfig keys \['extra'\]"),
    ({"hei": "loss"}, "HeiOptions or a dict"),
    ({"hei": {"score": "vibes"}}, "--hei-score 'vibes'"),
    ({"hei": {"beta": float("nan")}}, "--hei-beta"),
    ({"image_size": 0}, "--image-size 0"),
    ({"uniform": "yes"}, "--uniform"),
    ({"lm": {"seq_len": 1}}, r"--lm-seq-len"),
    ({"lm": {"lr": 0}}, r"--lm-lr"),
    ({"lm": {"distill": 2}}, r"--lm-distill"),
    ({"reconstruct": "yes"}, r"--reconstruct"),
    ({"teacher": "oracle"}, r"--teacher 'oracle' is not one of base, finetuned"),
])
def test_bad_nested_options_are_bad_input(d, match):
    with pytest.raises(BadInput, match=match):
        PruneConfig.from_dict(d)


def test_lm_defaults_match_the_text_module():
    from pocketsize.text import SEQ_LEN

    assert LMOptions().seq_len == SEQ_LEN
    assert dataclasses.asdict(LMOptions()) == {"seq_len": SEQ_LEN, "batch_size": 8, "nll_tolerance": 0.5, "lr": 3e-4,
                                               "distill": 0.0, "general_text": None, "qat_group": None}
    assert HeiOptions() == HeiOptions(beta=0.3, score="loss")


@pytest.mark.parametrize("verb", ["compress", "run", "demo"])
@pytest.mark.parametrize("flags, named", [
    (["--hei-score", "vibes"], "--hei-score"),
    (["--hei-beta", "nan"], "--hei-beta"),
    (["--hei-beta", "strong"], "--hei-beta"),
    (["--lm-seq-len", "1"], "--lm-seq-len"),
    (["--lm-lr", "0"], "--lm-lr"),
    (["--image-size", "0"], "--image-size"),
    (["--method", "magnitude", "--hei-beta", "0.5"], "--hei-beta"),
])
def test_bad_compress_option_is_exit_2_naming_the_flag(verb, flags, named, tmp_path, monkeypatch, capsys):
    from pocketsize import compress

    monkeypatch.setattr(compress, "prune", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    argv = {"compress": ["compress", "timm:whatever", "--data", str(tmp_path)],
            "run": ["run", "timm:whatever", "--data", str(tmp_path)], "demo": ["demo"]}[verb]
    rc = main(argv + ["--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, named", [
    (["--threads", "0"], "--threads"), (["--timeout", "0"], "--timeout"), (["--to", "nope"], "nope"),
    (["--coreml-target", "android"], "--coreml-target"), (["--parity-samples", "0"], "--parity-samples"),
    (["--calib-samples", "0"], "--calib-samples"),
])
def test_bad_export_or_bench_option_through_run_is_exit_2_before_compress(flags, named, tmp_path, monkeypatch,
                                                                         capsys):
    from pocketsize import compress

    monkeypatch.setattr(compress, "prune", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    rc = main(["run", "timm:whatever", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and named in err, err


def test_pipeline_keeps_its_keywords_and_refuses_a_conflicting_export_config(tmp_path, monkeypatch):
    from pocketsize import compress, pipeline
    from pocketsize.export import ExportConfig

    monkeypatch.setattr(compress, "prune", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    with pytest.raises(ValueError, match="not both"):
        pipeline.run("timm:whatever", str(tmp_path), tmp_path / "o", None, ("onnx",),
                     export_config=ExportConfig(targets=("executorch",)))
    with pytest.raises(ValueError, match="not both"):
        pipeline.run("timm:whatever", str(tmp_path), tmp_path / "o", quantize="int8",
                     export_config=ExportConfig(targets=("onnx",)))
    with pytest.raises(BadInput):  # the old positional form still validates --to before compress
        pipeline.run("timm:whatever", str(tmp_path), tmp_path / "o", None, ("nope",), "none", "local")


def test_lm_flags_reach_the_config():
    from pocketsize.cli.compress import config_from_args

    args = build_parser().parse_args(["compress", "m", "--data", "d", "--out", "o", "--lm-seq-len", "64",
                                      "--lm-batch-size", "2", "--lm-nll-tolerance", "0.25", "--lm-lr", "1e-4",
                                      "--hei-beta", "auto", "--lm-general-text", "other.txt"])
    cfg = config_from_args(args)
    assert cfg.lm == LMOptions(seq_len=64, batch_size=2, nll_tolerance=0.25, lr=1e-4, general_text="other.txt")
    assert cfg.hei.beta == "auto" and cfg.hei.auto
    assert config_from_args(build_parser().parse_args(["compress", "m", "--data", "d", "--out", "o"])).lm == LMOptions()
