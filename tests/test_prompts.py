"""Tests of headprobe.prompts: repeated random tokens (uniqueness, BOS, seeds, global RNG)."""

from __future__ import annotations

import pytest
import torch

from headprobe.prompts import load_resource, repeated_random_tokens, usable_token_ids


def test_usable_token_ids_leave_out_special_tokens(tiny_llama):
    model, spec = tiny_llama
    usable = set(usable_token_ids(model, spec).tolist())
    special = set(model.tokenizer.all_special_ids)
    assert special and not usable & special
    assert len(usable) == min(spec.d_vocab, len(model.tokenizer)) - len(special)


def test_repeated_random_tokens_structure(tiny_llama):
    model, spec = tiny_llama
    prompts = repeated_random_tokens(model, spec, 5, seq_len=12, repeats=3, seed=1)
    assert len(prompts) == 5
    special = set(model.tokenizer.all_special_ids)
    for ids in prompts:
        assert ids.shape == (1 + 12 * 3,)
        assert int(ids[0]) == spec.bos_token_id
        body = ids[1:].reshape(3, 12)
        assert (body == body[0]).all()  # the same sequence repeated
        assert len(set(body[0].tolist())) == 12  # no repeats within one copy
        assert not set(body[0].tolist()) & special
    assert not all(torch.equal(prompts[0], p) for p in prompts[1:])
    no_bos = repeated_random_tokens(model, spec, 1, seq_len=4, seed=1, prepend_bos=False)[0]
    assert no_bos.shape == (8,) and int(no_bos[0]) != spec.bos_token_id


def test_seeds_are_deterministic_and_the_global_rng_is_untouched(tiny_llama):
    model, spec = tiny_llama
    state = torch.random.get_rng_state()
    first = repeated_random_tokens(model, spec, 3, seq_len=10, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = repeated_random_tokens(model, spec, 3, seq_len=10, seed=7)
    other = repeated_random_tokens(model, spec, 3, seq_len=10, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_long_sequences_draw_with_replacement_and_bad_sizes_fail(tiny_llama):
    model, spec = tiny_llama
    pool = len(usable_token_ids(model, spec))
    (ids,) = repeated_random_tokens(model, spec, 1, seq_len=pool + 5, seed=0)
    assert ids.shape == (1 + 2 * (pool + 5),)
    with pytest.raises(ValueError):
        repeated_random_tokens(model, spec, 1, seq_len=1)
    with pytest.raises(ValueError):
        repeated_random_tokens(model, spec, 1, repeats=1)


def test_sink_domains_resource():
    domains = load_resource("sink_domains.json")
    texts = {k: v for k, v in domains.items() if not k.startswith("_")}
    assert {"prose", "code", "math", "dialogue"} <= set(texts)
    assert all(isinstance(t, str) and t for items in texts.values() for t in items)
