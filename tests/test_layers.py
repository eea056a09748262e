"""Tests of headprobe.runtime.layers: resuming the forward pass at layer k (run_from_layer),
with and without a recorded prefix of keys/values (record_kv), equals the full forward pass."""

from __future__ import annotations

import pytest
import torch

from headprobe.inputs import iter_batches, tokenize_prompts
from headprobe.runtime.hf_compat import cache_kwarg
from headprobe.runtime.layers import (
    build_layer_inputs,
    embed,
    position_masks,
    record_kv,
    run_from_layer,
)
from headprobe.tasks.base import TaskItem

# Pairs that differ late: with the <s> token, "the cat " fills positions 0..8, so the scan
# reruns only the last few positions. Uneven lengths (padding); batch_size=3 gives batches of
# 3 and 2 prompts; the last pair is identical, which caps its batch's prefix at that prompt's
# last token.
LATE_ITEMS = [
    TaskItem("the cat sat on", "e", "x", "the cat sat in"),  # differs at position 13
    TaskItem("the cat ran far", "r", "x", "the cat ran for"),  # 14
    TaskItem("the cat is", "n", "x", "the cat it"),  # 10 (shortest of its batch)
    TaskItem("the cat hid under", "a", "x", "the cat hid undid"),  # 16
    TaskItem("the cat ate", "m", "x", "the cat ate"),  # identical: last token is 11
]
LATE_PREFIX_LENGTHS = [10, 11]


def _late_batches(model, spec, batch_size):
    clean = tokenize_prompts(model, [it.prompt for it in LATE_ITEMS], spec)
    corrupt = tokenize_prompts(model, [it.corrupt_prompt for it in LATE_ITEMS], spec)
    pad = spec.pad_token_id or 0
    return list(zip(iter_batches(clean, batch_size, pad_token_id=pad),
                    iter_batches(corrupt, batch_size, pad_token_id=pad), strict=True))


def _check_run_from_layer(model, spec, prompts, layers):
    """Logits from every cached resid_pre[k] via run_from_layer equal the full forward."""
    tokens = tokenize_prompts(model, prompts, spec)
    batch = next(iter_batches(tokens, len(tokens), pad_token_id=spec.pad_token_id or 0))
    store = {}
    hooks = [(spec.hooks.at("resid_pre", layer),
              lambda act, hook, layer=layer: store.__setitem__(layer, act.clone()))
             for layer in layers]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        reference = model(batch.tokens, **batch.forward_kwargs())
    with torch.inference_mode():
        for layer in layers:
            logits = run_from_layer(model, store[layer], layer, batch.attention_mask,
                                    batch.position_ids)
            real = batch.attention_mask
            assert (logits - reference)[real].abs().max() <= 1e-5, layer
            last = run_from_layer(model, store[layer], layer, batch.attention_mask,
                                  batch.position_ids, positions=batch.last)
            expected = reference[torch.arange(batch.size), batch.last]
            # a [B, d] instead of [B, T, d] unembedding matmul: float32 round-off only
            assert (last - expected).abs().max() <= 1e-4, layer


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_run_from_layer_reproduces_forward_tiny(fixture, request):
    model, spec = request.getfixturevalue(fixture)
    _check_run_from_layer(model, spec, ["hello world", "ab", "the quick fox"],
                          list(range(spec.n_layers)))


def test_run_from_layer_fires_hooks_at_and_after_layer(tiny_llama):
    model, spec = tiny_llama
    tokens = tokenize_prompts(model, ["hello world"], spec)
    batch = next(iter_batches(tokens, 1))
    fired = []
    hooks = [(spec.hooks.at("z", layer), lambda act, hook, layer=layer: fired.append(layer))
             for layer in range(spec.n_layers)]
    resid = torch.zeros(1, batch.seq_len, spec.d_model)
    with torch.inference_mode():
        run_from_layer(model, resid, 1, batch.attention_mask, batch.position_ids, hooks)
    assert fired == [1, 2]


def test_run_from_layer_refuses_gpt2(tiny_gpt2):
    model, spec = tiny_gpt2
    with pytest.raises(NotImplementedError, match="loop_scan"):
        run_from_layer(model, torch.zeros(1, 3, spec.d_model), 0)


SMOL_PROMPTS = ["When Mary and John went to the store, John gave a drink to",
                "Paris is the capital of"]


@pytest.mark.real
def test_run_from_layer_reproduces_forward_smol(smol):
    model, spec = smol
    _check_run_from_layer(model, spec, SMOL_PROMPTS,
                          [0, 1, 14, spec.n_layers - 1])


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma", "tiny_sliding_gemma"])
def test_run_from_layer_with_prefix_reproduces_forward(fixture, request):
    """Running positions P..T-1 with the prefix's keys/values equals the full forward there."""
    model, spec = request.getfixturevalue(fixture)
    clean, _ = _late_batches(model, spec, 3)[0]
    start = 10
    store = {}
    hooks = [(spec.hooks.at("resid_pre", layer),
              lambda act, hook, layer=layer: store.__setitem__(layer, act.clone()))
             for layer in range(spec.n_layers)]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        reference = model(clean.tokens, **clean.forward_kwargs())
    with torch.inference_mode():
        prefix = record_kv(model, store[0][:, :start], clean.attention_mask[:, :start],
                           clean.position_ids[:, :start])
        assert prefix.length == start and prefix.batch == clean.size
        assert set(prefix.keys) == set(range(spec.n_layers))
        for layer in range(spec.n_layers):
            logits = run_from_layer(model, store[layer][:, start:], layer, clean.attention_mask,
                                    clean.position_ids, prefix=prefix)
            real = clean.attention_mask[:, start:]
            assert (logits - reference[:, start:])[real].abs().max() <= 1e-5, layer
            # rows repeated twice (copy-major) continue the same prefix rows
            last = run_from_layer(model, store[layer][:, start:].repeat(2, 1, 1), layer,
                                  clean.attention_mask.repeat(2, 1),
                                  clean.position_ids.repeat(2, 1),
                                  positions=clean.last.repeat(2), prefix=prefix)
            expected = reference[torch.arange(clean.size), clean.last].repeat(2, 1)
            assert (last - expected).abs().max() <= 1e-4, layer


CACHE_PROMPTS = ["the cat sat on", "a", "hello there, world"]
CONTINUATION = 6  # tokens fed one at a time after the prompts


def _cache_setup(model, spec, side):
    """A padded batch of CACHE_PROMPTS, a fixed continuation [B, CONTINUATION] per row, and
    each row's reference logits [len_b + CONTINUATION, V] from a plain HF forward over its
    own unpadded tokens."""
    lists = tokenize_prompts(model, CACHE_PROMPTS, spec)
    batch = next(iter_batches(lists, len(lists), pad_token_id=spec.pad_token_id or 0,
                              padding_side=side))
    generator = torch.Generator().manual_seed(0)
    continuation = torch.randint(3, spec.d_vocab, (batch.size, CONTINUATION),
                                 generator=generator)
    with torch.inference_mode():
        references = [model.original_model(
            input_ids=torch.cat([ids, continuation[row]])[None]).logits[0].float()
            for row, ids in enumerate(lists)]
    return batch, continuation, references


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma", "tiny_sliding_gemma"])
def test_run_from_layer_with_growing_cache_equals_forward(fixture, side, request):
    """From the token embeddings with a DynamicCache: prefill, then one column per step
    (pad columns stay between prompt and continuation under right padding); every step's
    logits equal the full forward at that position, and the hooks see one column."""
    from transformers import DynamicCache

    model, spec = request.getfixturevalue(fixture)
    batch, continuation, references = _cache_setup(model, spec, side)
    cache = DynamicCache()
    widths = []
    hooks = [(spec.hooks.at("resid_pre", 0), lambda act, hook: widths.append(act.shape[1]))]
    with torch.inference_mode():
        logits = run_from_layer(model, embed(model, batch.tokens), 0, batch.attention_mask,
                                batch.position_ids, hooks, cache=cache, positions=batch.last)
        keys, real = batch.position_ids, batch.attention_mask.bool()
        for step in range(CONTINUATION + 1):
            for row in range(batch.size):
                position = int(batch.lengths[row]) - 1 + step
                torch.testing.assert_close(logits[row].float(), references[row][position],
                                           atol=1e-4, rtol=0)
            if step == CONTINUATION:
                break
            query = (batch.lengths + step)[:, None]
            keys = torch.cat([keys, query], 1)
            real = torch.cat([real, torch.ones_like(query, dtype=torch.bool)], 1)
            column = torch.full((batch.size,), keys.shape[1] - 1)
            logits = run_from_layer(model, embed(model, continuation[:, step:step + 1]), 0,
                                    real, keys, hooks, cache=cache, positions=column)
    assert widths == [batch.seq_len] + [1] * CONTINUATION
    assert cache.get_seq_length() == batch.seq_len + CONTINUATION


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_run_from_layer_at_k_with_cache_equals_forward(fixture, request):
    """A cached prefix from layer 0, then the remaining columns from resid_pre[k] at every k."""
    from transformers import DynamicCache

    model, spec = request.getfixturevalue(fixture)
    batch, continuation, _ = _cache_setup(model, spec, "left")
    tokens = torch.cat([batch.tokens, continuation], 1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(continuation, dtype=torch.bool)], 1)
    positions = torch.cat([batch.position_ids,
                           batch.lengths[:, None] + torch.arange(CONTINUATION)], 1)
    store = {}
    hooks = [(spec.hooks.at("resid_pre", layer),
              lambda act, hook, layer=layer: store.__setitem__(layer, act.clone()))
             for layer in range(spec.n_layers)]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        reference = model(tokens, attention_mask=mask.long(), position_ids=positions)
    start = batch.seq_len
    with torch.inference_mode():
        for layer in range(spec.n_layers):
            cache = DynamicCache()
            run_from_layer(model, embed(model, batch.tokens), 0, batch.attention_mask,
                           batch.position_ids, cache=cache)
            logits = run_from_layer(model, store[layer][:, start:], layer, mask, positions,
                                    cache=cache)
            assert (logits - reference[:, start:]).abs().max() <= 1e-5, layer


def test_run_from_layer_cache_checks(tiny_llama):
    from transformers import DynamicCache

    model, spec = tiny_llama
    batch = next(iter_batches(tokenize_prompts(model, ["hello world"], spec), 1))
    resid = torch.zeros(1, batch.seq_len, spec.d_model)
    cache = DynamicCache()
    with torch.inference_mode():
        run_from_layer(model, resid, 0, batch.attention_mask, batch.position_ids, cache=cache)
        with pytest.raises(ValueError, match="cache holds"):  # masks not over cache + new
            run_from_layer(model, resid[:, :1], 0, cache=cache)
        prefix = record_kv(model, resid, batch.attention_mask, batch.position_ids)
        with pytest.raises(ValueError, match="not both"):
            run_from_layer(model, resid[:, :1], 0, prefix=prefix, cache=cache)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_embed_is_hook_embed_and_resid_pre_0(fixture, request):
    model, spec = request.getfixturevalue(fixture)
    batch = next(iter_batches(tokenize_prompts(model, ["hello world", "ab"], spec), 2))
    names = ["hook_embed", spec.hooks.at("resid_pre", 0)]
    seen = {}
    hooks = [(name, lambda act, hook, name=name: seen.__setitem__(name, act.clone()))
             for name in names]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        model(batch.tokens, **batch.forward_kwargs())
        reference = dict(seen)
        seen.clear()
        embedded = embed(model, batch.tokens)
    assert torch.equal(embedded, reference["hook_embed"])
    assert torch.equal(embedded, reference[spec.hooks.at("resid_pre", 0)])
    assert torch.equal(seen["hook_embed"], embedded)  # the hook fired on the helper's call


@pytest.mark.parametrize("side", ["left", "right"])
def test_position_masks_equal_hf_masks_on_real_rows(tiny_sliding_gemma, side):
    """The one mask rule equals HF's (column-causal, key padding, window) on real queries."""
    from transformers.masking_utils import (
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    model, spec = tiny_sliding_gemma
    lists = tokenize_prompts(model, [it.prompt for it in LATE_ITEMS], spec)
    batch = next(iter_batches(lists, len(lists), padding_side=side))
    resid = torch.zeros(batch.size, batch.seq_len, spec.d_model)
    inputs = build_layer_inputs(model, resid, batch.attention_mask, batch.position_ids)
    kwargs = {"config": model.original_model.model.config, "inputs_embeds": resid,
              "attention_mask": batch.attention_mask.long(), cache_kwarg(): None,
              "position_ids": batch.position_ids}
    hf = {"full_attention": create_causal_mask(**kwargs),
          "sliding_attention": create_sliding_window_causal_mask(**kwargs)}
    assert set(inputs.masks) == set(hf)
    real = batch.attention_mask
    for layer_type, mask in inputs.masks.items():
        assert mask.shape == (batch.size, 1, batch.seq_len, batch.seq_len)
        assert torch.equal(mask[:, 0][real], hf[layer_type][:, 0][real]), layer_type
    direct = position_masks(spec, batch.position_ids, batch.attention_mask,
                            batch.position_ids, batch.attention_mask, torch.float32)
    assert all(torch.equal(direct[key], inputs.masks[key]) for key in direct)
