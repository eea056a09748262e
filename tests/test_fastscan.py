"""Tests of headprobe.fastscan: prefix reuse is exact and the batched scan equals the loop."""

from __future__ import annotations

import pytest
import torch

from headprobe.batching import iter_batches, tokenize_prompts
from headprobe.errors import PromptPairError, TaskError
from headprobe.fastscan import loop_scan, run_from_layer, scan_heads
from headprobe.tasks.base import TaskItem

TINY_ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),  # shorter: exercises padding
    TaskItem("mn op m", "n", "x", "mx op m"),
]


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
    with pytest.raises(NotImplementedError, match="loop_scan"):
        scan_heads(model, TINY_ITEMS, progress=False)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("method,metric,direction", [
    ("patch", "normalized_logit_diff", "denoise"),
    ("patch", "logit_diff", "noise"),
    ("zero", "logit_diff", "denoise"),
    ("mean", "normalized_logit_diff", "denoise"),
])
def test_scan_equals_loop_tiny(fixture, method, metric, direction, request):
    model, spec = request.getfixturevalue(fixture)
    kwargs = {"method": method, "metric": metric, "direction": direction, "batch_size": 3,
              "progress": False}
    fast = scan_heads(model, TINY_ITEMS, heads_per_pass=3, **kwargs)  # uneven head chunks
    loop = loop_scan(model, TINY_ITEMS, **kwargs)
    diff = (fast["score"] - loop["score"]).abs().max()
    assert diff <= 1e-4
    assert fast["score"].abs().max() > 1e-3  # the interventions do something
    assert fast["score"].nunique() > 1
    assert len(fast) == spec.n_total_heads
    assert fast.meta["params"]["method"] == method


def test_scan_patch_metric_definition(tiny_llama):
    """Denoising one head's z is an ordinary hooked forward pass on the corrupt prompt."""
    model, spec = tiny_llama
    items = TINY_ITEMS[:2]
    table = scan_heads(model, items, metric="logit_diff", progress=False)
    clean = tokenize_prompts(model, [it.prompt for it in items], spec)
    corrupt = tokenize_prompts(model, [it.corrupt_prompt for it in items], spec)
    answer = [model.to_tokens(it.answer, prepend_bos=False)[0, 0] for it in items]
    wrong = [model.to_tokens(it.distractor, prepend_bos=False)[0, 0] for it in items]
    layer, head = 1, 2
    effects = []
    for row in range(2):
        cache: dict[str, torch.Tensor] = {}
        with torch.inference_mode(), model.hooks(fwd_hooks=[(
                spec.hooks.at("z", layer),
                lambda z, hook, cache=cache: cache.__setitem__("z", z.clone()))]):
            model(clean[row][None])

        def patch(z, hook, cache=cache):
            z = z.clone()
            z[:, :, head] = cache["z"][:, :, head]
            return z

        with torch.inference_mode():
            base = model(corrupt[row][None])[0, -1]
            with model.hooks(fwd_hooks=[(spec.hooks.at("z", layer), patch)]):
                patched = model(corrupt[row][None])[0, -1]
        effects.append(float((patched[answer[row]] - patched[wrong[row]])
                             - (base[answer[row]] - base[wrong[row]])))
    score = table.data.query("layer == @layer and head == @head")["score"].item()
    assert score == pytest.approx(sum(effects) / 2, abs=1e-5)


def test_scan_layers_subset_and_errors(tiny_llama):
    model, _ = tiny_llama
    table = scan_heads(model, TINY_ITEMS, layers=[2], method="zero", progress=False)
    assert table.data.query("layer < 2")["score"].isna().all()
    assert table.data.query("layer == 2")["score"].notna().all()
    with pytest.raises(TaskError):
        scan_heads(model, [TaskItem("ab", "c")], progress=False)
    with pytest.raises(TaskError):
        scan_heads(model, [TaskItem("ab", "c", "d")], method="patch", progress=False)
    with pytest.raises(PromptPairError):
        scan_heads(model, [TaskItem("ab", "c", "d", "abc")], progress=False)
    with pytest.raises(ValueError):
        scan_heads(model, TINY_ITEMS, method="resample", progress=False)


SMOL_ITEMS = [
    TaskItem("When Mary and John went to the store, John gave a drink to", " Mary", " John",
             "When Mary and John went to the store, Tom gave a drink to"),
    TaskItem("When Alice and Bob went to the park, Bob gave a ball to", " Alice", " Bob",
             "When Alice and Bob went to the park, James gave a ball to"),
]


@pytest.mark.real
def test_run_from_layer_reproduces_forward_smol(smol):
    model, spec = smol
    _check_run_from_layer(model, spec, [SMOL_ITEMS[0].prompt, "Paris is the capital of"],
                          [0, 1, 14, spec.n_layers - 1])


@pytest.mark.real
def test_scan_equals_loop_smol(smol):
    model, _ = smol
    kwargs = {"metric": "normalized_logit_diff", "layers": [1, 28], "progress": False}
    fast = scan_heads(model, SMOL_ITEMS, **kwargs)
    loop = loop_scan(model, SMOL_ITEMS, **kwargs)
    assert (fast["score"] - loop["score"]).abs().max() <= 1e-4
