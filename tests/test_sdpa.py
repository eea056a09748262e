"""The fused-attention switch (headprobe.runtime.sdpa) and its use by the chunked prefill."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from headprobe.runtime import decode
from headprobe.runtime.decode import generate
from headprobe.runtime.hooks import attached
from headprobe.runtime.layers import embed, run_from_layer
from headprobe.runtime.sdpa import attention_hooks_idle, sdpa_attention, sdpa_supported
from headprobe.weights import hf_module

PROMPTS = ["the cat sat on the mat and then it ran to the door of the house", "a b",
           "hello there, world: one two three four five six"]


def attention_types(model, spec) -> list[str]:
    facts = spec.facts
    return [type(getattr(hf_module(model, f"{facts.layers_path}.{layer}"),
                         facts.attention_module)).__name__ for layer in range(spec.n_layers)]


def noop(tensor, hook=None):
    return None


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3", "gemma3-sliding"])
def test_sdpa_layers_equal_the_bridge_attention(kind, request):
    model, spec = request.getfixturevalue({"llama-gqa": "tiny_llama", "gemma3": "tiny_gemma",
                                           "gemma3-sliding": "tiny_sliding_gemma"}[kind])
    assert sdpa_supported(spec)
    ids = torch.tensor([[1, 5, 9, 7, 3, 8, 6, 4, 11, 12, 5, 9]])
    before = attention_types(model, spec)
    with torch.no_grad():
        eager = run_from_layer(model, embed(model, ids), 0)
        with sdpa_attention(model, spec):
            assert attention_types(model, spec) != before  # really swapped
            fused = run_from_layer(model, embed(model, ids), 0)
    assert attention_types(model, spec) == before
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=0)


def test_hooks_inside_the_attention_keep_the_eager_route(tiny_llama):
    model, spec = tiny_llama
    assert attention_hooks_idle(model, spec)
    # projection hooks still fire under sdpa: they do not block it
    with attached(model, [(spec.hooks.at("z", 0), noop), (spec.hooks.at("q", 1), noop)]):
        assert attention_hooks_idle(model, spec)
    for kind in ("pattern", "attn_scores", "rot_q", "rot_k"):
        with attached(model, [(spec.hooks.at(kind, 1), noop)]):
            assert not attention_hooks_idle(model, spec), kind
            with pytest.raises(ValueError, match="sdpa would skip"), \
                    sdpa_attention(model, spec):
                pass
    assert attention_hooks_idle(model, spec)


def test_gpt2_is_not_supported(tiny_gpt2):
    model, spec = tiny_gpt2
    assert not sdpa_supported(spec)
    with pytest.raises(ValueError, match="layer-runner"), sdpa_attention(model, spec):
        pass


def test_chunked_prefill_uses_sdpa_only_when_idle(tiny_llama, monkeypatch):
    model, spec = tiny_llama
    used: list[bool] = []
    original = decode._BatchRun.prefill_prefix

    def spy(self):
        original(self)
        used.append(self.fused_prefill)

    monkeypatch.setattr(decode._BatchRun, "prefill_prefix", spy)
    ref = generate(model, PROMPTS, max_new_tokens=6, keep_logits=True)
    fused = generate(model, PROMPTS, max_new_tokens=6, keep_logits=True, prefill_chunk=4)
    seen: list[int] = []

    def count(pattern, hook=None):
        seen.append(pattern.shape[2])  # query columns of each forward

    pattern_hook = [(spec.hooks.at("pattern", 0), count)]
    eager = generate(model, PROMPTS, max_new_tokens=6, keep_logits=True, prefill_chunk=4,
                     hooks=pattern_hook)
    assert used == [False, True, False]  # no chunks; fused chunks; hooked chunks
    assert seen[:2] == [4, 4]  # the eager route ran the hooked chunks through the bridge
    for got in (fused, eager):
        assert torch.equal(got.tokens, ref.tokens)
        torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)


def test_modules_are_restored_on_error(tiny_gemma):
    model, spec = tiny_gemma
    before = attention_types(model, spec)

    def boom(tensor, hook=None):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # hook_z fires inside the sdpa prefill
        generate(model, PROMPTS, max_new_tokens=2, prefill_chunk=3,
                 hooks=[(spec.hooks.at("z", 0), boom)])
    assert attention_types(model, spec) == before
    assert attention_hooks_idle(model, spec)


def _fused_spy(monkeypatch) -> list[list[int]]:
    """Record the layers each :func:`fused_attention` block fused (patched where the fast
    scans and the decode import it)."""
    from headprobe.fastscan import effects, patching
    from headprobe.runtime import decode, sdpa

    seen: list[list[int]] = []
    original = sdpa.fused_attention

    @contextmanager
    def spy(*args, **kwargs):
        with original(*args, **kwargs) as layers:
            seen.append(list(layers))
            yield layers

    for module in (patching, effects, decode):
        monkeypatch.setattr(module, "fused_attention", spy)
    return seen


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("method", ["patch", "zero", "scale_output", "uniform_attention"])
def test_fast_scan_fuses_the_layers_the_intervention_allows(kind, method, monkeypatch,
                                                            request):
    from headprobe.fastscan import scan_heads
    from headprobe.tasks.base import TaskItem

    model, spec = request.getfixturevalue(kind)
    items = [TaskItem("ab cd ab", "c", "x", "ab xd ab"), TaskItem("hello", "l", "o", "jello")]
    options = {"method": method, "metric": "logit_diff", "batch_size": 2, "progress": False}
    eager = scan_heads(model, items, fused=False, **options)
    seen = _fused_spy(monkeypatch)
    fused = scan_heads(model, items, **options)
    assert (fused["score"] - eager["score"]).abs().max() <= 1e-5
    assert fused["score"].abs().max() > 1e-3
    everything = list(range(spec.n_layers))
    if method == "uniform_attention":  # the query edit keeps the ablated layer eager
        steps = [layers for layers in seen if layers != everything]
        assert len(steps) == spec.n_layers
        assert all(len(layers) == spec.n_layers - 1 for layers in steps)
    else:
        assert seen and all(layers == everything for layers in seen)
    assert attention_hooks_idle(model, spec)


def test_head_effects_fuse_the_unablated_layers(tiny_llama, monkeypatch):
    from headprobe.fastscan import head_effects

    model, spec = tiny_llama
    prompts = [model.to_tokens(text)[0] for text in ("ab cd ab", "hello there")]
    eager = head_effects(model, prompts, fused=False, progress=False)
    seen = _fused_spy(monkeypatch)
    fused = head_effects(model, prompts, progress=False)
    torch.testing.assert_close(fused, eager, atol=1e-6, rtol=1e-4)
    assert seen[0] == list(range(spec.n_layers))  # the base run
    assert sorted(len(layers) for layers in seen[1:]) == [spec.n_layers - 1] * spec.n_layers


def test_decode_steps_fuse_unobserved_layers(tiny_llama, monkeypatch):
    model, spec = tiny_llama
    reference = generate(model, PROMPTS, max_new_tokens=5, keep_logits=True, use_cache=False)
    seen = _fused_spy(monkeypatch)
    cached = generate(model, PROMPTS, max_new_tokens=5, keep_logits=True)
    assert seen and seen[-1] == list(range(spec.n_layers))
    assert torch.equal(cached.tokens, reference.tokens)
    torch.testing.assert_close(cached.logits, reference.logits, atol=1e-4, rtol=0)
    seen.clear()

    generate(model, PROMPTS, max_new_tokens=2, hooks=[(spec.hooks.at("pattern", 1), noop)])
    assert seen[-1] == [layer for layer in range(spec.n_layers) if layer != 1]
    seen.clear()
    generate(model, PROMPTS, max_new_tokens=2, use_cache=False)  # the reference stays eager
    assert seen[-1] == []
