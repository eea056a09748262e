"""The factual-recall task: structure, determinism, single-token filtering."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import TaskError
from headprobe.tasks import get_task, list_tasks
from headprobe.tasks.facts import load_facts, make_task, single_token_items, validate_single_token


def test_facts_is_registered_and_well_formed():
    assert "facts" in list_tasks()
    task = get_task("facts")
    assert task.name == "facts" and len(task) >= 40
    for item in task.items:
        assert item.answer.startswith(" ") and item.distractor.startswith(" ")
        assert item.answer != item.distractor
        assert item.corrupt_prompt != item.prompt
        assert item.meta["subject"] in item.prompt
        assert item.meta["corrupt_subject"] in item.corrupt_prompt


def test_corrupt_prompt_is_the_distractors_fact():
    facts = load_facts()
    for relation in facts:
        answers = {subject: " " + answer for subject, answer in facts[relation]["pairs"]}
        for item in make_task(relation=relation).items:
            assert answers[item.meta["corrupt_subject"]] == item.distractor
            assert answers[item.meta["subject"]] == item.answer


def test_seed_n_and_relation_options():
    before = torch.random.get_rng_state()
    first, again = make_task(n=10, seed=3), make_task(n=10, seed=3)
    assert torch.equal(before, torch.random.get_rng_state())
    assert [i.prompt for i in first.items] == [i.prompt for i in again.items]
    assert len(first) == 10
    assert {i.meta["relation"] for i in make_task(relation="all").items} == set(load_facts())
    with pytest.raises(TaskError, match="unknown facts relation"):
        make_task(relation="rivers")
    with pytest.raises(TaskError):
        make_task(n=0)


def test_word_answers_are_rejected_for_a_character_tokenizer(tiny_llama):
    model, _ = tiny_llama
    task = make_task(n=3)
    with pytest.raises(TaskError, match=r"item 0 \(.*\): answer ' .*' is \d+ tokens"):
        validate_single_token(model, task.items)
    assert single_token_items(model, task.items) == []
    with pytest.raises(TaskError, match="single-token answer"):
        make_task(model=model)


@pytest.mark.real
def test_facts_on_smollm2_are_single_tokens(smol):
    model, _ = smol
    task = make_task(model=model)
    assert len(task) >= 40
    validate_single_token(model, task.items)
    assert model.to_tokens(" Paris", prepend_bos=False).shape[-1] == 1
    same = [item for item in task.items if item.meta["same_length"]]
    assert len(same) >= 0.9 * len(task)
    for item in same:
        assert (model.to_tokens(item.prompt).shape == model.to_tokens(item.corrupt_prompt).shape)
