"""Tests of headprobe.runtime.layers: resuming the forward pass at layer k (run_from_layer),
with and without a recorded prefix of keys/values (record_kv), equals the full forward pass."""

from __future__ import annotations

import pytest
import torch

from headprobe.inputs import iter_batches, tokenize_prompts
from headprobe.runtime.layers import record_kv, run_from_layer
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


@pytest.fixture(scope="module")
def tiny_sliding_gemma():
    """Gemma 3 with sliding-window layers (window 4, shorter than the prompts) around a full
    one; 4 query heads over 2 kv heads."""
    import transformers as tf

    from headprobe.models import wrap_hf_model
    from headprobe.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    config = tf.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0,
        architectures=["Gemma3ForCausalLM"])
    config._attn_implementation = "eager"
    with torch.random.fork_rng():  # the global RNG is restored afterwards
        torch.manual_seed(1)
        hf_model = tf.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, param in hf_model.named_parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, 0.08)
                elif "norm" in name:
                    param.add_(0.3 * torch.randn_like(param))
    return wrap_hf_model(hf_model, tokenizer, name="tiny-gemma3-sliding",
                         hf_name="tiny-gemma3-sliding", device="cpu")


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
