"""The successor_increment task: increment items, repeat and facts controls."""

from __future__ import annotations

import pytest

from headprobe.errors import TaskError
from headprobe.heads.successor.ordinal_sets import ORDINAL_SETS
from headprobe.tasks import get_task
from headprobe.tasks.base import answer_token_ids


def test_increment_items_continue_the_list(tiny_llama):
    model, _ = tiny_llama
    task = get_task("successor_increment", kind="increment", model=model, seed=1)
    assert task.judge == "next_token"
    sets = {item.meta["set"] for item in task.items}
    assert sets == {"letters", "digits"}  # the tiny character tokenizer's single tokens
    for item in task.items:
        assert not item.meta["with_space"]  # " D" is two characters -> bare form
        items = ORDINAL_SETS[item.meta["set"]].items
        shown = item.prompt.split(": ", 1)[1].rstrip(",").split(",")
        assert len(shown) == item.meta["length"]
        assert item.answer == items[items.index(shown[-1]) + 1]
        assert item.distractor == shown[-1]
    answer_token_ids(model, task)  # single tokens, or TaskError


def test_repeat_control_and_spaced_form_without_model():
    task = get_task("successor_increment", kind="repeat", n=10, seed=0, sets=["days"])
    item = task.items[0]
    body = item.prompt.split(": ", 1)[1].rstrip(",")
    words = body.split(", ")
    assert len(set(words)) == 1 and item.answer == " " + words[0]
    days = ORDINAL_SETS["days"].items
    assert item.distractor == " " + days[(days.index(words[0]) + 1) % 7]
    wrap = get_task("successor_increment", kind="increment", sets=["days"], seed=0)
    assert any(i.prompt.endswith("Saturday, Sunday,") and i.answer == " Monday"
               for i in wrap.items)


def test_n_is_spread_over_sets_and_facts_control():
    task = get_task("successor_increment", kind="increment", n=10, seed=0)
    assert len(task) == 10
    assert len({item.meta["set"] for item in task.items}) == 5
    facts = get_task("successor_increment", kind="facts", n=6, seed=0)
    assert len(facts) == 6 and all(i.corrupt_prompt is None for i in facts.items)


def test_bad_options():
    with pytest.raises(TaskError, match="kind"):
        get_task("successor_increment", kind="decrement")
    with pytest.raises(TaskError, match="weekdays"):
        get_task("successor_increment", sets=["weekdays"])
    with pytest.raises(TaskError, match="n must"):
        get_task("successor_increment", n=0)
