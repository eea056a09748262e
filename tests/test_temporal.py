"""The temporal scorer (circuit membership, is_temporal) and the temporal edit (the recipe runs
in tests/test_recipes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from headprobe.errors import ScorerParamError
from headprobe.heads.temporal.temporal import (
    agreement,
    circuit_heads,
    kept_edges,
    membership_fractions,
    temporal_mask,
)
from headprobe.heads.temporal.temporal_edit import (
    edit_hooks,
    edited_next_token,
    source_outputs,
    temporal_edit,
)
from headprobe.registry import get_scorer
from headprobe.runtime.hooks import attached
from headprobe.tasks.base import Task, TaskItem

ROOT = Path(__file__).resolve().parents[1]


def _frame(rows):
    return pd.DataFrame(rows, columns=["upstream", "downstream", "score"])


EDGES = _frame([
    ("embed", "a0.h1.q", 2.0),
    ("a0.h2", "logits", -1.0),
    ("a1.h3", "m1", 0.15),
    ("a0.h0", "a1.kv1.k", 0.3),
    ("m0", "logits", 0.05),
])


def test_kept_edges_relative_absolute_and_top():
    # relative: |s| >= 0.1 x max |s| = 0.2
    assert sorted(kept_edges(EDGES, threshold=0.1)["score"].tolist()) == [-1.0, 0.3, 2.0]
    assert sorted(kept_edges(EDGES, threshold=0.1, mode="absolute")["score"].tolist()) == \
        [-1.0, 0.15, 0.3, 2.0]
    assert kept_edges(EDGES, threshold=0.0, top_edges=2)["score"].tolist() == [2.0, -1.0]
    assert kept_edges(EDGES.assign(score=0.0), threshold=0.1).empty
    with pytest.raises(ScorerParamError):
        kept_edges(EDGES, mode="median")
    with pytest.raises(ScorerParamError):
        kept_edges(EDGES, top_edges=0)


def test_circuit_heads_membership(tiny_llama):
    _, spec = tiny_llama  # 4 query heads over 2 kv heads
    kept = kept_edges(EDGES, threshold=0.1)
    assert circuit_heads(kept, spec) == {(0, 1), (0, 2), (0, 0)}
    # kv edges count for both query heads of kv group 1 (heads 2, 3) when asked
    assert circuit_heads(kept, spec, kv_edges=True) == {(0, 1), (0, 2), (0, 0), (1, 2), (1, 3)}
    assert circuit_heads(_frame([("embed", "m0", 1.0)]), spec) == set()


def test_membership_fractions_and_is_temporal(tiny_llama):
    _, spec = tiny_llama
    temporal = [{(0, 0), (1, 1)}, {(0, 0), (1, 1), (2, 3)}, {(0, 0), (2, 3)}]
    invariant = [{(1, 1)}, {(2, 2)}]
    t = membership_fractions(temporal, spec)
    i = membership_fractions(invariant, spec)
    assert t[0, 0] == 1.0 and t[1, 1] == pytest.approx(2 / 3) and t[2, 3] == pytest.approx(2 / 3)
    assert i[1, 1] == 0.5 and i[0, 0] == 0.0
    mask = temporal_mask(t, i, temporal_share=0.9, max_invariant_share=0.25)
    assert np.argwhere(mask).tolist() == [[0, 0]]
    # a lower share admits (2, 3) (no invariant circuit) but not (1, 1) (in half of them)
    loose = temporal_mask(t, i, temporal_share=0.6, max_invariant_share=0.25)
    assert np.argwhere(loose).tolist() == [[0, 0], [2, 3]]
    assert np.isnan(membership_fractions([], spec)).all()


def test_agreement_top_k_overlap():
    a = np.array([5.0, -4.0, 0.1, 0.2, 3.0])
    b = np.array([4.0, -5.0, 0.3, 0.0, 0.1])
    out = agreement(a, b, top_k=2)
    assert out["top_k_overlap"] == 2 and out["pearson"] > 0.8


def _pairs(tag: str, n: int = 2) -> list[TaskItem]:
    """Char-tokenizer pairs: equal length, single-character answers."""
    return [TaskItem(prompt=f"{tag} 19{k}0 was", answer="A", distractor="B",
                     corrupt_prompt=f"{tag} 20{k}0 was", meta={"set": tag})
            for k in range(n)]


def _tasks():
    temporal = Task("temporal_facts", _pairs("x") + _pairs("y"), meta={"kind": "temporal"})
    invariant = Task("temporal_facts", [
        TaskItem(prompt="cap of ab is", answer="C", distractor="D",
                 corrupt_prompt="cap of cd is", meta={"set": "z"})], meta={"kind": "invariant"})
    return {"temporal": temporal, "invariant": invariant}


def test_scorer_on_tiny_model(tiny_llama):
    model, _ = tiny_llama
    table = get_scorer("temporal")(model, _tasks(), ig_steps=5, progress=False, edge_threshold=0.5)
    data = table.data
    assert {"invariant_fraction", "is_temporal", "node_score", "exact_patching"} <= set(data)
    assert data["score"].between(0, 1).all() and set(data["score"]) <= {0.0, 0.5, 1.0}
    expected = (data["score"] >= 0.9) & (data["invariant_fraction"] <= 0.25)
    assert (data["is_temporal"] == expected.astype(float)).all()
    meta = table.meta
    assert meta["n_temporal_circuits"] == 2 and meta["n_invariant_circuits"] == 1
    assert [c["set"] for c in meta["circuits"]] == ["x", "y", "z"]
    assert -1.0 <= meta["agreement"]["pearson"] <= 1.0
    # a looser threshold keeps at least as many heads in every circuit
    loose = get_scorer("temporal")(model, _tasks(), ig_steps=5, progress=False,
                                   edge_threshold=0.05, compare_exact=False)
    assert (loose.data["score"].to_numpy() >= data["score"].to_numpy()).all()
    with pytest.raises(ScorerParamError):
        get_scorer("temporal")(model, _tasks(), ig_steps=5, progress=False,
                               threshold_mode="median")


def test_edit_adds_the_source_output_at_the_last_token(tiny_llama):
    model, spec = tiny_llama
    item = _pairs("x", 1)[0]
    heads = [(1, 0), (1, 3)]  # one layer: the source z equals the run's own z there
    values = source_outputs(model, item.prompt, heads)  # source = the prompt itself
    tokens = model.to_tokens(item.prompt)
    last = tokens.shape[-1] - 1

    def cancel(layer):  # z_h(last) <- z_h(last) - z_h(last) = 0, by hand
        def hook(z, hook=None):
            z = z.clone()
            for lay, head in heads:
                if lay == layer:
                    z[:, last, head] = 0
            return z
        return hook

    manual = [(spec.hooks.at("z", 1), cancel(1))]
    with torch.no_grad():
        plain = model(tokens)
        with attached(model, manual):
            expected = model(tokens)
        with attached(model, edit_hooks(model, values, -1.0, last)):
            edited = model(tokens)
    assert not torch.allclose(expected, plain)  # the heads matter at the last token
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-5)
    assert edited_next_token(model, item, heads, -1.0, values) == int(expected[0, -1].argmax())
    with torch.no_grad():
        assert edited_next_token(model, item, heads, 0.0, values) == \
            int(model(tokens)[0, -1].argmax())


def test_temporal_edit_table(tiny_llama):
    model, _ = tiny_llama
    task = Task("temporal_facts", _pairs("x", 3))
    result = temporal_edit(model, task, [(1, 0), (2, 1)], coefficients=(1, 3), n_random=2,
                           n_bootstrap=50, progress=False)
    table = result.table
    assert len(table) == 1 + 3 * 2  # baseline + (target, 2 random) x 2 coefficients
    assert table["flip_rate"].between(0, 1).all() and (table["n"] == 3).all()
    assert set(result.summary) == {"c=1", "c=3", "baseline_flip_rate"}
