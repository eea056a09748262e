"""The ``niah`` task: needle placement, lengths in tokens, spans, bad input, shipped data."""

from __future__ import annotations

import re

import pytest

from headprobe.errors import HeadprobeError, TaskError
from headprobe.heads.retrieval.niah import (
    INSTRUCTION,
    MAX_NEW_TOKENS,
    insert_needle,
    load_haystack,
    load_needles,
    make_task,
    parse_needles,
    rouge1_recall,
    sentence_boundaries,
)
from headprobe.inputs import Chat, Text, encode_prompts
from headprobe.tasks import get_task, list_tasks

# Short needles so that a context fits the tiny models' 256-character window.
SHORT_NEEDLES = [
    {"id": "key", "needle": "The key is Zed.", "question": "What is the key?", "answer": "Zed"},
    {"id": "cap", "needle": "Bo has a red cap.", "question": "What does Bo have?",
     "answer": "red cap"},
]
META_KEYS = {"needle_id", "context_length", "depth", "question", "answer", "needle"}


def _haystack_words() -> str:
    return " ".join(load_haystack().split())


def _chars(model, ids, span) -> str:
    """The characters of a span's tokens under the char tokenizer (one character a token)."""
    return "".join(model.tokenizer.convert_ids_to_tokens(ids[span.start:span.stop].tolist()))


def _check_placement(context: str, needle: str, depth: float) -> None:
    """The needle sits at the last sentence boundary at or before ``depth`` of the haystack."""
    start = context.index(needle)
    assert start == 0 or context[start - 2:start] == ". "
    haystack = context[:start].rstrip()
    rest = context[start + len(needle):].lstrip()
    haystack = f"{haystack} {rest}".strip() if haystack else rest
    target = round(depth * len(haystack))
    before = len(context[:start].rstrip())
    boundaries = sentence_boundaries(haystack)
    assert before == max(b for b in boundaries if b <= target)
    later = [b for b in boundaries if b > target]
    assert not later or before <= target < later[0]  # within one sentence of the depth


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.33, 0.5, 0.77, 1.0])
def test_insert_needle_at_the_sentence_boundary_before_the_depth(depth):
    haystack = _haystack_words()
    needle = "The key of the blue door is kept under a stone."
    context, start = insert_needle(haystack, needle, depth)
    assert context[start:start + len(needle)] == needle
    assert " ".join(context.replace(needle, "").split()) == haystack
    _check_placement(context, needle, depth)
    if depth == 0.0:
        assert start == 0
    if depth == 1.0:
        assert context.endswith(needle)


def test_insert_needle_without_periods_goes_first():
    context, start = insert_needle("no sentence ends here", "A fact.", 0.6)
    assert (context, start) == ("A fact. no sentence ends here", 0)


def test_word_lengths_and_depths_without_a_model():
    task = make_task(context_lengths=(300, 900), depths=(0.0, 0.4, 1.0), seed=2)
    assert len(task) == 6 and task.judge == "contains"
    assert task.max_new_tokens == MAX_NEW_TOKENS and task.meta["unit"] == "words"
    for item in task.items:
        assert isinstance(item.prompt, Text) and item.answer == " " + item.meta["answer"]
        assert set(item.meta) >= META_KEYS
        text = item.prompt.text
        assert len(text.split()) == item.meta["context_length"] == item.meta["length"]
        assert text.endswith(f"\nQuestion: {item.meta['question']}\nAnswer:")
        context = text.split(f"\n\n{INSTRUCTION}")[0]
        _check_placement(context, item.meta["needle"], item.meta["depth"])
        begin, end = item.prompt.spans["needle"]
        assert text[begin:end] == item.meta["needle"]
        begin, end = item.prompt.spans["answer"]
        assert text[begin:end] == item.meta["answer"]


def test_tiny_llama_chat_items_fit_their_token_lengths(tiny_llama):
    model, spec = tiny_llama
    task = make_task(model=model, context_lengths=(120, 200, 256), depths=(0.0, 0.5, 1.0),
                     needles=SHORT_NEEDLES, n=9)
    assert task.meta["unit"] == "tokens" and task.meta["chat"]
    encoded = encode_prompts(model, task.prompts, spec)
    for item, enc in zip(task.items, encoded, strict=True):
        assert isinstance(item.prompt, Chat) and item.prompt.add_generation_prompt
        length = item.meta["context_length"]
        # the haystack is cut at a word boundary: at most one word (and its space) short
        assert length - 12 <= len(enc) <= length
        assert len(enc) == item.meta["length"]
        assert _chars(model, enc.ids, enc.spans["needle"]) == item.meta["needle"]
        assert _chars(model, enc.ids, enc.spans["answer"]) == item.meta["answer"]
        assert item.answer == item.meta["answer"]  # a chat reply starts without a space


def test_tiny_llama_plain_text_when_chat_is_off(tiny_llama):
    model, spec = tiny_llama
    task = make_task(model=model, context_lengths=(180,), depths=(0.5,), needles=SHORT_NEEDLES,
                     chat=False)
    item = task.items[0]
    assert isinstance(item.prompt, Text) and item.answer.startswith(" ")
    enc = encode_prompts(model, task.prompts, spec)[0]
    assert 168 <= len(enc) <= 180
    assert _chars(model, enc.ids, enc.spans["answer"]) == item.meta["answer"]


def test_same_seed_same_items_other_seed_other_items():
    def build(seed):
        return make_task(context_lengths=(200,), depths=(0.3, 0.6), n=6, seed=seed)

    first, again, other = build(4), build(4), build(5)
    assert first.prompts == again.prompts
    assert [i.meta for i in first.items] == [i.meta for i in again.items]
    assert first.prompts != other.prompts


def test_registered_and_reachable_by_name():
    assert "niah" in list_tasks()
    task = get_task("niah", n=2, context_lengths=(150,), depths=(0.5,))
    assert task.name == "niah" and len(task) == 2


def test_bad_input_errors(tiny_llama, tiny_bert):
    model, _ = tiny_llama
    with pytest.raises(TaskError, match="more than the context length 100"):
        make_task(model=model, context_lengths=(100,), depths=(0.5,))  # shipped needles
    with pytest.raises(TaskError, match=r"beyond .* context of 256 tokens"):
        make_task(model=model, context_lengths=(300,), needles=SHORT_NEEDLES)
    for depth in (1.5, -0.1):
        with pytest.raises(TaskError, match=r"outside 0\.\.1"):
            make_task(context_lengths=(100,), depths=(depth,))
    with pytest.raises(TaskError, match=r"outside 0\.\.1"):
        insert_needle("A b. C d.", "E.", 2.0)
    with pytest.raises(TaskError, match="has no text"):
        make_task(context_lengths=(100,), haystack="  \n\t ")
    with pytest.raises(TaskError, match="not a causal"):
        make_task(model=tiny_bert[0], context_lengths=(100,), needles=SHORT_NEEDLES)
    with pytest.raises(TaskError, match="does not occur in the needle"):
        parse_needles([{"needle": "The key is Zed.", "question": "Key?", "answer": "Zap"}])
    with pytest.raises(TaskError, match="'question' must be a non-empty"):
        parse_needles([{"needle": "The key is Zed.", "answer": "Zed"}])
    with pytest.raises(TaskError, match="no needles"):
        make_task(context_lengths=(100,), needles=[])
    with pytest.raises(TaskError, match="n must be"):
        make_task(n=0)
    with pytest.raises(TaskError, match="not both"):
        make_task(haystack="Some text.", dataset="some/set")


def test_dataset_haystack_fails_at_once_offline(monkeypatch):
    import headprobe.sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HeadprobeError, match=r"offline.*haystack="):
        make_task(context_lengths=(100,), dataset="some/set")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(headprobe.sources, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(TaskError, match="not reachable"):
        make_task(context_lengths=(100,), dataset="some/set", text_column="body")


def test_shipped_needles_and_haystack_are_well_formed():
    needles = load_needles()
    assert len(needles) >= 24
    assert len({n.id for n in needles}) == len(needles)
    assert len({n.answer for n in needles}) == len(needles)
    haystack = load_haystack()
    assert len(haystack.split()) >= 6000
    assert haystack.isascii() and not re.search(r"[0-9?!]", haystack)
    lowered = haystack.lower()
    for needle in needles:
        assert needle.answer in needle.needle and not needle.needle.startswith(needle.answer)
        assert needle.needle.endswith(".") and needle.question.endswith("?")
        assert needle.answer.lower() not in needle.question.lower()
        pattern = r"\b" + re.escape(needle.answer.lower()) + r"\b"
        assert not re.search(pattern, lowered), f"{needle.answer!r} occurs in the haystack"
    kinds = {"number": sum(n.answer.isdigit() for n in needles),
             "two words": sum(" " in n.answer for n in needles)}
    assert kinds["number"] >= 5 and kinds["two words"] >= 5


def test_rouge1_recall_by_hand():
    assert rouge1_recall("Ilvara Quent", "It was kept by Ilvara Quent.") == 1.0
    assert rouge1_recall("Ilvara Quent", "ilvara, I think") == 0.5
    assert rouge1_recall("4817", "the code is 48") == 0.0
    assert rouge1_recall("red red cap", "a red cap") == pytest.approx(2 / 3)
    assert rouge1_recall("copper kettle", "COPPER-KETTLE") == 1.0
    with pytest.raises(TaskError, match="no words"):
        rouge1_recall(" .. ", "anything")


@pytest.mark.real
def test_smol_chat_items_lengths_and_spans(smol):
    model, spec = smol
    task = make_task(model=model, context_lengths=(256, 1024), depths=(0.0, 0.5, 1.0), seed=1)
    encoded = encode_prompts(model, task.prompts, spec)
    for item, enc in zip(task.items, encoded, strict=True):
        assert isinstance(item.prompt, Chat)
        assert "<|im_start|>assistant" in (enc.text or "")
        length = item.meta["context_length"]
        assert length - 8 <= len(enc) <= length
        needle, answer = enc.spans["needle"], enc.spans["answer"]
        assert needle.start <= answer.start and answer.stop <= needle.stop
        decode = model.tokenizer.decode
        assert decode(enc.ids[needle.start:needle.stop]).strip() == item.meta["needle"]
        assert decode(enc.ids[answer.start:answer.stop]).strip() == item.meta["answer"]


@pytest.mark.real
def test_smol_answer_split_inside_a_token_is_refused(smol):
    model, _ = smol
    bad = [{"needle": "The keeper of the light was Ilvara Quent.", "question": "Who kept it?",
            "answer": "Quen"}]
    with pytest.raises(TaskError, match="not found in the needle after tokenisation"):
        make_task(model=model, context_lengths=(128,), depths=(0.5,), needles=bad)


@pytest.mark.real
def test_smol_answers_short_contexts(smol):
    from headprobe.experiments import judge_task

    model, _ = smol
    task = make_task(model=model, context_lengths=(256,),
                     depths=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), seed=0)
    correct = judge_task(model, task, batch_size=6)
    # measured: 5 of 6 (SmolLM2-135M-Instruct, 24 new tokens, seed 0)
    assert correct.mean() >= 0.5
