"""Tests of headprobe.fastscan: prefix reuse is exact and the batched scan equals the loop."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import PromptPairError, TaskError
from headprobe.fastscan import loop_scan, scan_heads, shared_prefix_length
from headprobe.inputs import iter_batches, tokenize_prompts
from headprobe.runtime.layers import record_kv, run_from_layer
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


@pytest.mark.parametrize("metric", ["logit_diff", "normalized_logit_diff"])
def test_fastscan_agrees_with_the_patching_engine(tiny_llama, metric):
    """Two independent implementations of denoising head patching give the same table."""
    from headprobe.patching import PatchingEngine, activation_patch_heads

    model, _ = tiny_llama
    items = [item for item in TINY_ITEMS if len(item.prompt) == len(item.corrupt_prompt)]
    fast = scan_heads(model, items, method="patch", metric=metric, direction="denoise",
                      progress=False)
    engine = PatchingEngine(model, [i.prompt for i in items], [i.corrupt_prompt for i in items],
                            [i.answer for i in items], [i.distractor for i in items])
    reference = activation_patch_heads(engine, metric=metric, direction="denoising",
                                       progress=False)
    column = "effect" if metric == "logit_diff" else "score"
    torch.testing.assert_close(torch.tensor(fast["score"].to_numpy(), dtype=torch.float64),
                               torch.tensor(reference[column].to_numpy(), dtype=torch.float64),
                               atol=1e-4, rtol=1e-4)


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


def test_shared_prefix_length(tiny_llama):
    model, spec = tiny_llama
    lengths = [shared_prefix_length(clean, corrupt)
               for clean, corrupt in _late_batches(model, spec, 3)]
    assert lengths == LATE_PREFIX_LENGTHS
    clean, corrupt = _late_batches(model, spec, 5)[0]
    assert shared_prefix_length(clean, corrupt) == 10
    assert shared_prefix_length(clean, clean) == int(clean.last.min())  # identical: last token
    left = next(iter_batches(tokenize_prompts(model, ["ab", "abc"], spec), 2,
                             padding_side="left"))
    assert shared_prefix_length(left, left) == 0  # prompts do not all start at position 0


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


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma", "tiny_sliding_gemma"])
@pytest.mark.parametrize("metric,direction", [
    ("normalized_logit_diff", "denoise"),
    ("logit_diff", "noise"),
])
def test_scan_with_shared_prefix_equals_loop(fixture, metric, direction, request):
    """Pairs that differ late: the scan skips the shared prefix and still equals the loop."""
    model, _ = request.getfixturevalue(fixture)
    kwargs = {"method": "patch", "metric": metric, "direction": direction, "batch_size": 3,
              "progress": False}
    fast = scan_heads(model, LATE_ITEMS, heads_per_pass=3, **kwargs)
    loop = loop_scan(model, LATE_ITEMS, **kwargs)
    assert fast.meta["shared_prefix_lengths"] == LATE_PREFIX_LENGTHS
    assert loop.meta["shared_prefix_lengths"] == [0, 0]
    assert (fast["score"] - loop["score"]).abs().max() <= 1e-4
    assert fast["score"].abs().max() > 1e-3
    assert (fast["mean_ld"] - loop["mean_ld"]).abs().max() <= 1e-4


def test_prefix_reuse_with_a_layer_subset(tiny_llama):
    """Scanning layers that exclude layer 0 still records the shared prefix from layer 0."""
    model, _ = tiny_llama
    fast = scan_heads(model, LATE_ITEMS, method="patch", metric="logit_diff", layers=[1, 2],
                      progress=False)
    loop = loop_scan(model, LATE_ITEMS, method="patch", metric="logit_diff", layers=[1, 2],
                     progress=False)
    assert fast.meta["shared_prefix_lengths"] and max(fast.meta["shared_prefix_lengths"]) > 0
    assert fast["score"].isna().sum() == 4  # layer 0 not scanned
    assert (fast["score"] - loop["score"]).abs().max() <= 1e-4


def test_direction_spellings_are_shared_with_the_patching_engine(tiny_llama):
    model, _ = tiny_llama
    short = scan_heads(model, LATE_ITEMS, method="patch", direction="noise", progress=False,
                       metric="logit_diff", layers=[2])
    long = scan_heads(model, LATE_ITEMS, method="patch", direction="noising", progress=False,
                      metric="logit_diff", layers=[2])
    assert short["score"].equals(long["score"])
