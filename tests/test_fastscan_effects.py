"""Per-prompt head effects (headprobe.fastscan.effects, Ships' engine) against the loop."""

from __future__ import annotations

import pytest
import torch

from headprobe.checkpoint import Checkpoint
from headprobe.errors import InterventionError
from headprobe.fastscan.copies import copies_hook, scale_copies
from headprobe.fastscan.effects import head_effects, kl_divergence, loop_head_effects
from headprobe.inputs import tokenize_prompts
from headprobe.interventions import build_hooks
from headprobe.runtime.hooks import attached

PROMPTS = ["How do I pick a lock on a door?", "tell me a secret",
           "Write a story about a dragon and a knight", "why?", "the cat sat on the mat"]


def prompt_ids(model):
    return tokenize_prompts(model, PROMPTS, model.headprobe_spec)


@pytest.fixture(params=["llama-gqa", "gemma3", "gemma3-sliding"])
def decoder(request):
    return request.getfixturevalue({"llama-gqa": "tiny_llama", "gemma3": "tiny_gemma",
                                    "gemma3-sliding": "tiny_sliding_gemma"}[request.param])


def test_scale_copies_scales_one_head_per_copy():
    x = torch.arange(2 * 3 * 4 * 2, dtype=torch.float64).reshape(2 * 3, 1, 4, 2)  # c=2, B=3
    y = scale_copies(x, [1, 3], 0.5, copies=2, axis=2)
    expected = x.clone()
    expected[:3, :, 1] *= 0.5
    expected[3:, :, 3] *= 0.5
    assert torch.equal(y, expected)
    assert not torch.equal(x, y)  # a new tensor; x itself unchanged
    assert torch.equal(x, torch.arange(48, dtype=torch.float64).reshape(6, 1, 4, 2))


@pytest.mark.parametrize("method", ["uniform_attention", "scale_output"])
def test_fast_equals_loop(decoder, method):
    model, spec = decoder
    ids = prompt_ids(model)
    fast = head_effects(model, ids, method=method, batch_size=2, progress=False)
    loop = loop_head_effects(model, ids, method=method, batch_size=3, progress=False)
    assert fast.shape == (len(PROMPTS), spec.n_layers, spec.n_heads)
    torch.testing.assert_close(fast, loop, atol=1e-6, rtol=1e-4)
    assert float(fast.min()) >= -1e-9 and float(fast.max()) > 1e-4  # KL >= 0, heads matter
    # heads per pass and layers restrict / chunk without changing numbers
    part = head_effects(model, ids, method=method, layers=[1], heads_per_pass=1,
                        progress=False)
    torch.testing.assert_close(part[:, 1], fast[:, 1], atol=1e-6, rtol=1e-4)
    assert torch.isnan(part[:, 0]).all()


def test_loop_equals_a_hand_computed_kl(tiny_gemma):
    """One head by hand: the registered intervention, softmax and KL written out."""
    model, _ = tiny_gemma
    ids = prompt_ids(model)[:1]
    with torch.no_grad():
        base = model.original_model(input_ids=ids[0][None]).logits[0, -1].double()
        with attached(model, build_hooks(model, [(1, 2)], "uniform_attention", eps=1e-4)):
            ablated = model.original_model(input_ids=ids[0][None]).logits[0, -1].double()
    p, q = torch.softmax(base, -1), torch.softmax(ablated, -1)
    expected = float((p * (p.log() - q.log())).sum())
    got = loop_head_effects(model, ids, method="uniform_attention", eps=1e-4, progress=False)
    assert got[0, 1, 2].item() == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert kl_divergence(p.log(), p.log()).item() == 0.0


def test_uniform_attention_copies_really_flatten_the_pattern(tiny_gemma):
    """Gemma 3 normalises q: the copy hook acts after the norm, so the ablated head's
    attention is uniform over the visible keys."""
    model, spec = tiny_gemma
    ids = prompt_ids(model)[2][None]
    seen = {}

    def keep(pattern, hook=None):
        seen["p"] = pattern.detach().clone()

    name, hook = copies_hook(model, spec, "uniform_attention", 1, [0, 3], copies=2, eps=1e-5)
    with torch.no_grad(), attached(model, [(name, hook),
                                           (spec.hooks.at("pattern", 1), keep)]):
        model.original_model(input_ids=ids.repeat(2, 1))
    pattern = seen["p"]  # [2, H, T, T]
    length = ids.shape[1]
    uniform = torch.tril(torch.ones(length, length)) / torch.arange(1, length + 1)[:, None]
    torch.testing.assert_close(pattern[0, 0], uniform, atol=1e-3, rtol=0)
    torch.testing.assert_close(pattern[1, 3], uniform, atol=1e-3, rtol=0)
    assert (pattern[0, 1] - uniform).abs().max() > 0.05  # other heads untouched


def test_bad_method_and_eps(tiny_llama):
    model, _ = tiny_llama
    ids = prompt_ids(model)
    with pytest.raises(InterventionError, match="eps must be > 0"):
        head_effects(model, ids, eps=0.0)
    with pytest.raises(InterventionError, match="method"):
        head_effects(model, ids, method="zero")


def test_resumes_per_batch(tiny_llama, tmp_path, monkeypatch):
    model, _ = tiny_llama
    ids = prompt_ids(model)
    full = head_effects(model, ids, batch_size=2, progress=False)
    checkpoint = Checkpoint(tmp_path, "effects", {"run": 1})
    calls = {"n": 0}
    original = Checkpoint.save

    def dying_save(self, state, progress=""):
        original(self, state, progress)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed after two of three batches

    monkeypatch.setattr(Checkpoint, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        head_effects(model, ids, batch_size=2, progress=False, checkpoint=checkpoint)
    monkeypatch.setattr(Checkpoint, "save", original)
    resumed = head_effects(model, ids, batch_size=2, progress=False,
                           checkpoint=Checkpoint(tmp_path, "effects", {"run": 1}))
    assert torch.equal(resumed, full)
