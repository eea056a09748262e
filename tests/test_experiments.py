"""Ablation experiments, dose-response, the induction_copy task and `headprobe ablate`."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from headprobe.errors import HeadIndexError, InterventionError, TaskError
from headprobe.experiments import (
    ablation_experiment,
    bootstrap_indices,
    dose_response,
    greedy_continuations,
    judge_task,
    parse_heads,
    random_head_sets,
)
from headprobe.headtable import HeadTable
from headprobe.interventions import intervene
from headprobe.tasks import get_task, list_tasks
from headprobe.tasks.base import Task, TaskItem

TARGET = [(1, 0), (2, 3)]


@pytest.fixture(scope="module")
def self_task(tiny_llama):
    """A tiny task whose answers are the tiny model's own greedy next characters.

    Baseline accuracy is 1 by construction, so ablations have something to break.
    """
    model, _ = tiny_llama
    rng = random.Random(0)
    prompts = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(4, 9)))
               for _ in range(12)]
    items = []
    for prompt in prompts:
        with torch.no_grad():
            logits = model(model.to_tokens(prompt))
        answer = model.tokenizer.decode([int(logits[0, -1].argmax())])
        items.append(TaskItem(prompt=prompt, answer=answer))
    return Task("tiny_self", items, judge="next_token")


@pytest.fixture(scope="module")
def result(tiny_llama, self_task):
    model, _ = tiny_llama
    return ablation_experiment(model, self_task, TARGET, method="zero", n_random=4, seed=3,
                               progress=False, n_bootstrap=200)


# ------------------------------------------------------------------------------ table


def test_table_structure(result, self_task):
    table = result.table
    assert list(table["condition"]) == ["baseline", "target"] + [f"random_{i}" for i in range(4)]
    for column in ("condition", "heads", "accuracy", "delta", "ci_low", "ci_high",
                   "delta_ci_low", "delta_ci_high", "n"):
        assert column in table.columns
    assert (table["n"] == len(self_task)).all()
    assert table.loc[0, "accuracy"] == 1.0  # answers are the model's own predictions
    assert table.loc[1, "heads"] == "1.0,2.3"
    assert (table.loc[1:, "n_heads"] == 2).all()
    assert result.figure.data  # a plotly figure, not shown


def test_table_math(result):
    table = result.table.set_index("condition")
    baseline = result.correct["baseline"]
    assert table.loc["baseline", "delta"] == 0.0
    assert table.loc["baseline", "delta_ci_low"] == table.loc["baseline", "delta_ci_high"] == 0
    for name, correct in result.correct.items():
        assert table.loc[name, "accuracy"] == pytest.approx(correct.mean())
        assert table.loc[name, "delta"] == pytest.approx(correct.mean() - baseline.mean())
        row = table.loc[name]
        assert row["ci_low"] - 1e-12 <= row["accuracy"] <= row["ci_high"] + 1e-12
        assert row["delta_ci_low"] - 1e-12 <= row["delta"] <= row["delta_ci_high"] + 1e-12
    # the paired bootstrap, by hand
    boot = bootstrap_indices(len(baseline), 200, 3)
    target = result.correct["target"]
    deltas = target[boot].mean(1) - baseline[boot].mean(1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    assert table.loc["target", "delta_ci_low"] == pytest.approx(low)
    assert table.loc["target", "delta_ci_high"] == pytest.approx(high)
    summary = result.summary
    random_deltas = table.loc[[f"random_{i}" for i in range(4)], "delta"].to_numpy()
    assert summary["mean_random_delta"] == pytest.approx(random_deltas.mean())
    assert summary["share_random_as_low"] == pytest.approx(
        (random_deltas <= summary["target_delta"]).mean())


def test_target_row_matches_manual_judging(tiny_llama, self_task, result):
    model, _ = tiny_llama
    with intervene(model, TARGET, "zero"):
        manual = judge_task(model, self_task, batch_size=1)
    np.testing.assert_array_equal(manual, result.correct["target"])
    # batching with padding gives the same judgements as one prompt at a time
    np.testing.assert_array_equal(judge_task(model, self_task, batch_size=5),
                                  judge_task(model, self_task, batch_size=1))


def test_random_sets_same_layers_and_uniform(tiny_llama):
    _, spec = tiny_llama
    rng = np.random.default_rng(0)
    for heads in random_head_sets(spec, TARGET, 20, rng=rng):
        assert sorted(layer for layer, _ in heads) == [1, 2]  # same layer histogram
        assert not set(heads) & set(TARGET)
    deep = dataclasses.replace(spec, n_layers=10)
    crowded = [(3, 0), (3, 1), (3, 2), (3, 3), (5, 1)]  # layer 3 has no other head
    for heads in random_head_sets(deep, crowded, 20, rng=rng):
        assert len(set(heads)) == 5 and not set(heads) & set(crowded)
        assert all(3 <= layer <= 5 for layer, _ in heads)  # from the target layers' range
        assert sum(layer == 5 for layer, _ in heads) >= 1
    drawn = set()
    for heads in random_head_sets(spec, TARGET, 30, random_from="uniform", rng=rng):
        assert len(set(heads)) == 2 and not set(heads) & set(TARGET)
        drawn |= {layer for layer, _ in heads}
    assert drawn == {0, 1, 2}


def test_experiment_rows_use_same_layer_sets(result):
    for heads in result.table["heads"][2:]:
        assert sorted(int(h.split(".")[0]) for h in heads.split(",")) == [1, 2]


@pytest.mark.parametrize("method", ["mean", "resample", "uniform_attention"])
def test_other_methods_run(tiny_llama, self_task, method):
    model, _ = tiny_llama
    out = ablation_experiment(model, self_task, TARGET, method=method, n_random=1,
                              progress=False, n_bootstrap=50)
    assert len(out.table) == 3 and out.meta["method"] == method


def test_save_writes_files(result, tmp_path):
    folder = result.save(tmp_path / "run")
    # plotly.js beside the html (works offline); the writer's lock files are hidden
    assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == {
        "ablation.csv", "ablation.html", "meta.json", "plotly.min.js"}
    assert 'src="plotly.min.js"' in (folder / "ablation.html").read_text()
    frame = pd.read_csv(folder / "ablation.csv")
    assert list(frame["condition"]) == list(result.table["condition"])
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["summary"]["target_delta"] == pytest.approx(result.summary["target_delta"])
    assert meta["heads"] == "1.0,2.3" and meta["method"] == "zero"


def test_errors(tiny_llama, self_task):
    model, spec = tiny_llama
    with pytest.raises(InterventionError, match="empty"):
        ablation_experiment(model, self_task, [], progress=False)
    with pytest.raises(HeadIndexError):
        ablation_experiment(model, self_task, [(0, spec.n_heads)], progress=False)
    with pytest.raises(TaskError):
        Task("empty", [])
    with pytest.raises(TaskError):
        ablation_experiment(model, ["not", "a", "task"], TARGET, progress=False)
    with pytest.raises(InterventionError, match="unknown"):
        ablation_experiment(model, self_task, TARGET, method="nope", progress=False)
    assert parse_heads("18.6, 17.3") == [(18, 6), (17, 3)]
    with pytest.raises(InterventionError):
        parse_heads("18:6")


# ------------------------------------------------------------------------------ generation


def test_greedy_continuations_match_unbatched_loop(tiny_gpt2):
    model, spec = tiny_gpt2
    prompts = ["abc", "hello wor", "xy"]
    from headprobe.inputs import tokenize_prompts

    lists = tokenize_prompts(model, prompts, spec)
    with intervene(model, [(1, 2)], "zero"):
        batched = greedy_continuations(model, lists, 4, batch_size=3)
        manual = []
        for ids in lists:
            tokens = ids[None]
            for _ in range(4):
                with torch.no_grad():
                    next_id = model(tokens)[0, -1].argmax()
                tokens = torch.cat([tokens, next_id.view(1, 1)], 1)
            manual.append(model.tokenizer.decode(tokens[0, len(ids):].tolist(),
                                                 skip_special_tokens=True))
    assert batched == manual


def test_contains_and_function_judges(tiny_gpt2):
    model, spec = tiny_gpt2
    prompts = ["abc", "hello"]
    from headprobe.inputs import tokenize_prompts

    texts = greedy_continuations(model, tokenize_prompts(model, prompts, spec), 3)
    items = [TaskItem(prompt=p, answer=t[1:3]) for p, t in zip(prompts, texts, strict=True)]
    contains = Task("c", items, judge="contains", max_new_tokens=3)
    assert judge_task(model, contains).all()
    missing = Task("m", [TaskItem(prompt="abc", answer="not in three chars")], judge="contains",
                   max_new_tokens=3)
    assert not judge_task(model, missing).any()
    seen: list[tuple[str, str]] = []

    def judge_fn(text: str, item: TaskItem) -> bool:
        seen.append((item.prompt, text))
        return item.prompt == "abc"

    function = Task("f", items, judge="function", max_new_tokens=3, judge_fn=judge_fn)
    assert judge_task(model, function).tolist() == [True, False]
    assert seen == list(zip(prompts, texts, strict=True))


# ------------------------------------------------------------------------------ dose-response


def test_dose_response(tiny_llama, self_task):
    model, spec = tiny_llama
    scores = torch.arange(spec.n_layers * spec.n_heads, dtype=torch.float32).view(
        spec.n_layers, spec.n_heads)
    table = HeadTable.from_grid(scores, spec, meta={"scorer": "fake"})
    out = dose_response(model, self_task, table, ks=(1, 2, 4), n_random=2, progress=False,
                        n_bootstrap=50)
    frame = out.table
    assert len(frame) == 1 + 3 * 3
    top = frame[frame["condition"] == "top_k"]
    assert list(top["k"]) == [1, 2, 4]
    assert top.iloc[0]["heads"] == "2.3" and top.iloc[1]["heads"] == "2.2,2.3"
    assert (frame.loc[frame["k"] > 0, "n_heads"] == frame.loc[frame["k"] > 0, "k"]).all()
    assert out.figure.data and out.name == "dose_response"
    with pytest.raises(InterventionError):
        dose_response(model, self_task, table, ks=(0,), progress=False)


# ------------------------------------------------------------------------------ task


def test_induction_copy_task():
    assert "induction_copy" in list_tasks()
    task = get_task("induction_copy", n=20, seed=1, n_words=6)
    assert len(task) == 20 and task.judge == "next_token"
    for item in task.items:
        words, cut = item.meta["words"], item.meta["cut"]
        assert len(set(words)) == 6 and 1 <= cut < 6
        first, second = item.prompt.split("\n")
        assert first == "List: " + " ".join(words)
        assert second == "List: " + " ".join(words[:cut])
        assert item.answer == " " + words[cut]
    assert get_task("induction_copy", n=5, seed=1).prompts == \
        get_task("induction_copy", n=5, seed=1).prompts
    with pytest.raises(TaskError):
        get_task("induction_copy", n_words=1)


# ------------------------------------------------------------------------------ CLI


def _ablate_argv(*extra: str, heads: str = "1.0,2.3") -> list[str]:
    return ["ablate", "--task", "tiny_self", "--heads", heads, "--n-random", "2",
            "--n-bootstrap", "50", "--quiet", *extra]


@pytest.fixture
def patched_cli(tiny_llama, self_task, monkeypatch):
    """``headprobe.cli`` with the model seam returning the tiny model and the tiny task."""
    import headprobe.cli as cli

    loads: list[dict] = []

    def load(spec, **kwargs):
        loads.append({"spec": spec, **kwargs})
        return tiny_llama

    monkeypatch.setattr(cli, "_load", load)
    monkeypatch.setattr(cli, "_make_task", lambda name, model, n, seed: self_task)
    monkeypatch.setattr(cli, "task_maker", lambda name: None)  # tiny_self is not registered
    return cli, loads


def test_cli_ablate(tiny_llama, patched_cli, tmp_path, capsys):
    cli, loads = patched_cli
    assert cli.main(_ablate_argv("--out", str(tmp_path / "out"))) == 0
    out = capsys.readouterr().out
    assert "target" in out and "baseline" in out and "float32 on cpu" in out
    assert loads[-1]["dtype"] is None and loads[-1]["device"] is None
    assert (tmp_path / "out" / "ablation.csv").is_file()
    # heads from a saved HeadTable, top 3
    _, spec = tiny_llama
    scores = torch.zeros(spec.n_layers, spec.n_heads)
    scores[0, 1], scores[2, 2], scores[1, 3] = 3.0, 2.0, 1.0
    HeadTable.from_grid(scores, spec, meta={"scorer": "fake"}).save(tmp_path / "table")
    heads, source = cli.resolve_heads(str(tmp_path / "table"), 3)
    assert heads == [(0, 1), (2, 2), (1, 3)] and "fake" in source
    assert cli.resolve_heads(str(tmp_path / "table" / "fake.parquet"), 2)[0] == heads[:2]
    assert cli.main(_ablate_argv("--top", "2", heads=str(tmp_path / "table"))) == 0
    assert "top 2 heads of fake" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,heads,message",
    [
        ((), "9.9", "out of range"),
        ((), "runs/missing", "no such file"),
        ((), "18:6", "LAYER.HEAD"),
        (("--top", "0"), "1.0,2.3", "--top must be >= 1"),
        (("--n", "0"), "1.0,2.3", "--n must be >= 1"),
        (("--n-random", "-1"), "1.0,2.3", "--n-random must be >= 0"),
        (("--option", "factor"), "1.0,2.3", "--option takes KEY=VALUE"),
        (("--method", "scale_output", "--option", "nope=1"), "1.0,2.3", "nope"),
    ],
)
def test_cli_ablate_errors_are_one_line(patched_cli, capsys, extra, heads, message):
    cli, _ = patched_cli
    assert cli.main(_ablate_argv(*extra, heads=heads)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headprobe: error:"), captured.err
    assert message in lines[0]


def test_cli_ablate_passes_dtype_and_device(patched_cli, capsys):
    cli, loads = patched_cli
    assert cli.main(_ablate_argv("--dtype", "bfloat16", "--device", "cpu")) == 0
    assert loads[-1]["dtype"] == "bfloat16" and loads[-1]["device"] == "cpu"


# ------------------------------------------------------------------------------ real model


@pytest.mark.real
@pytest.mark.slow
def test_induction_heads_on_induction_copy(smol):
    """Zero-ablating the top induction heads breaks induction_copy; random same-layer sets don't.

    Measured on 48 prompts (10 random sets): target delta -0.896, mean random delta -0.121.
    The margins below hold on 16 prompts with room to spare.
    """
    from headprobe import scan
    from headprobe.answers import single_token_id, token_ids
    from headprobe.heads.induction.induction_copy import WORDS

    model, _ = smol
    task = get_task("induction_copy", n=16, seed=0)
    token_ids(model, [item.answer for item in task.items])  # every answer is one token
    for word in WORDS:  # ... and so is every word of the vocabulary
        single_token_id(model, " " + word)
    heads = scan(model, "induction", n=8, progress=False).heads(k=6)
    out = ablation_experiment(model, task, heads, method="zero", n_random=3, seed=0,
                              batch_size=16, progress=False, n_bootstrap=500)
    table = out.table.set_index("condition")
    summary = out.summary
    print(summary)
    assert len(out.table) == 5
    assert table.loc["baseline", "accuracy"] >= 0.6
    random_deltas = table.loc[[f"random_{i}" for i in range(3)], "delta"].to_numpy()
    target_delta = summary["target_delta"]
    assert target_delta < -0.5
    assert target_delta < random_deltas.min() - 0.2
    assert target_delta < summary["mean_random_delta"] - 0.4
    assert summary["share_random_as_low"] == 0.0
    assert summary["target_delta_ci"][1] < 0  # the paired interval excludes no effect


def test_kv_head_methods_are_refused_by_ablation_experiments(tiny_llama):
    """streaming_attention names kv heads; random control sets are query heads: refused."""
    from headprobe.errors import InterventionError

    model, _ = tiny_llama
    task = Task("tiny", [TaskItem("abcabc", "a")], judge="next_token")
    with pytest.raises(InterventionError, match="kv head"):
        ablation_experiment(model, task, [(0, 0)], method="streaming_attention", n_random=1,
                            progress=False)
