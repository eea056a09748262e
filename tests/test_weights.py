"""Tests of headprobe.weights: per-head W_O shapes, heads' writes summing to the attention
output (minus its bias), and Hugging Face module lookup."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import HeadIndexError
from headprobe.inputs import iter_batches, tokenize_prompts
from headprobe.placement import is_placed, placed_map
from headprobe.runtime.hooks import capture
from headprobe.weights import head_output_weights, hf_module, placed, unwrap


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_gemma"])
def test_head_output_weights_shape(fixture, request):
    model, spec = request.getfixturevalue(fixture)
    weights = head_output_weights(model, spec)
    assert weights.shape == (spec.n_layers, spec.n_heads, spec.d_head, spec.d_model)
    assert not weights.requires_grad
    torch.testing.assert_close(head_output_weights(model, spec, 1), weights[1])
    with pytest.raises(HeadIndexError):
        head_output_weights(model, spec, spec.n_layers)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_heads_sum_to_attention_output(fixture, request):
    """sum_h z_h @ W_O[h] equals hook_attn_out minus the output bias, at every position."""
    model, spec = request.getfixturevalue(fixture)
    tokens = tokenize_prompts(model, ["hello world", "abc"], spec)
    batch = next(iter_batches(tokens, 2, pad_token_id=spec.pad_token_id or 0))
    names = [spec.hooks.at(kind, layer) for layer in range(spec.n_layers)
             for kind in ("z", "attn_out")]
    with torch.inference_mode(), capture(model, names) as seen:
        model(batch.tokens, **batch.forward_kwargs())
    w_o = head_output_weights(model, spec)
    facts = spec.facts
    for layer in range(spec.n_layers):
        z = seen[spec.hooks.at("z", layer)]  # [B, T, H, d_head]
        out = seen[spec.hooks.at("attn_out", layer)]  # [B, T, d_model]
        o_proj = hf_module(model, f"{facts.layers_path}.{layer}.{facts.attention_module}."
                                  f"{facts.o_proj}")
        bias = o_proj.bias if o_proj.bias is not None else torch.zeros(spec.d_model)
        per_head = torch.einsum("bthd,hdm->bthm", z, w_o[layer])
        real = batch.attention_mask
        torch.testing.assert_close(per_head.sum(2)[real], (out - bias)[real], atol=1e-5,
                                   rtol=1e-4)
        assert per_head.abs().max() > 1e-3


def test_hf_module_unwraps_bridge_components(tiny_llama):
    model, spec = tiny_llama
    norm = hf_module(model, spec.facts.final_norm)
    assert type(norm).__name__ == "LlamaRMSNorm"
    assert unwrap(norm) is norm
    layer = hf_module(model, f"{spec.facts.layers_path}.0")
    assert type(layer).__name__ == "LlamaDecoderLayer"
    with pytest.raises(AttributeError):
        hf_module(model, "model.no_such_module")


@pytest.mark.parametrize(("device_map", "placed_here"), [
    ({"": "cpu"}, False),  # from_pretrained(device_map="cpu"): a plain model on one device
    ({"": 0} if torch.cuda.is_available() else {"": "cpu"}, False),
    ({"model": "cpu", "lm_head": "cpu"}, False),  # several entries, one device
    ({"model": "cpu", "lm_head": "disk"}, True),  # offloaded to the disk
])
def test_one_placement_predicate(tiny_llama, monkeypatch, device_map, placed_here):
    """weights.placed and placement.placed_map answer from one predicate (is_placed): a
    one-device map is not placed, a map over several devices or the disk is."""
    model, _ = tiny_llama
    monkeypatch.setattr(model.original_model, "hf_device_map", device_map, raising=False)
    assert placed(model) is placed_here
    assert is_placed(model.original_model) is placed_here
    assert bool(placed_map(model.original_model)) is placed_here
