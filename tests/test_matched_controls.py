"""Random control head sets matched to the target on another per-head score."""

from __future__ import annotations

import json
import random
import sys
import types

import numpy as np
import pytest
import torch
from conftest import register_task

from headprobe.errors import InterventionError, RecipeError
from headprobe.experiments import (
    MatchOn,
    ablation_experiment,
    dose_response,
    matched_head_sets,
    random_head_sets,
)
from headprobe.headtable import HeadTable
from headprobe.recipes import load_recipe, run_recipe
from headprobe.tasks.base import Task, TaskItem


def _grid(spec) -> np.ndarray:
    """Score ``layer + head / 10`` (tiny Llama: 3 layers x 4 heads, kv head = head // 2)."""
    return np.array([[layer + head / 10 for head in range(spec.n_heads)]
                     for layer in range(spec.n_layers)])


def _task(model, n=10, seed=0, name="tiny_self") -> Task:
    """Prompts answered by the model's own greedy next character (baseline accuracy 1)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        prompt = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(4, 9)))
        with torch.no_grad():
            logits = model(model.to_tokens(prompt))
        items.append(TaskItem(prompt=prompt, answer=model.tokenizer.decode(
            [int(logits[0, -1].argmax())])))
    return Task(name, items, judge="next_token")


# ------------------------------------------------------------------------------ drawing


@pytest.mark.parametrize("within", ["model", "layer", "kv_group"])
def test_matched_sets_are_within_tolerance_and_disjoint(tiny_llama, within):
    _, spec = tiny_llama
    match = MatchOn(_grid(spec), tolerance=0.25, within=within)
    target = [(1, 0), (2, 3)]
    sets = matched_head_sets(spec, target, 30, match, rng=np.random.default_rng(0))
    assert len(sets) == 30
    seen = set()
    for matched in sets:
        assert [t for t, _ in matched.pairs] == target
        controls = [c for _, c in matched.pairs]
        assert len(set(controls)) == len(controls)  # no head twice in a set
        assert not set(controls) & set(target)
        for t, c in matched.pairs:
            assert abs(match.score(c) - match.score(t)) <= 0.25 + 1e-12
            if within != "model":
                assert c[0] == t[0]
            if within == "kv_group":
                assert spec.kv_head(c[1]) == spec.kv_head(t[1])
        seen.add(tuple(controls))
    # several draws, all of them allowed: (1, 0) -> (1, 1) or (1, 2); (2, 3) -> (2, 1), (2, 2)
    allowed = {"model": 4, "layer": 4, "kv_group": 1}[within]
    assert len(seen) == allowed
    # random_head_sets draws the same sets from the same generator
    again = random_head_sets(spec, target, 30, random_from="matched", match=match,
                             rng=np.random.default_rng(0))
    assert again == [m.heads for m in sets]


def test_scarce_candidates_go_to_the_head_that_needs_them(tiny_llama):
    _, spec = tiny_llama
    grid = np.full((spec.n_layers, spec.n_heads), 10.0)
    grid[0, 0], grid[0, 1] = 0.0, 0.05  # target 0.0 has one candidate: (0, 1)
    grid[1, 0], grid[1, 1], grid[1, 2] = 0.1, 0.1, 0.08  # target 0.1: (0, 1), (1, 1), (1, 2)
    match = MatchOn(grid, tolerance=0.06)
    for seed in range(20):
        (matched,) = matched_head_sets(spec, [(1, 0), (0, 0)], 1, match,
                                       rng=np.random.default_rng(seed))
        assert dict(matched.pairs)[(0, 0)] == (0, 1)


def test_errors_name_the_closest_head_and_never_widen(tiny_llama):
    _, spec = tiny_llama
    grid = _grid(spec)
    grid[2, 3] = 9.0
    rng = np.random.default_rng(0)
    with pytest.raises(InterventionError, match=r"no non-target head has score within 0.05 "
                       r"of L2H3's 9.0000; the closest is L2H2 at 2.2000 \(difference "
                       r"6.8000\): widen the tolerance to at least 6.8"):
        matched_head_sets(spec, [(2, 3)], 2, MatchOn(grid, 0.05), rng=rng)
    with pytest.raises(InterventionError, match="in its kv group"):
        matched_head_sets(spec, [(0, 0)], 1, MatchOn(_grid(spec), 0.05, "kv_group"), rng=rng)
    # two target heads whose only candidate is the same head
    grid = np.full((spec.n_layers, spec.n_heads), 5.0)
    grid[0, :3] = [0.0, 0.0, 0.01]
    with pytest.raises(InterventionError, match=r"only 1 distinct heads are within 0\.02"):
        matched_head_sets(spec, [(0, 0), (0, 1)], 1, MatchOn(grid, 0.02), rng=rng)
    grid[1, 1] = np.nan
    with pytest.raises(InterventionError, match="L1H1 has no score \\(NaN\\)"):
        matched_head_sets(spec, [(1, 1)], 1, MatchOn(grid, 1.0), rng=rng)
    with pytest.raises(InterventionError, match="needs match=MatchOn"):
        random_head_sets(spec, [(1, 1)], 1, random_from="matched", rng=rng)
    with pytest.raises(InterventionError, match="set random_from = 'matched'"):
        random_head_sets(spec, [(1, 1)], 1, match=MatchOn(grid, 1.0), rng=rng)
    with pytest.raises(InterventionError, match="tolerance must be a number >= 0"):
        MatchOn(grid, -0.1)
    with pytest.raises(InterventionError, match="3 layers x 4 heads"):
        matched_head_sets(spec, [(1, 1)], 1, MatchOn(np.zeros((2, 4)), 1.0), rng=rng)
    assert matched_head_sets(spec, [(2, 3)], 0, MatchOn(grid, 0.0), rng=rng) == []


def test_match_from_a_head_table_column(tiny_llama):
    _, spec = tiny_llama
    table = HeadTable.from_grid(torch.zeros(spec.n_layers, spec.n_heads), spec,
                                columns={"other": torch.tensor(_grid(spec))},
                                meta={"scorer": "fake"})
    match = MatchOn.from_table(table, "other", tolerance=0.1)
    assert match.label == "fake:other" and match.score((2, 3)) == pytest.approx(2.3)
    with pytest.raises(InterventionError, match="no column 'nope' in the fake table"):
        MatchOn.from_table(table, "nope", tolerance=0.1)


# ------------------------------------------------------------------------------ experiments


def test_ablation_experiment_with_matched_controls(tiny_llama):
    model, spec = tiny_llama
    match = MatchOn(_grid(spec), tolerance=0.25, label="layer+head/10")
    result = ablation_experiment(model, _task(model, 6), [(1, 0), (2, 3)], n_random=3, seed=1,
                                 random_from="matched", match=match, progress=False,
                                 n_bootstrap=50)
    table = result.table
    assert list(table["condition"]) == ["baseline", "target", "random_0", "random_1",
                                        "random_2"]
    assert table.loc[1, "match_scores"] == "1.0000,2.3000"
    assert table.loc[0, "match_scores"] == "" and np.isnan(table.loc[1, "match_gap"])
    random_rows = table.iloc[2:]
    assert (random_rows["match_gap"] <= 0.25 + 1e-9).all()
    for row in random_rows.itertuples():
        heads = [tuple(map(int, h.split("."))) for h in row.heads.split(",")]
        assert not set(heads) & {(1, 0), (2, 3)}
        assert row.match_scores == ",".join(f"{match.score(h):.4f}" for h in sorted(heads))
    summary = result.summary["match"]
    assert summary["label"] == "layer+head/10" and summary["tolerance"] == 0.25
    assert summary["target_scores"] == {"L1H0": 1.0, "L2H3": 2.3}
    assert summary["max_gap"] == pytest.approx(random_rows["match_gap"].max())
    assert 1 <= summary["n_distinct_sets"] <= 3
    assert result.meta["params"]["random_from"] == "matched"
    assert result.meta["params"]["match"]["digest"] == match.digest()
    assert "matched on layer+head/10 within 0.25" in result.meta["description"]


def test_dose_response_with_matched_controls(tiny_llama):
    model, spec = tiny_llama
    match = MatchOn(_grid(spec), tolerance=0.25)
    result = dose_response(model, _task(model, n=6), [(1, 0), (2, 3)], ks=(1, 2), n_random=2,
                           random_from="matched", match=match, progress=False, n_bootstrap=20)
    table = result.table
    assert len(table) == 1 + 2 * 3
    random_rows = table[table["condition"].str.startswith("random_")]
    assert (random_rows["match_gap"] <= 0.25 + 1e-9).all()
    assert set(result.summary["match"]) == {1, 2}
    assert result.summary["match"][2]["target_scores"] == {"L1H0": 1.0, "L2H3": 2.3}


# ------------------------------------------------------------------------------ recipe and CLI


RECIPE = '''name = "matched"
model = "tiny:llama-gqa"

[[step]]
kind = "scan"
scorer = "previous_token"
n = 2
params = { seq_len = 8 }

[[step]]
kind = "ablate"
name = "check"
task = "tiny_matched"
task_options = { n = 6 }
heads = "1.0"
random_from = "matched"
match_scorer = "previous_token"
match_tolerance = 1.0
n_random = 2
n_bootstrap = 20
'''


@pytest.fixture
def tiny_matched_task(tiny_llama, monkeypatch):
    """``tiny_matched`` registered for the test (restored after it)."""
    model = tiny_llama[0]
    module = types.ModuleType("headprobe_test_tiny_matched")
    module.make_task = lambda n=10, seed=0: _task(model, n, seed, "tiny_matched")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    register_task(monkeypatch, "tiny_matched", module.__name__)


def test_recipe_ablate_step_with_matched_controls(tiny_llama, tiny_matched_task, tmp_path):
    model, _ = tiny_llama
    path = tmp_path / "matched.toml"
    path.write_text(RECIPE)
    out = tmp_path / "out"
    lines: list[str] = []
    run_recipe(load_recipe(path), model, out, progress=False, echo=lines.append)
    entry = json.loads((out / "summary.json").read_text())["experiments"]["check"]
    assert entry["match"]["label"] == "previous_token:score"
    assert entry["match"]["max_gap"] <= 1.0
    assert any("controls matched on previous_token:score within 1" in line for line in lines)
    saved = (out / "check" / "ablation.csv").read_text()
    assert "match_scores" in saved.splitlines()[0]
    # the same run again is skipped; another tolerance reruns
    lines.clear()
    run_recipe(load_recipe(path), model, out, progress=False, echo=lines.append)
    assert any("check: step already done" in line for line in lines)
    path.write_text(RECIPE.replace("match_tolerance = 1.0", "match_tolerance = 2.0"))
    lines.clear()
    run_recipe(load_recipe(path), model, out, progress=False, echo=lines.append)
    assert any("changed: params.match_tolerance" in line for line in lines), lines
    # a scorer name runs that scorer on its default data
    path.write_text(RECIPE.replace('match_scorer = "previous_token"', 'match_scorer = "sink"'))
    run_recipe(load_recipe(path), model, tmp_path / "out2", progress=False,
               echo=lambda line: None)
    entry = json.loads((tmp_path / "out2" / "summary.json").read_text())["experiments"]["check"]
    assert entry["match"]["label"] == "sink:score"


@pytest.mark.parametrize(
    "old,new,message",
    [
        ('random_from = "matched"\n', 'random_from = "near"\n', "one of same_layers"),
        ('random_from = "matched"\n', "", "only go with random_from = \"matched\""),
        ("match_tolerance = 1.0\n", "", "needs match_scorer"),
        ('match_scorer = "previous_token"', 'match_scorer = "nope"',
         "neither an earlier step with a head table \\(previous_token\\) nor a registered"),
        ("match_tolerance = 1.0", "match_tolerance = -1", "match_tolerance must be >= 0"),
        ("match_tolerance = 1.0", 'match_tolerance = 1.0\nmatch_within = "row"',
         "match_within must be one of model, layer, kv_group"),
    ],
    ids=["random-from", "without-matched", "no-tolerance", "unknown-source", "negative",
         "within"],
)
def test_bad_matched_steps_are_recipe_errors(tmp_path, old, new, message):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.replace("tiny_matched", "ioi").replace(old, new))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_cli_ablate_with_matched_controls(tiny_llama, monkeypatch, tmp_path, capsys):
    import headprobe.cli as cli

    _, spec = tiny_llama
    monkeypatch.setattr(cli, "_load", lambda name, **kwargs: tiny_llama)
    monkeypatch.setattr(cli, "_make_task", lambda name, model, n, seed: _task(model, 6))
    monkeypatch.setattr(cli, "task_maker", lambda name: None)
    HeadTable.from_grid(torch.tensor(_grid(spec)), spec, meta={"scorer": "fake"}).save(
        tmp_path / "table")
    argv = ["ablate", "--task", "tiny", "--heads", "1.0,2.3", "--n-random", "2",
            "--n-bootstrap", "20", "--quiet", "--random-from", "matched"]
    assert cli.main([*argv, "--match-scorer", str(tmp_path / "table"),
                     "--match-tolerance", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "controls matched on fake:score within 0.25 (model)" in out
    assert "match_scores" in out and "1.0000,2.3000" in out
    assert cli.main([*argv, "--match-scorer", "sink", "--match-tolerance", "5"]) == 0
    assert "controls matched on sink:score" in capsys.readouterr().out
    assert cli.main([*argv, "--match-scorer", "sink"]) == 2
    assert "needs --match-scorer NAME" in capsys.readouterr().err
    assert cli.main([*argv[:-2], "--match-tolerance", "0.1"]) == 2
    assert "need --random-from matched" in capsys.readouterr().err
    assert cli.main([*argv, "--match-scorer", str(tmp_path / "table"),
                     "--match-tolerance", "0.01"]) == 2
    assert "widen the tolerance to at least" in capsys.readouterr().err
