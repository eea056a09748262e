"""The knowledge_conflict task: items, corrupt prompts, filters, splits and bad input."""

from __future__ import annotations

import pytest

from headprobe.errors import PromptPairError, TaskError
from headprobe.heads.conflict.knowledge_conflict import (
    FRAMINGS,
    Fact,
    conflict_item,
    conflict_prompt,
    load_conflict_facts,
    make_task,
    relations,
    retarget,
)
from headprobe.tasks import get_task


def test_items_pair_context_and_memory_answers():
    task = make_task(n=40, seed=1)
    assert task.name == "knowledge_conflict" and len(task) == 40
    assert task.judge == "next_token" and task.meta["target"] == "context"
    for item in task.items:
        meta = item.meta
        assert item.answer == meta["context_answer"] and item.distractor == meta["memory_answer"]
        assert item.answer != item.distractor
        # the conflict prompt states the context answer, the corrupt one the memory answer
        assert item.prompt == conflict_prompt(meta["query"], item.answer, meta["framing"])
        assert item.corrupt_prompt == conflict_prompt(meta["query"], item.distractor,
                                                      meta["framing"])
    memory = retarget(task, "memory")
    assert [i.answer for i in memory.items] == [i.distractor for i in task.items]
    assert memory.meta["target"] == "memory"
    assert make_task(target="memory", n=40, seed=1).items[0].answer == memory.items[0].answer


def test_prompt_text_and_registry():
    prompt = conflict_prompt("The capital of France is", " London", 1)
    assert prompt == ("In this story, the capital of France is London. In this story, the "
                      "capital of France is")
    # names keep their capital letter inside a sentence
    assert "where Kenya is" in conflict_prompt("Kenya is located in the continent of",
                                               " Asia", 4)
    assert len(get_task("knowledge_conflict", n=5)) == 5
    assert {"capital", "language", "currency", "colour", "opposite"} <= set(relations())


def test_splits_partition_the_facts_and_seed_is_deterministic():
    every = {(f.relation, f.subject) for f in load_conflict_facts()}
    halves = [{(i.meta["relation"], i.meta["subject"]) for i in make_task(split=s).items}
              for s in ("a", "b")]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == every
    a, b = make_task(n=20, seed=3), make_task(n=20, seed=3)
    assert [i.prompt for i in a.items] == [i.prompt for i in b.items]
    assert [i.prompt for i in make_task(n=20, seed=4).items] != [i.prompt for i in a.items]
    counts = make_task(relations="capital", framings=[0, 2]).meta["counts"]
    assert counts["items"] == 2 * counts["facts"] and set(counts["per_relation"]) == {"capital"}


@pytest.mark.parametrize("kwargs", [{"target": "both"}, {"n": 0}, {"relations": "planets"},
                                    {"framings": [len(FRAMINGS)]}, {"split": "c"}])
def test_bad_options(kwargs):
    with pytest.raises(TaskError):
        make_task(**kwargs)


def test_equal_answers_are_refused_naming_the_item():
    fact = Fact("capital", "France", "The capital of France is", " Paris")
    with pytest.raises(PromptPairError, match="France"):
        conflict_item(fact, " Paris", index=3)


def test_first_token_and_length_checks_with_a_model(tiny_llama):
    model, _ = tiny_llama  # character tokenizer: " Paris" and " London" both start with " "
    fact = Fact("capital", "France", "The capital of France is", " Paris")
    with pytest.raises(PromptPairError, match="start with the token"):
        conflict_item(fact, " London", model=model, index=0)
    short = Fact("code", "x", "The code of x is ", "P")
    with pytest.raises(PromptPairError, match="tokens"):
        conflict_item(short, "LL", model=model)
    item = conflict_item(short, "L", 2, model=model)
    assert item.answer == "L" and item.distractor == "P"
    assert len(model.to_tokens(item.prompt)[0]) == len(model.to_tokens(item.corrupt_prompt)[0])
    # every shipped answer is several characters: nothing survives the single-token filter
    with pytest.raises(TaskError, match="no usable item"):
        make_task(model=model, relations="opposite")


@pytest.mark.real
def test_real_model_task_is_filtered_to_known_single_token_facts(smol):
    model, _ = smol
    task = make_task(n=60, seed=0, model=model, relations=["capital", "language"])
    counts = task.meta["counts"]
    assert counts["facts"] > counts["single_token"] >= counts["known"] > 20
    for item in task.items:
        ids = [model.to_tokens(t, prepend_bos=False)[0].tolist() for t in
               (item.answer, item.distractor)]
        assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]
        assert (model.to_tokens(item.prompt).shape == model.to_tokens(item.corrupt_prompt).shape)
