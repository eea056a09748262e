"""Time-conditioned facts and time-invariant controls (temporal heads).

After Park et al. 2025, "Does Time Have Its Place? Temporal Heads: Where Language Models Recall
Time-specific Information": a *temporal* fact changes with the year ("In 2010, the president
of the United States was President" -> " Barack"; in 2019 -> " Donald"), a *time-invariant*
fact does not ("The capital of Japan is" -> " Tokyo"). The data are written for headprobe
(``data/temporal/``, see its README): public facts (office holders, CEOs, athletes' teams;
capitals, superclasses, fruit colours, opposites, shapes) in the project's own sentences.

Each temporal record has a template with ``{year}``, an alias template ("In the year
{year}, ..."), terms ``{from, to, answer}`` (the full answer held that year, inclusive) and
default years. Pairs for patching and EAP-IG (same subject, equal token length):

- temporal: clean = the template at year ``y``; corrupt = the same template at another year
  ``y'`` whose answer differs; ``distractor`` = the answer at ``y'``.
- invariant: clean = the template with one subject; corrupt = the same template with another
  subject of the same relation (equal token length when a model is given) whose answer
  differs; ``distractor`` = that subject's answer.

Answers are tokenized as continuations with a leading space; only their *first token* is
used (``" Barack Obama"`` -> ``" Barack"``): with a model, ``TaskItem.answer`` is the decoded
first token of ``" " + full answer`` (so it is one token by construction), without one it is
``" " + first word``. A pair whose two answers share that first token cannot separate them
(``" François"`` Mitterrand vs ``" François"`` Hollande): :func:`temporal_pair` /
:func:`invariant_pair` raise :class:`~headprobe.errors.PromptPairError` naming the pair, and
:func:`make_task` raises it for explicitly given years; with the default years such pairs are
never formed, and a clean fact with no usable partner is dropped and counted in
``task.meta["dropped"]``.

:func:`known_facts` keeps the items the model gets right unablated (greedy next token ==
the answer's first token) and reports how many remain, per kind and per set.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from headprobe.errors import PromptPairError, TaskError, YearRangeError
from headprobe.paths import data_dir
from headprobe.tasks.base import Task, TaskItem

Kind = Literal["temporal", "invariant"]
KINDS = ("temporal", "invariant")
TEMPORAL_DIR = "temporal"
FILES = {"temporal": "temporal.jsonl", "invariant": "invariant.jsonl"}
REFERENCE = ("Park et al. 2025, 'Does Time Have Its Place? Temporal Heads: Where Language "
             "Models Recall Time-specific Information'")


# ---------------------------------------------------------------------------------------------
# Data


def data_path(kind: Kind) -> Path:
    """``data/temporal/<kind>.jsonl`` (``$HEADPROBE_DATA`` overrides ``data/``)."""
    if kind not in KINDS:
        raise TaskError(f"kind must be 'temporal' or 'invariant', got {kind!r}")
    return data_dir() / TEMPORAL_DIR / FILES[kind]


@cache
def _read(path: Path) -> tuple[dict[str, Any], ...]:
    if not path.is_file():
        raise TaskError(f"temporal facts file {path} is missing (set $HEADPROBE_DATA to the "
                        "folder holding temporal/)")
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line) for line in lines if line.strip())


def load_records(kind: Kind) -> list[dict[str, Any]]:
    """The records of ``data/temporal/<kind>.jsonl`` (fresh copies)."""
    return [json.loads(json.dumps(r)) for r in _read(data_path(kind))]


def covered_range(records: Sequence[dict[str, Any]] | None = None) -> tuple[int, int]:
    """``(first, last)`` year any temporal record's terms cover."""
    records = load_records("temporal") if records is None else records
    starts = [t["from"] for r in records for t in r["terms"]]
    ends = [t["to"] for r in records for t in r["terms"]]
    return min(starts), max(ends)


def answer_in(record: dict[str, Any], year: int) -> str | None:
    """The full answer of a temporal record in ``year`` (None when no term covers it)."""
    for term in record["terms"]:
        if term["from"] <= year <= term["to"]:
            return str(term["answer"])
    return None


def record_years(record: dict[str, Any]) -> tuple[int, int]:
    """``(first, last)`` year the record's terms cover (there may be gaps between terms)."""
    return min(t["from"] for t in record["terms"]), max(t["to"] for t in record["terms"])


# ---------------------------------------------------------------------------------------------
# Answers and pairs


def answer_token(model: Any, full: str) -> str:
    """The answer as judged and scored: the first token of ``" " + full`` decoded (with a
    model), else ``" " + first word``."""
    text = " " + full.strip()
    if model is None:
        return " " + full.strip().split()[0]
    ids = model.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()
    return str(model.tokenizer.decode([ids[0]]))


def _first_key(model: Any, full: str) -> Any:
    """What two answers must not share: the first token id (model) or first word."""
    if model is None:
        return full.strip().split()[0]
    return int(model.to_tokens(" " + full.strip(), prepend_bos=False, truncate=False)[0, 0])


def _length(model: Any, text: str) -> int:
    return int(model.to_tokens(text, prepend_bos=True, truncate=False).shape[-1])


def temporal_pair(record: dict[str, Any], year: int, corrupt_year: int, *, alias: bool = False,
                  model: Any = None) -> TaskItem:
    """The clean/corrupt item of a temporal record: ``year`` vs ``corrupt_year``.

    Raises:
        YearRangeError: a year no term of the record covers (the message gives its range).
        PromptPairError: the two answers share their first token (or first word without a
            model), or the prompts differ in token length (with a model).
    """
    first, last = record_years(record)
    for y in (year, corrupt_year):
        if answer_in(record, y) is None:
            raise YearRangeError(f"{record['id']}: no answer for {y}; its terms cover "
                                 f"{first}..{last} (gaps between terms excepted)")
    template = record["alias_template" if alias else "template"]
    clean, corrupt = template.format(year=year), template.format(year=corrupt_year)
    full, other = str(answer_in(record, year)), str(answer_in(record, corrupt_year))
    name = f"{record['id']} {year} vs {corrupt_year} ({full!r} vs {other!r})"
    if _first_key(model, full) == _first_key(model, other):
        raise PromptPairError(f"temporal pair {name}: both answers start with the same "
                              f"token {answer_token(model, full)!r}, so the logit difference "
                              "cannot tell them apart; pick another year")
    if model is not None and _length(model, clean) != _length(model, corrupt):
        raise PromptPairError(f"temporal pair {name}: prompts of different token length")
    return TaskItem(prompt=clean, answer=answer_token(model, full),
                    distractor=answer_token(model, other), corrupt_prompt=corrupt,
                    meta={"kind": "temporal", "set": record["set"], "id": record["id"],
                          "subject": record["subject"], "year": year,
                          "corrupt_year": corrupt_year, "full_answer": full,
                          "full_distractor": other, "alias": alias})


def invariant_pair(record: dict[str, Any], corrupt: dict[str, Any], *, alias: bool = False,
                   model: Any = None) -> TaskItem:
    """The clean/corrupt item of an invariant record with another subject's record.

    Raises:
        PromptPairError: the answers share their first token, or (with a model) the prompts
            differ in token length.
    """
    key = "alias_template" if alias else "template"
    clean = record[key].format(subject=record["subject"])
    other = corrupt[key].format(subject=corrupt["subject"])
    name = f"{record['id']} vs {corrupt['id']} ({record['answer']!r} vs {corrupt['answer']!r})"
    if _first_key(model, record["answer"]) == _first_key(model, corrupt["answer"]):
        raise PromptPairError(f"invariant pair {name}: both answers start with the same token")
    if model is not None and _length(model, clean) != _length(model, other):
        raise PromptPairError(f"invariant pair {name}: prompts of different token length")
    return TaskItem(prompt=clean, answer=answer_token(model, record["answer"]),
                    distractor=answer_token(model, corrupt["answer"]), corrupt_prompt=other,
                    meta={"kind": "invariant", "set": record["set"], "id": record["id"],
                          "subject": record["subject"], "corrupt_subject": corrupt["subject"],
                          "full_answer": record["answer"], "alias": alias})


# ---------------------------------------------------------------------------------------------
# Task


def make_task(
    kind: Kind = "temporal",
    years: Sequence[int] | None = None,
    alias: bool = False,
    n: int | None = None,
    seed: int = 0,
    model: Any = None,
    sets: Sequence[str] | None = None,
    known_only: bool = False,
    batch_size: int = 8,
) -> Task:
    """The temporal (or invariant) facts task, judged by the greedy next token.

    Args:
        kind: ``temporal`` (dated facts) or ``invariant`` (time-invariant controls).
        years: temporal only: the years to ask (default: each record's own years). Each clean
            year is paired with the next given year (cyclically) whose answer differs; a year
            outside the data's range raises :class:`YearRangeError`, a pair whose answers
            share their first token :class:`PromptPairError`.
        alias: use the alias templates ("In the year {year}, ...").
        n: keep the first ``n`` items after a seeded shuffle (default: all).
        seed: picks corrupt partners (default years) and the order (local ``random.Random``).
        model: a bridge; answers become its first answer tokens, pairs must have equal
            token length, and ``known_only`` can filter.
        sets: keep only these sets (``president``, ``ceo``, ``capital``...).
        known_only: keep only the facts the model gets right (needs ``model``; see
            :func:`known_facts`).
        batch_size: for ``known_only``'s judging.

    Raises:
        TaskError: unknown kind or set, bad ``n``, ``years`` with ``invariant``, no items.
        YearRangeError / PromptPairError: see ``years``.
    """
    if kind not in KINDS:
        raise TaskError(f"kind must be 'temporal' or 'invariant', got {kind!r}")
    if n is not None and n < 1:
        raise TaskError(f"n must be >= 1, got {n}")
    if known_only and model is None:
        raise TaskError("known_only needs the model whose knowledge filters the facts")
    records = load_records(kind)
    known_sets = sorted({r["set"] for r in records})
    if sets is not None:
        unknown = sorted(set(sets) - set(known_sets))
        if unknown:
            raise TaskError(f"unknown {kind} set(s) {unknown}; sets: {', '.join(known_sets)}")
        records = [r for r in records if r["set"] in set(sets)]
    rng = random.Random(seed)
    dropped: list[str] = []
    if kind == "temporal":
        items = _temporal_items(records, years, alias, model, rng, dropped)
    else:
        if years is not None:
            raise TaskError("years apply to kind='temporal' only; invariant facts have none")
        items = _invariant_items(records, alias, model, rng, dropped)
    if not items:
        raise TaskError(f"temporal_facts ({kind}): no usable pairs ({len(dropped)} dropped)")
    rng.shuffle(items)
    if n is not None:
        items = items[:n]
    task = Task(
        name="temporal_facts", items=items, judge="next_token",
        description=f"{kind} facts: next-token recall, clean/corrupt pairs "
                    + ("(other year)" if kind == "temporal" else "(other subject)"),
        meta={"kind": kind, "years": list(years) if years is not None else None, "alias": alias,
              "seed": seed, "sets": sorted({i.meta["set"] for i in items}),
              "dropped": len(dropped), "dropped_facts": dropped, "reference": REFERENCE,
              "source": f"data/{TEMPORAL_DIR}/{FILES[kind]}",
              "filtered_for_model": model is not None})
    if known_only:
        task = known_facts(model, task, batch_size=batch_size).task
    return task


def _temporal_items(records: Sequence[dict[str, Any]], years: Sequence[int] | None,
                    alias: bool, model: Any, rng: random.Random,
                    dropped: list[str]) -> list[TaskItem]:
    items: list[TaskItem] = []
    if years is not None:
        years = [int(y) for y in years]
        if not years:
            raise TaskError("years is empty; give at least two years or leave it out")
        first, last = covered_range(load_records("temporal"))
        outside = [y for y in years if not first <= y <= last]
        if outside:
            raise YearRangeError(f"year(s) {outside} outside the range the temporal data "
                                 f"covers: {first}..{last}")
    for record in records:
        asked = years if years is not None else [int(y) for y in record["years"]]
        covered = [y for y in asked if answer_in(record, y) is not None]
        for index, year in enumerate(covered):
            if years is not None:
                # explicit years: the next covered year (cyclically) with another answer
                later = covered[index + 1:] + covered[:index]
                partner = next((y for y in later if answer_in(record, y)
                                != answer_in(record, year)), None)
                if partner is None:
                    dropped.append(f"{record['id']} {year}: no other given year with "
                                   "another answer")
                    continue
                items.append(temporal_pair(record, year, partner, alias=alias, model=model))
                continue
            key = _first_key(model, str(answer_in(record, year)))
            partners = [y for y in covered if y != year
                        and _first_key(model, str(answer_in(record, y))) != key]
            if not partners:
                dropped.append(f"{record['id']} {year}: every other year's answer starts "
                               "with the same token")
                continue
            items.append(temporal_pair(record, year, partners[rng.randrange(len(partners))],
                                       alias=alias, model=model))
    return items


def _invariant_items(records: Sequence[dict[str, Any]], alias: bool, model: Any,
                     rng: random.Random, dropped: list[str]) -> list[TaskItem]:
    key = "alias_template" if alias else "template"
    items: list[TaskItem] = []
    for record in records:
        first = _first_key(model, record["answer"])
        partners = [r for r in records if r["set"] == record["set"] and r is not record
                    and _first_key(model, r["answer"]) != first]
        if model is not None:
            length = _length(model, record[key].format(subject=record["subject"]))
            partners = [r for r in partners
                        if _length(model, r[key].format(subject=r["subject"])) == length]
        if not partners:
            dropped.append(f"{record['id']}: no subject of equal token length with another "
                           "answer")
            continue
        items.append(invariant_pair(record, partners[rng.randrange(len(partners))],
                                    alias=alias, model=model))
    return items


# ---------------------------------------------------------------------------------------------
# Known facts


@dataclass
class KnownFacts:
    """The facts a model gets right unablated.

    Attributes:
        task: the task reduced to the known items (:class:`TaskError` when none are known).
        n_known, n_total: how many remain out of how many.
        per_set: ``{set: (known, total)}``.
        correct: [N] bool judgements of the full task, in its order.
    """

    task: Task | None
    n_known: int
    n_total: int
    per_set: dict[str, tuple[int, int]] = field(default_factory=dict)
    correct: list[bool] = field(default_factory=list)

    def describe(self) -> str:
        kind = self.task.meta.get("kind", "?") if self.task is not None else "?"
        sets = ", ".join(f"{s} {k}/{t}" for s, (k, t) in sorted(self.per_set.items()))
        return f"{kind}: {self.n_known} of {self.n_total} facts known ({sets})"


def known_facts(model: Any, task: Task, *, batch_size: int = 8, strict: bool = True
                ) -> KnownFacts:
    """Judge ``task`` on the clean model and keep the items it gets right (greedy next token
    == the answer's first token, :func:`headprobe.experiments.judging.judge_task`).

    ``strict``: raise :class:`TaskError` when no item is known (else ``task`` is None).
    """
    from headprobe.experiments.judging import judge_task

    correct = [bool(c) for c in judge_task(model, task, batch_size=batch_size)]
    items = [item for item, ok in zip(task.items, correct, strict=True) if ok]
    per_set: dict[str, tuple[int, int]] = {}
    for item, ok in zip(task.items, correct, strict=True):
        known, total = per_set.get(item.meta.get("set", "?"), (0, 0))
        per_set[item.meta.get("set", "?")] = (known + int(ok), total + 1)
    kept: Task | None = None
    if items:
        kept = Task(task.name, items, task.judge, task.judge_fn, task.max_new_tokens,
                    task.description + " (known facts only)",
                    {**task.meta, "known_only": True, "n_before_filter": len(task)})
    elif strict:
        raise TaskError(f"{task.name} ({task.meta.get('kind')}): the model gets none of the "
                        f"{len(task)} facts right")
    return KnownFacts(kept, len(items), len(task), per_set, correct)
