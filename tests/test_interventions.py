"""Interventions against hand computations on tiny models (and one check on SmolLM2)."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import HeadIndexError, InterventionError
from headprobe.interventions import (
    METHODS,
    compute_head_means,
    head_output_matrix,
    intervene,
    normalize_heads,
    query_hook_point,
    uniform_attention,
    zero_ablation,
)

TEXT = ["the cat sat on a mat"]


def run_capture(model, tokens, kinds=("pattern", "z"), **kwargs):
    """Logits plus every layer's activations of ``kinds`` (cloned), under no_grad."""
    spec = model.headprobe_spec
    cache: dict[str, torch.Tensor] = {}

    def keeper(name):
        def keep(act, hook):  # keyed by the name asked for (hook_z is an alias of o.hook_in)
            cache[name] = act.detach().clone()
        return keep

    names = [spec.hooks.at(kind, layer) for kind in kinds for layer in range(spec.n_layers)]
    hooks = [(name, keeper(name)) for name in names]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens, **kwargs)
    return logits, cache


def uniform_reference(width: int) -> torch.Tensor:
    return torch.tril(torch.ones(width, width)) / torch.arange(1, width + 1)[:, None]


def n_hooks(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


@pytest.fixture(params=["llama-gqa", "gpt2", "gemma3"])
def any_tiny(request, tiny_llama, tiny_gpt2, tiny_gemma):
    return {"llama-gqa": tiny_llama, "gpt2": tiny_gpt2, "gemma3": tiny_gemma}[request.param]


# ------------------------------------------------------------------------------ uniform attention


def test_uniform_attention_is_exactly_uniform(any_tiny):
    model, spec = any_tiny
    tokens = model.to_tokens(TEXT)
    _, base = run_capture(model, tokens)
    targets = [(0, 0), (1, 2), (2, 3)]
    with intervene(model, targets, "uniform_attention"):
        _, cache = run_capture(model, tokens)
    width = tokens.shape[1]
    reference = uniform_reference(width)
    for layer in range(spec.n_layers):
        pattern = cache[spec.hooks.at("pattern", layer)][0]
        for head in range(spec.n_heads):
            if (layer, head) in targets:
                torch.testing.assert_close(pattern[head], reference, atol=1e-5, rtol=0)
            elif layer == 0:  # layers after a change see a changed residual; layer 0 must not
                torch.testing.assert_close(pattern[head],
                                           base[spec.hooks.at("pattern", 0)][0, head])


def test_uniform_attention_respects_padding(tiny_llama):
    from headprobe.inputs import iter_batches, tokenize_prompts

    model, spec = tiny_llama
    lists = tokenize_prompts(model, ["abcdefgh", "abc"], spec)
    for side in ("right", "left"):
        batch = next(iter_batches(lists, 2, padding_side=side))
        with intervene(model, [(1, 1)], "uniform_attention"):
            _, cache = run_capture(model, batch.tokens, kinds=("pattern",),
                                   **batch.forward_kwargs())
        pattern = cache[spec.hooks.at("pattern", 1)][:, 1]
        for row in range(2):
            start, length = int(batch.start[row]), int(batch.lengths[row])
            block = pattern[row, start:start + length, start:start + length]
            torch.testing.assert_close(block, uniform_reference(length), atol=1e-5, rtol=0)


def test_pattern_methods_find_the_sink_under_padding(tiny_llama):
    """With left padding the sink is the row's first real token; results match unpadded runs."""
    from headprobe.inputs import iter_batches, tokenize_prompts

    model, spec = tiny_llama
    lists = tokenize_prompts(model, ["abcdefgh", "abc"], spec)
    batch = next(iter_batches(lists, 2, padding_side="left"))
    name = spec.hooks.at("pattern", 1)
    with intervene(model, [(1, 2)], "redistribute_sink", beta=0.2):
        _, padded = run_capture(model, batch.tokens, kinds=("pattern",),
                                **batch.forward_kwargs())
        _, alone = run_capture(model, lists[1][None], kinds=("pattern",))
    start = int(batch.start[1])
    torch.testing.assert_close(padded[name][1, 2, start:, start:], alone[name][0, 2],
                               atol=1e-5, rtol=1e-4)


def test_gemma_query_scaling_must_follow_q_norm(tiny_gemma):
    """Gemma 3's q norm undoes a scale on hook_q (the q_proj output); hence hook_rot_q."""
    model, spec = tiny_gemma
    name, _ = query_hook_point(model, spec, 1)
    assert name == "blocks.1.attn.hook_rot_q"
    tokens = model.to_tokens(TEXT)
    _, base = run_capture(model, tokens, kinds=("pattern",))

    def scale_raw_q(q, hook):
        return q * 0.1

    with model.hooks(fwd_hooks=[(spec.hooks.at("q", 1), scale_raw_q)]):
        _, cache = run_capture(model, tokens, kinds=("pattern",))
    name = spec.hooks.at("pattern", 1)
    torch.testing.assert_close(cache[name], base[name], atol=1e-4, rtol=1e-3)  # no effect


def test_query_hook_points(tiny_llama, tiny_gpt2):
    assert query_hook_point(tiny_llama[0], tiny_llama[1], 0) == ("blocks.0.attn.hook_rot_q", 2)
    assert query_hook_point(tiny_gpt2[0], tiny_gpt2[1], 0) == ("blocks.0.attn.hook_q", 2)


# ------------------------------------------------------------------------------ z methods


def test_zero_equals_removing_o_proj_columns(tiny_llama):
    model, spec = tiny_llama
    tokens = model.to_tokens(TEXT)
    layer, head = 1, 3
    with intervene(model, [(layer, head)], "zero"):
        logits, cache = run_capture(model, tokens, kinds=("z",))
    assert torch.count_nonzero(cache[spec.hooks.at("z", layer)][:, :, head]) == 0
    o_proj = model.original_model.model.layers[layer].self_attn.o_proj
    saved = o_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            o_proj.weight[:, head * spec.d_head:(head + 1) * spec.d_head] = 0.0
        expected, _ = run_capture(model, tokens, kinds=())
    finally:
        with torch.no_grad():
            o_proj.weight.copy_(saved)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    base, _ = run_capture(model, tokens, kinds=())
    assert (base - logits).abs().max() > 1e-4


@pytest.mark.parametrize("method,key", [("scale_output", "factor"), ("scale_value", "alpha")])
def test_scaling_scales_only_the_target_z(tiny_llama, method, key):
    model, spec = tiny_llama
    tokens = model.to_tokens(TEXT)
    layer = 0  # layer 0: z of the other heads cannot change
    _, base = run_capture(model, tokens, kinds=("z",))
    with intervene(model, [(layer, 1)], method, **{key: 2.5}):
        _, cache = run_capture(model, tokens, kinds=("z",))
    z0, z1 = base[spec.hooks.at("z", layer)][0], cache[spec.hooks.at("z", layer)][0]
    torch.testing.assert_close(z1[:, 1], 2.5 * z0[:, 1])
    # head 0 shares kv head 0 with head 1 under GQA and must stay unchanged
    for other in (0, 2, 3):
        torch.testing.assert_close(z1[:, other], z0[:, other])


def test_scale_value_equals_scaling_v_without_gqa(tiny_gpt2):
    """Without GQA, scaling z_h by alpha is the same forward pass as scaling v_h by alpha."""
    model, spec = tiny_gpt2
    tokens = model.to_tokens(TEXT)
    with intervene(model, [(1, 2)], "scale_value", alpha=3.0):
        ours, _ = run_capture(model, tokens, kinds=())

    def scale_v(v, hook):
        out = v.clone()
        out[:, :, 2] = 3.0 * v[:, :, 2]
        return out

    with model.hooks(fwd_hooks=[(spec.hooks.at("v", 1), scale_v)]):
        expected, _ = run_capture(model, tokens, kinds=())
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_mean_ablation_values(tiny_llama):
    model, spec = tiny_llama
    reference = ["abcde", "vwxyz", "hello there"]
    means = compute_head_means(model, [(2, 1)], reference)
    zs = []
    for text in reference:
        _, cache = run_capture(model, model.to_tokens([text]), kinds=("z",))
        zs.append(cache[spec.hooks.at("z", 2)][0, :, 1])  # [T, d]
    # per-position mean: positions 0..5 have 3 prompts, 6..11 only "hello there"
    expected_pos = torch.stack([torch.stack([z[t] for z in zs if t < len(z)]).mean(0)
                                for t in range(12)])
    expected_pooled = torch.cat(zs).mean(0)
    entry = means[(2, 1)]
    torch.testing.assert_close(entry.per_position, expected_pos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entry.pooled, expected_pooled, atol=1e-5, rtol=1e-5)
    tokens = model.to_tokens(["a much longer prompt here"])  # longer than the reference
    for per_position in (True, False):
        with intervene(model, [(2, 1)], "mean", reference=reference, per_position=per_position):
            _, cache = run_capture(model, tokens, kinds=("z",))
        z = cache[spec.hooks.at("z", 2)][0, :, 1]
        if per_position:
            torch.testing.assert_close(z[:12], expected_pos, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(z[12:], expected_pooled.expand(len(z) - 12, -1),
                                       atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(z, expected_pooled.expand_as(z), atol=1e-5, rtol=1e-5)


def test_resample_takes_source_z_at_same_positions(tiny_llama):
    model, spec = tiny_llama
    source = "zyxwvutsrq"
    _, src_cache = run_capture(model, model.to_tokens([source]), kinds=("z",))
    tokens = model.to_tokens(["abcdef"])
    _, base = run_capture(model, tokens, kinds=("z",))
    with intervene(model, [(0, 2), (1, 0)], "resample", sources=[source]):
        _, cache = run_capture(model, tokens, kinds=("z",))
    width = tokens.shape[1]
    for layer, head in [(0, 2), (1, 0)]:
        torch.testing.assert_close(cache[spec.hooks.at("z", layer)][0, :, head],
                                   src_cache[spec.hooks.at("z", layer)][0, :width, head])
    torch.testing.assert_close(cache[spec.hooks.at("z", 0)][0, :, 1],
                               base[spec.hooks.at("z", 0)][0, :, 1])
    with (pytest.raises(InterventionError, match="no source prompt"),  # source too short
          intervene(model, [(0, 2)], "resample", sources=["ab"])):
        run_capture(model, tokens, kinds=())


def test_add_to_output_in_z_and_residual_space(tiny_gpt2):
    model, spec = tiny_gpt2
    tokens = model.to_tokens(TEXT)
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(spec.d_head, generator=generator)
    _, base = run_capture(model, tokens, kinds=("z", "attn_out"))
    with intervene(model, [(0, 3)], "add_to_output", vector=u, coefficient=2.0):
        _, cache = run_capture(model, tokens, kinds=("z", "attn_out"))
    z0, z1 = base[spec.hooks.at("z", 0)][0], cache[spec.hooks.at("z", 0)][0]
    torch.testing.assert_close(z1[:, 3], z0[:, 3] + 2.0 * u)
    # residual space: a vector the head can write is reproduced exactly in attn_out
    w_o = head_output_matrix(model, 0, 3)  # [d_head, d_model]
    r = u @ w_o
    with intervene(model, [(0, 3)], "add_to_output", vector=r, space="residual",
                   positions=[2]):
        _, cache = run_capture(model, tokens, kinds=("attn_out",))
    delta = cache[spec.hooks.at("attn_out", 0)][0] - base[spec.hooks.at("attn_out", 0)][0]
    torch.testing.assert_close(delta[2], r, atol=1e-4, rtol=1e-4)
    assert delta[[0, 1, 3]].abs().max() < 1e-5
    with pytest.raises(InterventionError, match="shape"):
        intervene(model, [(0, 3)], "add_to_output", vector=torch.ones(5)).__enter__()


# ------------------------------------------------------------------------------ pattern methods


def test_set_pattern_masks_and_renormalises(any_tiny):
    model, spec = any_tiny
    tokens = model.to_tokens(TEXT)
    width = tokens.shape[1]
    given = torch.ones(width + 3, width + 3)  # larger than needed, future keys included
    given[:, 0] = 3.0
    with intervene(model, [(2, 0)], "set_pattern", pattern=given):
        _, cache = run_capture(model, tokens, kinds=("pattern",))
    pattern = cache[spec.hooks.at("pattern", 2)][0, 0]
    expected = torch.tril(torch.ones(width, width))
    expected[:, 0] = 3.0
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(pattern, expected)
    # the z of the head is then A @ V by hand
    _, cache = run_capture(model, tokens, kinds=("v", "z"))
    with intervene(model, [(2, 0)], "set_pattern", pattern=given):
        _, patched = run_capture(model, tokens, kinds=("v", "z"))
    v = patched[spec.hooks.at("v", 2)][0, :, spec.kv_head(0)]  # [T, d]
    torch.testing.assert_close(patched[spec.hooks.at("z", 2)][0, :, 0], expected @ v)
    with pytest.raises(InterventionError, match="non-negative"):
        intervene(model, [(2, 0)], "set_pattern", pattern=-given).__enter__()
    zero_rows = torch.zeros(width, width)
    zero_rows[:, -1] = 1.0  # only the last (future) key: no visible mass for early rows
    with (pytest.raises(InterventionError, match="no weight"),
          intervene(model, [(2, 0)], "set_pattern", pattern=zero_rows)):
        run_capture(model, tokens, kinds=())


def test_redistribute_sink(any_tiny):
    model, spec = any_tiny
    tokens = model.to_tokens(TEXT)
    _, base = run_capture(model, tokens, kinds=("pattern",))
    beta = 0.4
    with intervene(model, [(0, 1)], "redistribute_sink", beta=beta):
        _, cache = run_capture(model, tokens, kinds=("pattern",))
    old = base[spec.hooks.at("pattern", 0)][0, 1]
    new = cache[spec.hooks.at("pattern", 0)][0, 1]
    torch.testing.assert_close(new[:, 0][1:], beta * old[:, 0][1:])
    torch.testing.assert_close(new[0], old[0])  # position 0 sees only the sink
    torch.testing.assert_close(new.sum(-1), torch.ones(new.shape[0]))
    for t in range(1, new.shape[0]):  # the rest keeps its proportions
        ratio = new[t, 1:t + 1] / old[t, 1:t + 1]
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))
        expected_gain = 1 + (1 - beta) * old[t, 0] / old[t, 1:t + 1].sum()
        torch.testing.assert_close(ratio[0], expected_gain)
    assert new.triu(1).abs().max() == 0
    # other heads in the layer untouched
    torch.testing.assert_close(cache[spec.hooks.at("pattern", 0)][0, 0],
                               base[spec.hooks.at("pattern", 0)][0, 0])
    with pytest.raises(InterventionError, match="beta"):
        intervene(model, [(0, 1)], "redistribute_sink", beta=1.5).__enter__()


# ------------------------------------------------------------------------------ hygiene


def test_hooks_removed_after_exception(tiny_llama):
    model, _ = tiny_llama
    before = n_hooks(model)
    tokens = model.to_tokens(TEXT)
    base, _ = run_capture(model, tokens, kinds=())
    with (pytest.raises(RuntimeError, match="boom"),
          intervene(model, [(0, 0), (2, 1)], "uniform_attention")):
        assert n_hooks(model) > before
        raise RuntimeError("boom")
    assert n_hooks(model) == before
    for method, options in [("zero", {}), ("redistribute_sink", {})]:
        with intervene(model, [(1, 1)], method, **options):
            pass
        assert n_hooks(model) == before
    after, _ = run_capture(model, tokens, kinds=())
    torch.testing.assert_close(after, base)


def test_head_validation(tiny_llama):
    model, spec = tiny_llama
    with pytest.raises(HeadIndexError):
        zero_ablation(model, [(0, spec.n_heads)])
    with pytest.raises(HeadIndexError):
        uniform_attention(model, [(spec.n_layers, 0)])
    with pytest.raises(InterventionError, match="empty"):
        zero_ablation(model, [])
    with pytest.raises(InterventionError, match="pair"):
        zero_ablation(model, (1, 2))
    with pytest.raises(InterventionError, match="unknown intervention method"):
        intervene(model, [(0, 0)], "nope").__enter__()
    with pytest.raises(InterventionError, match="needs"):
        intervene(model, [(0, 0)], "mean").__enter__()
    import numpy as np

    assert normalize_heads(spec, [(np.int64(1), 2), (1, 2), (0, 3)]) == [(0, 3), (1, 2)]
    assert {"zero", "mean", "resample", "uniform_attention", "scale_output", "scale_value",
            "add_to_output", "set_pattern", "redistribute_sink"} <= set(METHODS)


@pytest.mark.real
def test_uniform_attention_on_smollm2(smol):
    model, spec = smol
    tokens = model.to_tokens(["The quick brown fox jumps over the lazy dog."])
    targets = [(3, 0), (3, 4), (17, 3)]
    kinds = ("pattern",)
    with intervene(model, targets, "uniform_attention"):
        hooks_cache: dict[str, torch.Tensor] = {}

        def keep(act, hook):
            hooks_cache[hook.name] = act.detach()[0].clone()

        with torch.no_grad(), model.hooks(fwd_hooks=[(spec.hooks.at(k, layer), keep)
                                                     for k in kinds for layer in (3, 17)]):
            model(tokens)
    reference = uniform_reference(tokens.shape[1])
    for layer, head in targets:
        torch.testing.assert_close(hooks_cache[spec.hooks.at("pattern", layer)][head],
                                   reference, atol=1e-4, rtol=0)
    untouched = hooks_cache[spec.hooks.at("pattern", 3)][1]
    assert (untouched - reference).abs().max() > 1e-2


# ------------------------------------------------------------------------------ decode and padding

DECODE_PROMPTS = ["the cat sat on", "a", "hello there, world"]
DECODE_NEW = 6
LONG_SOURCES = ["zyxwvutsrqponmlkjihgfedcba0123456789", "the quick brown fox jumps over it"]


def method_options(method: str, spec) -> dict:
    """Options that make each method act (and, where it takes positions, at a generated one)."""
    generator = torch.Generator().manual_seed(7)
    width = 64  # covers every prompt + continuation
    return {
        "zero": {},
        "mean": {"reference": ["abcde", "vwxyz", "hello there"]},
        "resample": {"sources": LONG_SOURCES, "seed": 1},
        "uniform_attention": {},
        "scale_output": {"factor": 0.1},
        "scale_value": {"alpha": 3.0},
        "add_to_output": {"vector": 4.0 * torch.randn(spec.d_head, generator=generator),
                          "positions": [1, 3, 16, 18]},
        "set_pattern": {"pattern": torch.rand(width, width, generator=generator) + 0.01},
        "redistribute_sink": {"beta": 0.1},
        "streaming_attention": {"sink": 1, "window": 3},
    }[method]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_same_continuation_with_and_without_cache(any_tiny, method):
    """Absolute positions: cached == recomputed, left == right padding, for every method."""
    from headprobe.runtime.decode import generate

    model, spec = any_tiny
    # streaming_attention takes (layer, kv head): every tiny model has kv head 0
    heads = [(0, 0), (1, 0)] if method == "streaming_attention" else [(0, 1), (1, 2)]
    options = method_options(method, spec)
    before = n_hooks(model)
    results = {}
    for side in ("left", "right"):
        for use_cache in (False, True):
            with intervene(model, heads, method, **options):
                results[(side, use_cache)] = generate(
                    model, DECODE_PROMPTS, max_new_tokens=DECODE_NEW, padding_side=side,
                    use_cache=use_cache, keep_logits=True)
    assert n_hooks(model) == before
    reference = results[("left", False)]
    for key, got in results.items():
        assert torch.equal(got.tokens, reference.tokens), (key, got.texts, reference.texts)
        torch.testing.assert_close(got.logits, reference.logits, atol=1e-4, rtol=0,
                                   msg=lambda text, key=key: f"{key}: {text}")
    plain = generate(model, DECODE_PROMPTS, max_new_tokens=DECODE_NEW, keep_logits=True)
    assert (plain.logits - reference.logits).abs().max() > 1e-3  # the method acts in decode


def test_add_to_output_positions_are_absolute_during_decode(tiny_llama):
    """A vector added at an absolute position reached only while generating changes the
    logits from that step on, in each row at its own step, whatever the padding."""
    from headprobe.runtime.decode import generate

    model, spec = tiny_llama
    target = 15  # "a" (2 tokens) reaches it at step 14, "the cat sat on" (15) at step 1
    u = 5.0 * torch.randn(spec.d_head, generator=torch.Generator().manual_seed(3))
    prompts = ["the cat sat on", "a"]
    plain = generate(model, prompts, max_new_tokens=16, keep_logits=True)
    for side in ("left", "right"):
        with intervene(model, [(0, 0), (0, 3)], "add_to_output", vector=u, positions=[target]):
            steered = generate(model, prompts, max_new_tokens=16, padding_side=side,
                               keep_logits=True)
        for row, length in enumerate([15, 2]):
            first = target - length + 1  # the step whose forward runs position `target`
            diff = (steered.logits[row] - plain.logits[row]).abs().amax(-1)  # [steps]
            assert diff[:first].max() < 1e-5, (side, row)
            assert diff[first] > 1e-3, (side, row)


def test_mean_and_resample_use_absolute_positions_under_left_padding(tiny_llama):
    """A left-padded batch gets the same z as each prompt run alone (column != position)."""
    from headprobe.inputs import iter_batches, tokenize_prompts

    model, spec = tiny_llama
    lists = tokenize_prompts(model, ["abcdefgh", "abc"], spec)
    batch = next(iter_batches(lists, 2, padding_side="left"))
    name = spec.hooks.at("z", 1)
    from headprobe.runtime.positions import forward_positions

    for method, options in [("mean", {"reference": ["abcde", "vwxyz", "hello there"]}),
                            ("resample", {"sources": LONG_SOURCES[:1]}),
                            ("add_to_output", {"vector": torch.ones(spec.d_head),
                                               "positions": [1]})]:
        with intervene(model, [(1, 0)], method, **options):
            with forward_positions(batch.position_ids):
                _, padded = run_capture(model, batch.tokens, kinds=("z",),
                                        **batch.forward_kwargs())
            _, alone = run_capture(model, lists[1][None], kinds=("z",))
        start = int(batch.start[1])
        torch.testing.assert_close(padded[name][1, start:], alone[name][0], atol=1e-5,
                                   rtol=1e-4)


# ------------------------------------------------------------------------- the one z replacement


def test_write_heads_per_copy_and_shared():
    """``copies=n``: copy i gets values[i] on heads[i] only; ``copies=1``: every row gets
    every listed head; the input is never modified."""
    from headprobe.interventions.heads import copies_z_hook, write_heads

    generator = torch.Generator().manual_seed(0)
    batch, seq, n_heads, d_head = 2, 3, 4, 5
    z = torch.randn(3 * batch, seq, n_heads, d_head, generator=generator)
    before = z.clone()
    values = torch.randn(3, batch, seq, d_head, generator=generator)
    heads = [2, 0, 2]  # one head may repeat across copies
    out = write_heads(z, heads, values, copies=3)
    torch.testing.assert_close(z, before, rtol=0, atol=0)
    expected = before.clone().reshape(3, batch, seq, n_heads, d_head)
    for copy, head in enumerate(heads):
        expected[copy, :, :, head] = values[copy]
    torch.testing.assert_close(out, expected.reshape_as(z), rtol=0, atol=0)
    torch.testing.assert_close(copies_z_hook(heads, values, 3)(z), out, rtol=0, atol=0)
    shared = write_heads(z[:batch], [1, 3], values[:2])
    expected = before[:batch].clone()
    expected[:, :, 1], expected[:, :, 3] = values[0], values[1]
    torch.testing.assert_close(shared, expected, rtol=0, atol=0)
    zeros = write_heads(z[:batch], [0], torch.zeros(1, 1, 1, 1))  # broadcast values
    assert not zeros[:, :, 0].any() and torch.equal(zeros[:, :, 1:], before[:batch, :, 1:])
    with pytest.raises(ValueError, match="copies"):
        write_heads(z, [0, 1], values[:2], copies=3)


def test_mean_and_resample_build_under_inference_mode(tiny_llama):
    """Their caches stream under no_grad also when the caller is in inference_mode."""
    model, _ = tiny_llama
    tokens = model.to_tokens(["abcdefg"])
    for method, options in [("mean", {"reference": ["abc", "defgh"]}),
                            ("resample", {"sources": ["zyxwvutsrqp"]})]:
        with torch.inference_mode(), intervene(model, [(0, 1)], method, **options):
            inside = model(tokens)
        with intervene(model, [(0, 1)], method, **options), torch.no_grad():
            outside = model(tokens)
        torch.testing.assert_close(inside, outside, rtol=0, atol=0)
        assert not torch.equal(inside, model(tokens).detach())
