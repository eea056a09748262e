"""KV-cache head budgets: kv-head tables, plans, file formats, the streaming intervention."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from headprobe.heads.retrieval.kv_budget import (
    KVBudgetError,
    KVBudgetPlan,
    kv_head_table,
    plan_accuracy,
    plan_kv_budget,
    read_duo_attention,
    read_headkv,
)
from headprobe.headtable import HeadTable, TableUnitError
from headprobe.interventions import METHODS, intervene, streaming_attention
from headprobe.interventions.window import query_heads_of
from headprobe.runtime.hooks import attached
from headprobe.tasks.base import Task, TaskItem


def query_table(spec, seed: int = 0) -> HeadTable:
    """A per-query-head table with distinct non-negative scores."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(spec.n_layers, spec.n_heads, generator=generator)
    return HeadTable.from_grid(scores, spec, meta={"scorer": "retrieval", "model": spec.name})


# ------------------------------------------------------------------------------ kv-head tables
def test_kv_table_round_trip_heatmap_pivot_top(tiny_llama, tmp_path):
    _, spec = tiny_llama
    grid = np.arange(spec.n_layers * spec.n_kv_heads, dtype=float).reshape(
        spec.n_layers, spec.n_kv_heads)
    table = HeadTable.from_kv_grid(grid, spec, columns={"twice": 2 * grid},
                                   meta={"scorer": "kvscore", "model": spec.name})
    assert table.is_kv and table.unit == "kv_head" and len(table) == 6
    assert (table["head"] == table["kv_head"]).all()
    assert table.pivot().shape == (spec.n_layers, spec.n_kv_heads)
    np.testing.assert_array_equal(table.pivot().to_numpy(), grid)
    assert tuple(table.top(1)[["layer", "kv_head"]].iloc[0]) == (2, 1)
    figure = table.heatmap()
    assert figure.layout.xaxis.title.text == "kv head"
    table.save(tmp_path)
    back = HeadTable.load(tmp_path)
    assert back.is_kv and back.meta["group_size"] == spec.group_size
    pd.testing.assert_frame_equal(back.data, table.data, check_dtype=False)
    assert "kv heads" in repr(back)


def test_kv_grid_shape_and_inconsistent_rows(tiny_llama):
    _, spec = tiny_llama
    with pytest.raises(ValueError, match="n_kv_heads"):
        HeadTable.from_kv_grid(np.zeros((spec.n_layers, spec.n_heads)), spec)
    frame = pd.DataFrame({"layer": [0], "head": [1], "kv_head": [0], "score": [1.0]})
    with pytest.raises(TableUnitError):
        HeadTable(frame, {"unit": "kv_head"})


def test_join_refuses_mixed_units(tiny_llama):
    _, spec = tiny_llama
    per_head = query_table(spec)
    kv = kv_head_table(per_head)
    with pytest.raises(TableUnitError, match="different units"):
        HeadTable.join([per_head, kv])
    other = HeadTable.from_kv_grid(np.ones((spec.n_layers, spec.n_kv_heads)), spec,
                                   meta={"scorer": "other"})
    wide = HeadTable.join([kv, other])
    assert wide.attrs["unit"] == "kv_head" and len(wide) == 6
    assert list(wide.columns) == ["layer", "head", "kv_head", "retrieval", "other"]


def test_aggregate_max_and_mean(tiny_llama):
    _, spec = tiny_llama
    per_head = query_table(spec)
    grid = per_head.pivot().to_numpy()  # [L, H]
    groups = grid.reshape(spec.n_layers, spec.n_kv_heads, spec.group_size)
    np.testing.assert_allclose(kv_head_table(per_head, "max").pivot().to_numpy(),
                               groups.max(-1))
    np.testing.assert_allclose(kv_head_table(per_head, "mean").pivot().to_numpy(),
                               groups.mean(-1))
    assert (kv_head_table(per_head)["n_query_heads"] == spec.group_size).all()
    with pytest.raises(KVBudgetError):
        kv_head_table(per_head, "median")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ classification
def kv_scores_table(spec, kv_grid) -> HeadTable:
    """A per-query-head table whose group max is ``kv_grid`` (other heads of a group: 0)."""
    grid = np.zeros((spec.n_layers, spec.n_heads))
    for g in range(spec.n_kv_heads):
        grid[:, query_heads_of(spec, g)[0]] = kv_grid[:, g]
    return HeadTable.from_grid(grid, spec, meta={"scorer": "retrieval", "model": spec.name})


def test_classify_by_threshold_and_share(tiny_llama):
    _, spec = tiny_llama
    kv_grid = np.array([[0.9, 0.05], [0.2, 0.6], [0.0, 0.3]])  # [3 layers, 2 kv heads]
    table = kv_scores_table(spec, kv_grid)
    plan = plan_kv_budget(table, spec, threshold=0.25, sink=2, window=3)
    assert plan.full_heads() == [(0, 0), (1, 1), (2, 1)]
    assert plan.streaming_heads() == [(0, 1), (1, 0), (2, 0)]
    np.testing.assert_array_equal(plan.gates(), (kv_grid > 0.25).astype(float))
    share = plan_kv_budget(table, spec, full_share=1 / 3)  # 2 of 6
    assert share.full_heads() == [(0, 0), (1, 1)]
    assert set(plan_kv_budget(table, spec, full_share=0.0).table["mode"]) == {"streaming"}
    assert plan_kv_budget(table, spec, full_share=1.0).streaming_heads() == []
    # mean aggregation halves every group score (one non-zero head of two)
    mean_plan = plan_kv_budget(table, spec, threshold=0.25, aggregate="mean")
    assert mean_plan.full_heads() == [(0, 0), (1, 1)]
    with pytest.raises(KVBudgetError, match="exactly one"):
        plan_kv_budget(table, spec)
    with pytest.raises(KVBudgetError, match="exactly one"):
        plan_kv_budget(table, spec, threshold=0.1, full_share=0.5)
    with pytest.raises(KVBudgetError, match=r"\[0, 1\]"):
        plan_kv_budget(table, spec, full_share=1.5)


def test_memory_saved_by_hand(tiny_llama):
    _, spec = tiny_llama
    kv_grid = np.array([[0.9, 0.05], [0.2, 0.6], [0.0, 0.3]])
    plan = plan_kv_budget(kv_scores_table(spec, kv_grid), spec, threshold=0.25, sink=4,
                          window=12)
    # 3 of 6 kv heads streaming; at T = 100 each keeps 16 of 100 tokens
    assert plan.memory_saved(100) == pytest.approx(3 * (100 - 16) / (6 * 100))
    assert plan.memory_saved(100) == pytest.approx(0.42)
    assert plan.memory_saved(16) == 0.0  # the window covers everything
    assert plan.memory_saved(10) == 0.0
    full, kept = plan.cache_bytes(100, d_head=8, bytes_per_value=2)
    assert full == 6 * 100 * 2 * 8 * 2
    assert kept == (3 * 100 + 3 * 16) * 2 * 8 * 2
    assert 1 - kept / full == pytest.approx(plan.memory_saved(100))
    with pytest.raises(KVBudgetError):
        plan.memory_saved(0)


# ------------------------------------------------------------------------------ formats
@pytest.fixture
def plan(tiny_llama) -> KVBudgetPlan:
    _, spec = tiny_llama
    kv_grid = np.array([[0.9, 0.05], [0.2, 0.6], [0.0, 0.3]])
    return plan_kv_budget(kv_scores_table(spec, kv_grid), spec, threshold=0.25, sink=4,
                          window=32)


def test_json_and_csv_round_trip(plan, tmp_path):
    path = plan.to_json(tmp_path / "plan.json")
    payload = json.loads(path.read_text())
    assert payload["full_attention_heads"] == [[1, 0], [0, 1], [0, 1]]
    assert payload["sink"] == 4 and payload["window"] == 32
    back = KVBudgetPlan.from_json(path)
    assert back.full_heads() == plan.full_heads() and back.group_size == plan.group_size
    np.testing.assert_allclose(back.table["score"], plan.table["score"])
    assert back.memory_saved(1000) == plan.memory_saved(1000)

    csv = plan.to_csv(tmp_path / "plan.csv")
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["layer", "kv_head", "score", "full", "mode", "sink", "window",
                                   "budget_tokens"]
    streaming = frame[frame["mode"] == "streaming"]
    assert (streaming["budget_tokens"] == 36).all()
    assert frame[frame["mode"] == "full"]["budget_tokens"].isna().all()
    back = KVBudgetPlan.from_csv(csv, group_size=plan.group_size)
    assert back.streaming_heads() == plan.streaming_heads()
    assert (back.sink, back.window) == (4, 32)


def test_duo_attention_round_trip(plan, tmp_path):
    folder = plan.to_duo_attention(tmp_path / "duo")
    lines = (folder / "full_attention_heads.tsv").read_text().splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 2 for line in lines)
    # read exactly as DuoAttention's load_attn_pattern does
    gates = np.clip(np.loadtxt(folder / "full_attention_heads.tsv", dtype=float,
                               delimiter="\t"), 0, 1)
    np.testing.assert_array_equal(gates, [[1, 0], [0, 1], [0, 1]])
    config = json.loads((folder / "config.json").read_text())
    assert (config["sink_size"], config["recent_size"]) == (4, 32)
    back = read_duo_attention(folder, group_size=plan.group_size)
    assert back.full_heads() == plan.full_heads() and (back.sink, back.window) == (4, 32)
    # DuoAttention's continuous gates: > 0.5 is full
    np.savetxt(folder / "full_attention_heads.tsv", [[0.7, 0.2], [0.51, 0.5], [1.3, -1]],
               delimiter="\t")
    assert read_duo_attention(folder).full_heads() == [(0, 0), (1, 0), (2, 0)]
    with pytest.raises(KVBudgetError, match="does not exist"):
        read_duo_attention(tmp_path / "nowhere")


def test_headkv_round_trip(plan, tiny_llama, tmp_path):
    _, spec = tiny_llama
    path = plan.to_headkv(tmp_path / "heads.json")
    text = path.read_text()
    assert text.count("\n") == 1  # HeadKV reads the first line only
    payload = json.loads(text.splitlines()[0])
    keys = [f"{layer}-{head}" for layer in range(spec.n_layers) for head in range(spec.n_heads)]
    assert list(payload) == keys  # layer-major, every query head
    # HeadKV's reading: means in key order, reshaped to [layers, query heads]
    means = np.array([np.mean(v) for v in payload.values()]).reshape(spec.n_layers,
                                                                      spec.n_heads)
    np.testing.assert_allclose(means, plan.source.pivot().to_numpy())
    back = read_headkv(path, spec)
    pd.testing.assert_frame_equal(back.data[["layer", "head", "kv_head"]],
                                  plan.source.data[["layer", "head", "kv_head"]],
                                  check_dtype=False)
    np.testing.assert_allclose(back["score"], plan.source["score"])
    # without a source table, kv scores are repeated over each group
    kv_only = plan_kv_budget(kv_head_table(plan.source), spec, threshold=0.25)
    repeated = read_headkv(kv_only.to_headkv(tmp_path / "kv.json"), spec)
    np.testing.assert_allclose(kv_head_table(repeated).pivot().to_numpy(),
                               kv_only.table.pivot().to_numpy())
    negative = HeadTable.from_grid(-np.ones((spec.n_layers, spec.n_heads)), spec)
    with pytest.raises(KVBudgetError, match=">= 0"):
        plan.to_headkv(tmp_path / "bad.json", per_head=negative)


# ------------------------------------------------------------------------------ intervention
def capture(model, tokens, hooks=()):
    spec = model.headprobe_spec
    cache: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        cache[hook.name] = act.detach().clone()

    names = [spec.hooks.at(kind, layer) for kind in ("attn_scores", "pattern")
             for layer in range(spec.n_layers)]
    recorders = [(name, keep) for name in names]
    with torch.no_grad(), attached(model, list(hooks)), model.hooks(fwd_hooks=recorders):
        model(tokens)
    return cache


def test_streaming_attention_restricts_exactly(tiny_llama):
    model, spec = tiny_llama
    tokens = model.to_tokens(["the quick brown fox jumps over the lazy dog"])
    width = tokens.shape[1]
    sink, window = 2, 5
    base = capture(model, tokens)
    got = capture(model, tokens, streaming_attention(model, [(1, 0)], sink=sink, window=window))
    query = torch.arange(width)[:, None]
    key = torch.arange(width)[None, :]
    keep = (key <= query) & ((key < sink) | (query - key < window))
    name = spec.hooks.at("pattern", 1)
    for head in range(spec.n_heads):
        new, old = got[name][0, head], base[name][0, head]
        if spec.kv_head(head) == 0:
            assert torch.count_nonzero(new[~keep]) == 0
            torch.testing.assert_close(new.sum(-1), torch.ones(width))
            scores = got[spec.hooks.at("attn_scores", 1)][0, head]
            expected = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1)
            torch.testing.assert_close(new, expected, atol=1e-6, rtol=1e-5)
            assert not torch.allclose(new, old)  # rows beyond the window changed
        else:
            torch.testing.assert_close(new, old, atol=0, rtol=0)
    # the layer before is untouched (later layers see the changed residual stream)
    torch.testing.assert_close(got[spec.hooks.at("pattern", 0)],
                               base[spec.hooks.at("pattern", 0)], atol=0, rtol=0)


def test_streaming_attention_validation(tiny_llama):
    model, spec = tiny_llama
    from headprobe.errors import HeadIndexError, InterventionError

    with pytest.raises(HeadIndexError, match="kv head"):
        streaming_attention(model, [(0, spec.n_kv_heads)])
    with pytest.raises(InterventionError, match="empty"):
        streaming_attention(model, [])
    with pytest.raises(InterventionError, match="window"):
        streaming_attention(model, [(0, 0)], window=0)
    assert METHODS["streaming_attention"].factory is streaming_attention


PROMPTS = ["the cat sat on the mat and looked", "a", "hello there, world, how are you"]


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gemma", "tiny_gpt2"])
def test_streaming_same_continuation_with_and_without_cache(kind, request):
    """Absolute positions: cached == recomputed, left == right padding."""
    from headprobe.runtime.decode import generate

    model, spec = request.getfixturevalue(kind)
    heads = [(0, 0), (1, spec.n_kv_heads - 1), (2, 0)]
    results = {}
    for side in ("left", "right"):
        for use_cache in (False, True):
            with intervene(model, heads, "streaming_attention", sink=2, window=4):
                results[(side, use_cache)] = generate(
                    model, PROMPTS, max_new_tokens=8, padding_side=side, use_cache=use_cache,
                    keep_logits=True)
    reference = results[("left", False)]
    for key, got in results.items():
        assert torch.equal(got.tokens, reference.tokens), (key, got.texts, reference.texts)
        torch.testing.assert_close(got.logits, reference.logits, atol=1e-4, rtol=0)
    plain = generate(model, PROMPTS, max_new_tokens=8, keep_logits=True)
    assert (plain.logits - reference.logits).abs().max() > 1e-3  # the restriction acts


def test_plan_accuracy_runs_on_a_tiny_task(tiny_llama):
    model, spec = tiny_llama
    prompts = ["abcdefghijabcdefghij", "hello there hello there", "xyzxyzxyzxyz"]
    with torch.no_grad():
        answers = [model.tokenizer.decode([int(model(model.to_tokens(p))[0, -1].argmax())])
                   for p in prompts]
    task = Task("tiny_self", [TaskItem(prompt=p, answer=a) for p, a in
                              zip(prompts, answers, strict=True)], judge="next_token")
    plan = plan_kv_budget(query_table(spec), spec, full_share=0.5, sink=1, window=2)
    result = plan_accuracy(model, task, plan, n_random=2, seed=0, n_bootstrap=50)
    assert list(result.table["condition"]) == ["baseline", "plan", "random_0", "random_1"]
    assert result.summary["baseline"] == 1.0
    assert (result.table["n_heads"].iloc[1:] == 3).all()
    assert result.summary["context_length"] == max(
        len(model.to_tokens(p)[0]) for p in prompts) + task.max_new_tokens
    assert result.summary["memory_saved"] == pytest.approx(
        plan.memory_saved(result.summary["context_length"]))
    assert set(result.correct) == {"baseline", "plan", "random_0", "random_1"}


# ------------------------------------------------------------------------------ real model
@pytest.mark.real
@pytest.mark.slow
def test_restricting_every_kv_head_hurts_niah_on_smollm2(smol):
    """All kv heads restricted to sink 4 + window 32 at 256 tokens: the needle is out of reach.
    (Measured with 6 items at 512 tokens: 6/6 correct unrestricted, 0/6 restricted.)"""
    from headprobe.heads.retrieval.niah import make_task

    model, spec = smol
    task = make_task(n=3, context_lengths=(256,), depths=(0.25, 0.5), model=model, seed=0)
    table = HeadTable.from_kv_grid(np.zeros((spec.n_layers, spec.n_kv_heads)), spec,
                                   meta={"scorer": "none", "model": spec.name})
    plan = plan_kv_budget(table, spec, full_share=0.0, sink=4, window=32)
    assert len(plan.streaming_heads()) == spec.n_layers * spec.n_kv_heads
    result = plan_accuracy(model, task, plan, n_random=0, n_bootstrap=0, batch_size=3)
    print(result.table[["condition", "accuracy", "delta"]], result.summary)
    assert result.summary["baseline"] >= 0.5
    assert result.summary["plan"] <= result.summary["baseline"] - 0.5
    assert result.summary["memory_saved"] > 0.85  # 1 - 36/280 kept at 256 + 24 tokens
