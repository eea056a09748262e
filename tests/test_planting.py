"""Planted models (:mod:`headprobe.planting`): each planted role does what it says, checked
on the attention patterns and logits of the bridge (never through a scorer), and the builder
refuses what it cannot plant."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import PlantingError, UnknownNameError
from headprobe.planting import KINDS, planted_model, spread_codes
from headprobe.types import Head

CORE = {(0, 0): "previous_token", (0, 4): "duplicate_token", (1, 2): "induction",
        (1, 4): "previous_token", (2, 6): "induction"}


@pytest.fixture(scope="module", params=KINDS)
def core(request):
    return planted_model(request.param, CORE)


def repeated(planted, length=40, seed=1):
    """[1, 1 + 2 * length] BOS + r + r with r distinct random non-special tokens."""
    tokenizer = planted.tokenizer
    pool = torch.tensor(sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids)))
    generator = torch.Generator().manual_seed(seed)
    r = pool[torch.randperm(len(pool), generator=generator)[:length]]
    return torch.cat([torch.tensor([tokenizer.bos_token_id]), r, r])[None]


def patterns(planted, ids):
    """logits [T, V] and {layer: [H, T, T]} attention patterns from the bridge's hooks."""
    with torch.no_grad():
        logits, cache = planted.bridge.run_with_cache(ids)
    return logits[0], {layer: cache[f"blocks.{layer}.attn.hook_pattern"][0]
                       for layer in range(planted.spec.n_layers)}


def previous_mass(pattern):
    """[H] mean attention from i to i - 1 over i >= 1."""
    rows = torch.arange(1, pattern.shape[-1])
    return pattern[:, rows, rows - 1].mean(-1)


def induction_mass(pattern, length):
    """[H] mean attention from the second copy's tokens to the token after their first copy."""
    rows = torch.arange(length + 2, 2 * length + 1)
    return pattern[:, rows, rows - length + 1].mean(-1)


def test_planted_roles_attend_where_they_should(core):
    length = 40
    ids = repeated(core, length)
    _, pattern = patterns(core, ids)
    for head in core.known("previous_token"):
        assert previous_mass(pattern[head.layer])[head.head] > 0.99
    for head in core.known("induction"):
        assert induction_mass(pattern[head.layer], length)[head.head] > 0.99
    for head in core.known("duplicate_token"):
        rows = torch.arange(length + 1, 2 * length + 1)
        earlier = pattern[head.layer][head.head, rows, rows - length]
        own = pattern[head.layer][head.head, rows, rows]
        assert (earlier / (1 - own)).min() > 0.99  # all mass off the diagonal on the copy


def test_random_heads_are_not_like_planted_ones(core):
    length = 40
    ids = repeated(core, length)
    _, pattern = patterns(core, ids)
    for layer in range(core.spec.n_layers):
        prev = previous_mass(pattern[layer])
        ind = induction_mass(pattern[layer], length)
        for head in range(core.spec.n_heads):
            if Head(layer, head) not in core.roles:
                assert prev[head] < 0.5 and ind[head] < 0.5, (layer, head)


def test_induction_model_predicts_the_copied_token(core):
    for seed in range(3):
        ids = repeated(core, 40, seed)
        logits, _ = patterns(core, ids)
        predicted = logits.argmax(-1)[41:-1]
        assert torch.equal(predicted, ids[0, 42:])


def test_unknown_role_lists_the_roles():
    with pytest.raises(UnknownNameError, match=r"previous_token.*induction"):
        planted_model("llama", {(0, 0): "no_such_role"})


def test_shared_kv_group_is_refused():
    with pytest.raises(PlantingError, match="share kv head 0"):
        planted_model("llama", {(0, 0): "previous_token", (0, 1): "duplicate_token"})


def test_induction_needs_an_earlier_previous_token_head():
    with pytest.raises(PlantingError, match="previous_token head in an earlier layer"):
        planted_model("llama", {(1, 0): "previous_token", (1, 2): "induction"})


def test_spread_codes_are_unit_and_apart():
    codes = spread_codes(90, 54, seed=0)
    cosines = (codes @ codes.T).fill_diagonal_(0.0)
    assert torch.allclose(codes.norm(dim=1), torch.ones(90), atol=1e-5)
    assert cosines.abs().max() < 0.3
