"""Typed scorer parameters: the one validator, the command line's typed parsing, the
``headprobe scorers NAME`` listing and the refusal of a parameter named like a run option."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar, Literal

import pytest
import torch

from headprobe.cli import main, scorer_params
from headprobe.errors import ScorerParamError
from headprobe.options import RUN_OPTIONS, ControlOptions, RunOptions, ScanOptions
from headprobe.registry import get_scorer
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, build, describe, param, parse_text


@dataclass(frozen=True)
class Example(Params):
    renamed: ClassVar[dict[str, str]] = {"steps": "ig_steps"}

    ig_steps: int = param(5, "integrated-gradient steps", ge=1, le=100)
    share: float = param(0.5, "a share", ge=0, lt=1)
    mode: Literal["relative", "absolute"] = param("relative", "how to cut")
    layers: tuple[int, ...] | None = param(None, "layers (None: all)", ge=0)
    names: str | tuple[str, ...] = param("all", "one name or several")
    pairs: tuple[tuple[int, int], ...] | None = param(None, "(layer, head) pairs")
    flag: bool = param(False, "a switch")


def test_validator_accepts_and_keeps_values():
    record = Example(ig_steps=100, share=0, layers=[0, 2], names=("a", "b"), pairs=[[1, 2]])
    assert record.share == 0 and isinstance(record.share, int)  # kept as given: same run key
    assert record.layers == [0, 2] and record.pairs == [[1, 2]]
    with pytest.raises(FrozenInstanceError):
        record.share = 0.3  # type: ignore[misc]


@pytest.mark.parametrize(("values", "message"), [
    ({"ig_steps": 0}, r"ig_steps=0 is not allowed; it takes int \(>= 1, <= 100\)"),
    ({"ig_steps": 2.5}, "ig_steps=2.5"),
    ({"ig_steps": True}, "ig_steps=True"),  # a bool is not an int here
    ({"share": 1.0}, r"share=1.0 is not allowed; it takes float \(>= 0, < 1\)"),
    ({"share": "0.5"}, "share='0.5'"),
    ({"mode": "both"}, "mode='both' is not allowed; it takes 'relative' or 'absolute'"),
    ({"layers": [0, -1]}, r"layers=\[0, -1\]"),
    ({"layers": 3}, r"tuple\[int, \.\.\.\] \| None"),
    ({"names": ["a", 1]}, "names="),
    ({"pairs": [[1, 2, 3]]}, r"tuple\[tuple\[int, int\], \.\.\.\]"),
    ({"flag": "yes"}, "flag='yes' is not allowed; it takes bool"),
])
def test_validator_refuses_with_one_line(values, message):
    with pytest.raises(ScorerParamError, match=message) as info:
        Example(**values)
    assert "\n" not in str(info.value)


def test_build_names_unknown_and_renamed_parameters():
    assert build(Example, {"ig_steps": 7}, owner="x").ig_steps == 7
    with pytest.raises(ScorerParamError, match="x got unknown parameters \\['nope'\\]"):
        build(Example, {"nope": 1}, owner="x")
    with pytest.raises(ScorerParamError, match="'steps' is now called 'ig_steps'"):
        build(Example, {"steps": 7}, owner="x")


def test_parse_text_by_declared_type():
    def parse(name, text):
        return parse_text(Example, name, text, owner="x")

    assert parse("ig_steps", "12") == 12
    assert parse("share", "0.25") == 0.25 and parse("share", "0") == 0.0
    assert parse("mode", "absolute") == "absolute"
    assert parse("flag", "true") is True and parse("flag", "False") is False
    assert parse("layers", "none") is None and parse("layers", "None") is None
    assert parse("layers", "0,2,3") == (0, 2, 3)
    assert parse("layers", "[1, 4]") == (1, 4)
    assert parse("layers", "5") == (5,)
    assert parse("names", "digits") == "digits"  # one name stays a name
    assert parse("names", "digits,days") == ("digits", "days")
    assert parse("names", '["days"]') == ("days",)
    assert parse("pairs", "[[0, 1], [2, 3]]") == ((0, 1), (2, 3))
    for name, text in [("ig_steps", "1.5"), ("ig_steps", "0"), ("mode", "both"),
                       ("flag", "maybe"), ("layers", "a,b"), ("share", "none"),
                       ("layers", "[1, -2]")]:
        with pytest.raises(ScorerParamError, match=f"{name}="):
            parse(name, text)
    with pytest.raises(ScorerParamError, match="x has no parameter nope; its parameters: "
                                               "ig_steps, share"):
        parse("nope", "1")
    with pytest.raises(ScorerParamError, match="now called 'ig_steps'"):
        parse("steps", "1")


def test_cli_param_reads_lists_and_none():
    successor = get_scorer("successor")
    assert scorer_params(successor, ["sets=digits,days", "threshold=0.5", "strict=false"]) == {
        "sets": ("digits", "days"), "threshold": 0.5, "strict": False}
    assert scorer_params(successor, ["sets=none"]) == {"sets": None}
    patching = get_scorer("activation_patching")
    assert scorer_params(patching, ["layers=[0, 1]", "heads_per_pass=None"]) == {
        "layers": (0, 1), "heads_per_pass": None}
    sahara = get_scorer("sahara")
    assert scorer_params(sahara, ["candidates=[[0, 1], [2, 3]]"]) == {
        "candidates": ((0, 1), (2, 3))}


@pytest.mark.parametrize(("argv", "message"), [
    (["--param", "embedding=mlp1"], "embedding='mlp1' is not allowed; it takes 'mlp0', "
                                    "'mlp0_out' or 'raw'"),
    (["--param", "threshold=high"], "threshold='high' is not allowed; it takes float"),
    (["--param", "nope=1"], "has no parameter nope"),
    (["--param", "sets"], "--param takes KEY=VALUE"),
])
def test_cli_bad_param_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code = main(["scan", "successor", "--model", "tiny:llama", "--out", str(tmp_path / "o"),
                 *argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headprobe: error:"), err
    assert message in err


def test_cli_renamed_parameter_says_the_new_name(capsys, tmp_path):
    code = main(["scan", "sahara", "--model", "tiny:llama", "--out", str(tmp_path / "o"),
                 "--param", "steps=2"])
    assert code == 2
    assert "'steps' is now called 'greedy_steps'" in capsys.readouterr().err


def test_scorers_name_prints_prompts_and_parameters(capsys):
    assert main(["scorers", "successor"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("successor: successor heads from the weights")
    assert "prompts: none: a weights-only scorer" in out
    assert "  sets: str | tuple[str, ...] | None = None\n" in out
    assert "  embedding: 'mlp0', 'mlp0_out' or 'raw' = 'mlp0'\n" in out
    assert "  threshold: float = 0.4\n" in out
    assert "successor-head threshold on score" in out
    names = [info.name for info in describe(get_scorer("successor").params)]
    assert all(f"\n  {name}: " in out for name in names)
    assert main(["scorers", "retrieval"]) == 0
    out = capsys.readouterr().out
    assert "  gate: float (>= 0, < 1) = 0.5\n" in out
    assert main(["scorers"]) == 0  # without a name: every scorer, one line each
    listing = capsys.readouterr().out
    assert "successor" in listing and "induction" in listing and "parameters" not in listing


def test_scorers_unknown_name_is_one_line(capsys):
    assert main(["scorers", "nope"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _prepare(model, spec, prompts, n, seed, params):
    return ScorerData(None, "0", 1, "nothing")


def _compute(model, spec, data, params, batch_size, progress):
    return ScoreResult(torch.zeros(spec.n_layers, spec.n_heads))


@pytest.mark.parametrize("name", sorted(RUN_OPTIONS))
def test_parameter_named_like_a_run_option_is_refused(name):
    clashing = dataclass(frozen=True)(type("Clashing", (Params,), {
        "__annotations__": {name: "int"}, name: param(1, "clashes")}))
    with pytest.raises(TypeError, match=f"parameters \\['{name}'\\] are named like run options"):
        Scorer("clash", "a clashing scorer", "none", _prepare, _compute, params=clashing)


def test_parameter_without_help_or_bad_default_is_refused():
    @dataclass(frozen=True)
    class NoHelp(Params):
        x: int = 1

    with pytest.raises(TypeError, match="have no help"):
        Scorer("no_help", "", "", _prepare, _compute, params=NoHelp)

    @dataclass(frozen=True)
    class BadDefault(Params):
        x: int = param(0, "must be positive", ge=1)

    with pytest.raises(ScorerParamError, match="x=0"):
        Scorer("bad_default", "", "", _prepare, _compute, params=BadDefault)
    with pytest.raises(TypeError, match="immutable"):
        param([1], "a list default")


def test_defaults_and_run_key_values_are_the_records(tiny_llama):
    model, _ = tiny_llama
    scorer = get_scorer("induction")
    assert scorer.defaults == {"seq_len": 50, "repeats": 2, "exclude_bos": True,
                               "exclude_current": True, "padding_side": "right"}
    run = scorer.plan(model, n=1, seq_len=5)
    assert run.params == {**scorer.defaults, "seq_len": 5}
    assert run.key_fields["params"] == dict(sorted(run.params.items()))
    with pytest.raises(ScorerParamError, match="repeats=1"):
        scorer.plan(model, n=1, repeats=1)
    with pytest.raises(ScorerParamError, match="score_by='path' needs path=True"):
        get_scorer("conflict").check_params({"path": False})  # a cross-field check


def test_option_records():
    assert {"n", "seed", "batch_size", "progress", "checkpoint_dir", "fresh", "echo",
            "prompts", "model"} == RUN_OPTIONS
    assert RunOptions().batch_size == 8
    scan = ScanOptions(method="mean", metric="logit_diff", layers=(1,), heads_per_pass=2)
    assert scan.kwargs() == {"method": "mean", "metric": "logit_diff", "direction": "denoising",
                             "layers": (1,), "batch_size": 8, "progress": True,
                             "heads_per_pass": 2}
    assert "heads_per_pass" not in scan.loop_kwargs()
    assert ControlOptions(n_random=3, seed=2).kwargs() == {
        "n_random": 3, "random_from": "same_layers", "n_bootstrap": 1000, "seed": 2}
