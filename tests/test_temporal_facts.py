"""The temporal_facts task: data, pairs, year range, bad-input errors (no model needed)."""

from __future__ import annotations

import json

import pytest

from headprobe.errors import PromptPairError, TaskError, YearRangeError
from headprobe.heads.temporal.temporal_facts import (
    answer_in,
    covered_range,
    invariant_pair,
    load_records,
    make_task,
    temporal_pair,
)
from headprobe.tasks import get_task


def test_data_records_are_consistent():
    temporal = load_records("temporal")
    invariant = load_records("invariant")
    assert len(temporal) >= 20 and len(invariant) >= 60
    for record in temporal:
        assert "{year}" in record["template"] and "{year}" in record["alias_template"]
        assert all(t["from"] <= t["to"] for t in record["terms"])
        for year in record["years"]:  # every default year has an answer
            assert answer_in(record, year) is not None, (record["id"], year)
    for record in invariant:
        assert "{subject}" in record["template"] and record["answer"]
    first, last = covered_range()
    assert first <= 1985 and last >= 2022


def test_temporal_items_pair_years_of_the_same_subject():
    task = get_task("temporal_facts", kind="temporal", seed=1)
    assert task.judge == "next_token" and task.meta["kind"] == "temporal"
    for item in task.items:
        meta = item.meta
        assert meta["year"] != meta["corrupt_year"]
        assert item.prompt.replace(str(meta["year"]), str(meta["corrupt_year"])) == \
            item.corrupt_prompt
        assert item.answer == " " + meta["full_answer"].split()[0]
        assert item.distractor == " " + meta["full_distractor"].split()[0]
        assert item.answer != item.distractor
    us = [i for i in task.items if i.meta["id"] == "president_us" and i.meta["year"] == 2012]
    assert us and us[0].answer == " Barack"


def test_alias_templates_and_subsets():
    task = make_task("temporal", alias=True, sets=["ceo"], n=3, seed=0)
    assert len(task) == 3
    assert all(i.prompt.startswith("In the year ") and i.meta["set"] == "ceo"
               for i in task.items)
    invariant = make_task("invariant", sets=["capital"])
    assert {i.meta["set"] for i in invariant.items} == {"capital"}
    assert all(i.answer != i.distractor for i in invariant.items)


def test_years_outside_the_data_raise_with_the_range():
    first, last = covered_range()
    with pytest.raises(YearRangeError, match=f"{first}..{last}"):
        make_task("temporal", years=[1850, 2010])
    with pytest.raises(YearRangeError, match="president_us"):
        temporal_pair(load_records("temporal")[0], 1970, 2010)


def test_explicit_pair_with_the_same_first_token_raises():
    # France 1990 (Francois Mitterrand) vs 2014 (Francois Hollande)
    with pytest.raises(PromptPairError, match="president_france 1990 vs 2014"):
        make_task("temporal", years=[1990, 2014], sets=["president"])
    france = next(r for r in load_records("temporal") if r["id"] == "president_france")
    with pytest.raises(PromptPairError, match="same token"):
        temporal_pair(france, 2014, 1990)
    rome = {"id": "a", "set": "x", "subject": "Italy", "template": "The capital of {subject} is",
            "alias_template": "{subject}'s capital is", "answer": "Rome"}
    other = {**rome, "id": "b", "subject": "Romania", "answer": "Rome city"}
    with pytest.raises(PromptPairError, match="a vs b"):
        invariant_pair(rome, other)


def test_default_pairs_drop_and_count_unusable_years(tmp_path, monkeypatch):
    folder = tmp_path / "temporal"
    folder.mkdir()
    records = [
        {"id": "same", "set": "s", "subject": "X", "template": "In {year}, X was",
         "alias_template": "In the year {year}, X was", "years": [1990, 2005],
         "terms": [{"from": 1989, "to": 1992, "answer": "George Bush"},
                   {"from": 2001, "to": 2008, "answer": "George W. Bush"}]},
        {"id": "ok", "set": "s", "subject": "Y", "template": "In {year}, Y was",
         "alias_template": "In the year {year}, Y was", "years": [1990, 2012],
         "terms": [{"from": 1989, "to": 1992, "answer": "George Bush"},
                   {"from": 2009, "to": 2016, "answer": "Barack Obama"}]},
    ]
    (folder / "temporal.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    monkeypatch.setenv("HEADPROBE_DATA", str(tmp_path))
    task = make_task("temporal")
    assert len(task) == 2 and task.meta["dropped"] == 2
    assert all("same" in reason for reason in task.meta["dropped_facts"])


def test_bad_options_raise():
    with pytest.raises(TaskError, match="kind"):
        make_task("weather")
    with pytest.raises(TaskError, match="years apply"):
        make_task("invariant", years=[2000])
    with pytest.raises(TaskError, match="unknown temporal set"):
        make_task("temporal", sets=["kings"])
    with pytest.raises(TaskError, match="known_only needs"):
        make_task("temporal", known_only=True)
    with pytest.raises(TaskError, match="n must be"):
        make_task("temporal", n=0)


def test_char_tokenizer_model_leaves_no_usable_pair(tiny_llama):
    # every answer starts with the token " " for a character tokenizer: all pairs dropped
    model, _ = tiny_llama
    with pytest.raises(TaskError, match="no usable pairs"):
        make_task("temporal", model=model, sets=["ceo"])
