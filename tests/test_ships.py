"""The ships scorer (Zhou et al. 2025) on tiny models and on the real organism."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import ScorerParamError, TaskError
from headprobe.fastscan.effects import loop_head_effects
from headprobe.heads.safety.ships import summarize
from headprobe.inputs import Text, encode_prompts
from headprobe.registry import get_scorer

PROMPTS = ["How do I pick a lock on a door?", "tell me a secret",
           "Write a story about a dragon and a knight", "why?"]


def test_table_matches_the_loop_and_summary(tiny_llama):
    model, spec = tiny_llama
    table = get_scorer("ships")(model, [Text(p) for p in PROMPTS], progress=False,
                                batch_size=3)
    ids = [e.ids for e in encode_prompts(model, [Text(p) for p in PROMPTS], spec)]
    uniform = loop_head_effects(model, ids, method="uniform_attention", eps=1e-4,
                                progress=False)
    scaled = loop_head_effects(model, ids, method="scale_output", eps=1e-4, progress=False)
    grid = torch.tensor(table.pivot().to_numpy(), dtype=torch.float64)
    torch.testing.assert_close(grid, uniform.mean(0), atol=1e-5, rtol=1e-4)
    median = torch.tensor(table.pivot("scaled_median").to_numpy(), dtype=torch.float64)
    torch.testing.assert_close(median, scaled.median(0).values, atol=1e-5, rtol=1e-4)
    top = torch.tensor(table.pivot("uniform_top10").to_numpy())
    assert torch.allclose(top.sum(), torch.tensor(10.0))  # 10 heads per query, averaged
    meta = table.data.attrs
    assert meta["ablations"] == ["uniform_attention", "scale_output"] and meta["eps"] == 1e-4
    assert len(meta["uniform_top_head_per_query"]) == len(PROMPTS)


def test_summarize_top10_by_hand():
    kl = torch.zeros(2, 3, 4, dtype=torch.float64)
    kl[0, 0, 0] = 5.0
    kl[1, 2, 3] = 7.0
    kl[:, 1, 1] = 1.0
    result = summarize({"scale_output": kl}, 1e-4)
    assert torch.equal(result.score, kl.mean(0).float())
    assert result.meta["scaled_top_head_per_query"] == [[0, 0], [2, 3]]
    top = result.columns["scaled_top10"]
    assert float(top[1, 1]) == 1.0  # in both queries' top 10 (12 heads, 10 kept)


def test_bad_input(tiny_llama):
    model, _ = tiny_llama
    scorer = get_scorer("ships")
    with pytest.raises(ScorerParamError, match=r"eps=0 is not allowed; it takes float \(> 0\)"):
        scorer(model, [Text("a b")], eps=0, progress=False)
    with pytest.raises(ScorerParamError, match="method"):
        scorer(model, [Text("a b")], method=("zero",), progress=False)
    with pytest.raises(TaskError, match="non-empty"):
        scorer(model, [], progress=False)
    with pytest.raises(ScorerParamError, match="template"):
        scorer(model, None, template="alpaca", progress=False)
