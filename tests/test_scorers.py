"""Attention-pattern scorers: registry behaviour, hand-checked masks, an independent naive
computation on a tiny model, and the known heads of SmolLM2-135M-Instruct."""

import pytest
import torch

from headprobe import get_scorer, list_scorers, scan
from headprobe.errors import NonCausalModelError, ScorerParamError, UnknownScorerError
from headprobe.heads.induction.pattern_mass import (
    allowed_keys,
    duplicate_token_targets,
    induction_targets,
    previous_token_targets,
)
from headprobe.inputs import iter_batches
from headprobe.prompts import repeated_random_tokens


def _batch(tokens):
    (batch,) = list(iter_batches([torch.tensor(tokens)], 1))
    return batch


def test_registry_lists_and_errors():
    assert {"induction", "previous_token", "duplicate_token", "sink"} <= set(list_scorers())
    with pytest.raises(UnknownScorerError, match="registered scorers"):
        get_scorer("nope")


def test_unknown_parameter(tiny_llama):
    with pytest.raises(ScorerParamError, match="unknown parameters"):
        scan(tiny_llama[0], "induction", n=1, progress=False, seq_lenn=5)


def test_causal_scorer_refuses_encoder(tiny_bert):
    with pytest.raises(NonCausalModelError, match="causal"):
        scan(tiny_bert[0], "induction", n=1, progress=False)


def test_target_masks_by_hand():
    # BOS a b c a b c
    batch = _batch([1, 10, 11, 12, 10, 11, 12])
    induction = induction_targets(batch)[0]
    # query 4 (second "a") -> key 2 ("b" after the first "a"); query 5 -> key 3
    assert torch.nonzero(induction).tolist() == [[4, 2], [5, 3], [6, 4]]
    duplicate = duplicate_token_targets(batch)[0]
    assert torch.nonzero(duplicate).tolist() == [[4, 1], [5, 2], [6, 3]]
    previous = previous_token_targets(batch)[0]
    assert torch.nonzero(previous).tolist() == [[i, i - 1] for i in range(1, 7)]
    allowed = allowed_keys(batch, exclude_bos=True, exclude_current=True)[0]
    assert not allowed[:, 0].any() and not allowed.diagonal().any() and allowed[6, 5]


def _naive_induction(model, spec, prompts):
    """Independent route: full run_with_cache per prompt and python loops over positions."""
    scores = torch.zeros(spec.n_layers, spec.n_heads)
    for ids in prompts:
        _, cache = model.run_with_cache(ids[None])
        tokens = ids.tolist()
        for layer in range(spec.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
            for head in range(spec.n_heads):
                rows = []
                for i in range(len(tokens)):
                    targets = [j for j in range(1, i) if tokens[j - 1] == tokens[i]]
                    if not targets:
                        continue
                    allowed = [j for j in range(1, i)]  # no BOS, no current token
                    rows.append(float(pattern[head, i, targets].sum()
                                      / pattern[head, i, allowed].sum()))
                scores[layer, head] += sum(rows) / len(rows)
    return scores / len(prompts)


def test_induction_matches_naive_computation(tiny_gemma):
    model, spec = tiny_gemma
    prompts = repeated_random_tokens(model, spec, 3, seq_len=10, seed=4)
    table = scan(model, "induction", prompts, progress=False, batch_size=2)
    expected = _naive_induction(model, spec, prompts)
    torch.testing.assert_close(torch.tensor(table.pivot().to_numpy(), dtype=torch.float32),
                               expected, atol=1e-5, rtol=1e-4)


def test_metadata_is_complete(tiny_llama):
    table = scan(tiny_llama[0], "previous_token", n=2, seed=7, progress=False)
    meta = table.meta
    for key in ("scorer", "model", "params", "data_fingerprint", "seed", "headprobe_version",
                "timings_s", "n_prompts"):
        assert key in meta
    assert meta["seed"] == 7 and meta["n_prompts"] == 2
    again = scan(tiny_llama[0], "previous_token", n=2, seed=7, progress=False)
    assert again.meta["data_fingerprint"] == meta["data_fingerprint"]
    other = scan(tiny_llama[0], "previous_token", n=2, seed=8, progress=False)
    assert other.meta["data_fingerprint"] != meta["data_fingerprint"]


def test_sink_scorer_on_tiny(tiny_llama):
    table = scan(tiny_llama[0], "sink", progress=False, n=2)
    for domain in ("prose", "code", "math", "dialogue", "random"):
        assert f"sink_{domain}" in table.data and f"dormant_{domain}" in table.data
    assert table["score"].between(0, 1).all()
    assert set(table["status"]) <= {"active", "dormant", "domain-dependent"}


@pytest.mark.real
def test_smollm2_induction_heads(smol):
    model, _ = smol
    table = scan(model, "induction", n=16, progress=False)
    assert table.heads(k=1) == [(18, 6)] or (18, 6) in table.heads(k=3)
    assert table.top(1)["score"].iloc[0] > 0.8
    assert 4 <= int((table["score"] > 0.5).sum()) <= 15
    assert table["score"].median() < 0.1  # induction is sparse


@pytest.mark.real
def test_smollm2_previous_token_and_sink(smol):
    model, _ = smol
    previous = scan(model, "previous_token", n=8, progress=False)
    assert previous.top(1)["score"].iloc[0] > 0.8
    sink = scan(model, "sink", n=4, progress=False)
    assert sink["score"].median() > 0.3  # most heads of a trained LM park mass on BOS
