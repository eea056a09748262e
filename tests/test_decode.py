"""KV-cached generation (headprobe.runtime.decode) against the recomputing reference route."""

from __future__ import annotations

import pytest
import torch

from headprobe.inputs import iter_batches, tokenize_prompts
from headprobe.interventions import intervene, zero_ablation
from headprobe.runtime.decode import generate, position_masks
from headprobe.runtime.hf_compat import bridge_attention_cache
from headprobe.runtime.positions import (
    current_positions,
    forward_positions,
    key_positions,
    query_positions,
)

PROMPTS = ["the cat sat on", "a", "hello there, world"]
NEW = 8


@pytest.fixture(params=["llama-gqa", "gpt2", "gemma3", "gemma3-sliding"])
def decoder(request, tiny_llama, tiny_gpt2, tiny_gemma, tiny_sliding_gemma):
    return {"llama-gqa": tiny_llama, "gpt2": tiny_gpt2, "gemma3": tiny_gemma,
            "gemma3-sliding": tiny_sliding_gemma}[request.param]


def n_hooks(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


def assert_same(got, ref, atol: float = 1e-4) -> None:
    assert torch.equal(got.tokens, ref.tokens), (got.texts, ref.texts)
    assert torch.equal(got.lengths, ref.lengths)
    torch.testing.assert_close(got.logits, ref.logits, atol=atol, rtol=0)


def test_cached_equals_uncached_both_paddings(decoder):
    model, _ = decoder
    ref = generate(model, PROMPTS, max_new_tokens=NEW, use_cache=False, keep_logits=True)
    assert ref.tokens.shape == (len(PROMPTS), NEW)
    assert ref.logits.shape[:2] == (len(PROMPTS), NEW)
    for side in ("left", "right"):
        for use_cache in (True, False):
            got = generate(model, PROMPTS, max_new_tokens=NEW, padding_side=side,
                           use_cache=use_cache, keep_logits=True)
            assert_same(got, ref)
    # the reference route agrees with a plain forward pass over prompt + continuation
    ids = tokenize_prompts(model, PROMPTS[:1], model.headprobe_spec)[0]
    full = torch.cat([ids, ref.tokens[0]])[None]
    with torch.no_grad():
        logits = model.original_model(input_ids=full).logits[0, len(ids) - 1:-1]
    torch.testing.assert_close(logits.float(), ref.logits[0], atol=1e-4, rtol=0)
    assert torch.equal(logits.argmax(-1), ref.tokens[0])


LONG_PROMPTS = ["the cat sat on the mat and then it ran to the door of the house", "a b",
                "hello there, world: one two three four five six"]


def test_chunked_prefill_equals_one_prefill(decoder):
    model, _ = decoder
    ref = generate(model, LONG_PROMPTS, max_new_tokens=NEW, keep_logits=True)
    for side in ("left", "right"):
        for chunk in (1, 3, 1000):
            got = generate(model, LONG_PROMPTS, max_new_tokens=NEW, padding_side=side,
                           keep_logits=True, prefill_chunk=chunk)
            assert_same(got, ref)


def test_chunked_prefill_refuses_reducers_and_uncached(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="reducers"):
        generate(model, PROMPTS, max_new_tokens=2, prefill_chunk=2,
                 reducers={"pattern": lambda act, ctx: None})
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, PROMPTS, max_new_tokens=2, prefill_chunk=2, use_cache=False)
    with pytest.raises(ValueError, match=">= 1"):
        generate(model, PROMPTS, max_new_tokens=2, prefill_chunk=0)


def test_batched_equals_alone(decoder):
    model, _ = decoder
    batched = generate(model, PROMPTS, max_new_tokens=NEW, batch_size=3, keep_logits=True)
    for index, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], max_new_tokens=NEW, keep_logits=True)
        assert torch.equal(alone.tokens[0], batched.tokens[index])
        assert alone.texts[0] == batched.texts[index]
        torch.testing.assert_close(alone.logits[0], batched.logits[index], atol=1e-4, rtol=0)
    assert batched.prompt_lengths.tolist() == [len(p) + 1 for p in PROMPTS]  # + BOS


def test_reducer_receives_step_and_positions(tiny_llama):
    model, spec = tiny_llama
    lengths = torch.tensor([len(p) + 1 for p in PROMPTS])
    for side in ("left", "right"):
        for use_cache in (True, False):
            seen: list[tuple[int, torch.Tensor, tuple[int, ...]]] = []

            def reducer(z, context, seen=seen):
                seen.append((context.step, context.positions.clone(), tuple(z.shape)))
                assert context.layer == 1

            generate(model, PROMPTS, max_new_tokens=4, padding_side=side, use_cache=use_cache,
                     reducers={"z": reducer}, layers=[1])
            assert [step for step, _, _ in seen] == [0, 1, 2, 3]
            batch = next(iter_batches(tokenize_prompts(model, PROMPTS, spec), 8,
                                      padding_side=side))
            assert torch.equal(seen[0][1], batch.position_ids)
            assert seen[0][2] == (3, batch.seq_len, spec.n_heads, spec.d_head)
            for step, positions, shape in seen[1:]:
                if use_cache:
                    assert shape == (3, 1, spec.n_heads, spec.d_head)
                    assert torch.equal(positions, (lengths + step - 1)[:, None])
                else:
                    assert shape[1] == int(lengths.max()) + step
                    assert torch.equal(positions.max(-1).values, lengths + step - 1)


def test_hooks_option_and_removal(tiny_llama):
    model, _ = tiny_llama
    before = n_hooks(model)
    hooks = zero_ablation(model, [(0, 1), (2, 3)])
    via_option = generate(model, PROMPTS, max_new_tokens=NEW, hooks=hooks, keep_logits=True)
    with intervene(model, [(0, 1), (2, 3)], "zero"):
        via_block = generate(model, PROMPTS, max_new_tokens=NEW, keep_logits=True)
    assert_same(via_option, via_block, atol=0)
    plain = generate(model, PROMPTS, max_new_tokens=NEW, keep_logits=True)
    assert (plain.logits - via_option.logits).abs().max() > 1e-3
    assert n_hooks(model) == before

    def boom(activation, context):
        if context.step == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(model, PROMPTS, max_new_tokens=NEW, hooks=hooks, reducers={"z": boom})
    assert n_hooks(model) == before
    assert current_positions() is None


def test_stop_at_eos(tiny_llama):
    model, _ = tiny_llama
    plain = generate(model, PROMPTS, max_new_tokens=NEW)
    eos = int(plain.tokens[0, 2])  # make row 0's third token the stop token
    stopped = generate(model, PROMPTS, max_new_tokens=NEW, stop_at_eos=True, eos_token_id=eos)
    pad = model.headprobe_spec.pad_token_id
    for row in range(len(PROMPTS)):
        hits = (plain.tokens[row] == eos).nonzero().flatten()
        keep = int(hits[0]) + 1 if hits.numel() else NEW
        assert int(stopped.lengths[row]) == keep
        assert torch.equal(stopped.tokens[row, :keep], plain.tokens[row, :keep])
        assert bool((stopped.tokens[row, keep:] == pad).all())
    assert int(stopped.lengths[0]) <= 3


def test_sampling_is_seeded_local_and_route_independent(tiny_gemma):
    model, _ = tiny_gemma
    state = torch.random.get_rng_state()
    options = {"max_new_tokens": NEW, "do_sample": True, "temperature": 1.5, "top_p": 0.9}
    first = generate(model, PROMPTS, seed=3, **options)
    again = generate(model, PROMPTS, seed=3, padding_side="right", use_cache=False, **options)
    other = generate(model, PROMPTS, seed=4, **options)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, other.tokens)
    greedy = generate(model, PROMPTS, max_new_tokens=NEW)
    top1 = generate(model, PROMPTS, max_new_tokens=NEW, do_sample=True, top_k=1, seed=9)
    assert torch.equal(greedy.tokens, top1.tokens)


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma3", "gemma3-sliding"])
def test_cached_steps_go_through_the_layer_runner(kind, monkeypatch, request):
    """layer_runner architectures decode through run_from_layer (one call per step, with the
    growing cache); GPT-2 calls the HF model; the use_cache=False reference never uses it."""
    import headprobe.runtime.decode as decode

    fixture = {"llama-gqa": "tiny_llama", "gpt2": "tiny_gpt2", "gemma3": "tiny_gemma",
               "gemma3-sliding": "tiny_sliding_gemma"}[kind]
    model, spec = request.getfixturevalue(fixture)
    calls = []
    original = decode.run_from_layer

    def counting(*args, **kwargs):
        calls.append(kwargs["cache"])
        return original(*args, **kwargs)

    monkeypatch.setattr(decode, "run_from_layer", counting)
    generate(model, PROMPTS, max_new_tokens=3, batch_size=8)
    assert spec.facts.layer_runner == (kind != "gpt2")
    if spec.facts.layer_runner:
        assert len(calls) == 3 and all(cache is calls[0] for cache in calls)
        assert calls[0].get_seq_length() == max(len(p) + 1 for p in PROMPTS) + 2
    else:
        assert calls == []
    calls.clear()
    generate(model, PROMPTS, max_new_tokens=3, use_cache=False)
    assert calls == []


def test_position_masks_follow_positions(tiny_sliding_gemma):
    _, spec = tiny_sliding_gemma
    # right padding after a 3-token prompt: pad columns between prompt and continuation
    keys = torch.tensor([[0, 1, 2, 0, 0, 3, 4, 5, 6]])
    real = torch.tensor([[True, True, True, False, False, True, True, True, True]])
    query = torch.tensor([[6]])
    masks = position_masks(spec, query, torch.ones_like(query, dtype=torch.bool), keys, real,
                           torch.float32)
    full = masks["full_attention"][0, 0, 0] == 0
    sliding = masks["sliding_attention"][0, 0, 0] == 0
    assert full.tolist() == real[0].tolist()
    # window 4: positions 3..6 only
    assert sliding.tolist() == [False, False, False, False, False, True, True, True, True]


def test_published_positions_fallback_and_reset():
    assert current_positions() is None
    torch.testing.assert_close(query_positions(2, 3, "cpu"), torch.tensor([[0, 1, 2]] * 2))
    published = torch.tensor([[5], [7]])
    keys = torch.tensor([[0, 1, 5], [6, 0, 7]])
    with forward_positions(published, key=keys):
        assert torch.equal(query_positions(2, 1, "cpu"), published)
        assert torch.equal(key_positions(2, 3, "cpu"), keys)
        with pytest.raises(ValueError, match="shape"):
            query_positions(2, 4, "cpu")
    assert current_positions() is None
    with pytest.raises(RuntimeError, match="x"), forward_positions(published):
        raise RuntimeError("x")
    assert current_positions() is None


@pytest.mark.real
def test_smollm2_generation_matches_hf_generate(smol):
    model, spec = smol
    prompts = ["The capital of France is", "def fibonacci(n):"]
    cached = generate(model, prompts, max_new_tokens=NEW, keep_logits=True)
    uncached = generate(model, prompts, max_new_tokens=NEW, use_cache=False,
                        padding_side="right", keep_logits=True)
    assert torch.equal(cached.tokens, uncached.tokens)
    torch.testing.assert_close(cached.logits, uncached.logits, atol=2e-4, rtol=0)  # |logit|~20
    lists = tokenize_prompts(model, prompts, spec)
    batch = next(iter_batches(lists, 2, pad_token_id=spec.pad_token_id or 0,
                              padding_side="left"))
    # HF's own generate loop on the bridged model; from transformers 5.24 its decoder layers
    # pass the cache as ``cache``, which the bridge attention reads only through the adapter
    with torch.no_grad(), bridge_attention_cache(model):
        out = model.original_model.generate(
            input_ids=batch.tokens, attention_mask=batch.attention_mask.long(),
            max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
            pad_token_id=spec.pad_token_id or 0)
    assert torch.equal(out[:, batch.seq_len:], cached.tokens)
