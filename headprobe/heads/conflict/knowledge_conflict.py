"""Knowledge conflicts: a context that contradicts what the model knows.

The setting of Jin et al. 2024 ("Cutting Off the Head Ends the Conflict: A Mechanism for
Interpreting and Mitigating Knowledge Conflicts in Language Models", PH3) and Yu, Merullo &
Pavlick 2023 ("Characterizing Mechanisms for Factual Recall in Language Models"): a prompt
states a counterfactual fact and then asks for it::

    "In this story, the capital of France is London. In this story, the capital of France is"

The model answers either from memory (``" Paris"``, its parametric knowledge) or from the
context (``" London"``). Each :class:`~headprobe.tasks.base.TaskItem` has

- ``answer``: the context answer (``target="context"``) or the memory answer
  (``target="memory"``); ``distractor``: the other one. Both are single tokens for the model
  when one is given, and they always differ in their first token (else
  :class:`~headprobe.errors.PromptPairError` naming the item);
- ``corrupt_prompt``: the same prompt whose context agrees with memory ("... the capital of
  France is Paris. ... is"): no conflict, same token length (checked with the model), for
  patching;
- ``meta``: ``relation``, ``subject``, ``memory_answer``, ``context_answer``, ``framing``,
  ``query`` (the question alone, without context) and ``target``.

Facts are public knowledge; the sentences are this project's own. Capitals and main languages
come from the ``facts`` task (``headprobe/resources/facts.json``); continents, currencies,
colours and opposites are listed here (:data:`EXTRA_RELATIONS`). The counterfactual answer is
another fact's answer of the same relation. :data:`FRAMINGS` wraps the context and the question
in several ways (a story, a document, a plain note...): some framings make this small model
follow the context, others its memory, so the pooled set has both behaviours.

With a model, :func:`make_task` keeps only facts whose answer is a single token and that the
model recalls WITHOUT context (its greedy next token after the bare question is the answer's
first token): a conflict needs a memory to conflict with. ``task.meta["counts"]`` reports how
many facts and items survive each filter, per relation.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from headprobe.errors import PromptPairError, TaskError
from headprobe.tasks.base import Task, TaskItem
from headprobe.tasks.facts import load_facts

Target = Literal["context", "memory"]
Split = Literal["all", "a", "b"]

# Relations beyond facts.json: (question, [(subject, answer), ...]). Public knowledge.
EXTRA_RELATIONS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "continent": ("{subject} is located in the continent of", (
        ("France", "Europe"), ("Germany", "Europe"), ("Italy", "Europe"), ("Spain", "Europe"),
        ("Poland", "Europe"), ("Sweden", "Europe"), ("Greece", "Europe"), ("Norway", "Europe"),
        ("Japan", "Asia"), ("China", "Asia"), ("India", "Asia"), ("Thailand", "Asia"),
        ("Vietnam", "Asia"), ("Korea", "Asia"), ("Nepal", "Asia"), ("Mongolia", "Asia"),
        ("Kenya", "Africa"), ("Egypt", "Africa"), ("Nigeria", "Africa"), ("Ghana", "Africa"),
        ("Morocco", "Africa"), ("Uganda", "Africa"), ("Senegal", "Africa"),
        ("Zambia", "Africa"), ("Peru", "South America"), ("Chile", "South America"),
        ("Canada", "North America"), ("Mexico", "North America"),
    )),
    "currency": ("The currency of {subject} is the", (
        ("Japan", "yen"), ("India", "rupee"), ("Russia", "ruble"), ("China", "yuan"),
        ("Mexico", "peso"), ("England", "pound"), ("the United States", "dollar"),
        ("Germany", "euro"), ("Korea", "won"), ("Thailand", "baht"), ("Brazil", "real"),
        ("South Africa", "rand"), ("Switzerland", "franc"), ("Sweden", "krona"),
        ("Turkey", "lira"), ("Israel", "shekel"), ("Vietnam", "dong"), ("Poland", "zloty"),
        ("Hungary", "forint"), ("Denmark", "krone"),
    )),
    "colour": ("The color of {subject} is", (
        ("a banana", "yellow"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
        ("the sky", "blue"), ("blood", "red"), ("a carrot", "orange"), ("an eggplant", "purple"),
        ("a lemon", "yellow"), ("chocolate", "brown"), ("a flamingo", "pink"),
        ("ash", "grey"), ("a raven", "black"), ("a tomato", "red"),
    )),
    "opposite": ("The opposite of {subject} is", (
        ("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"),
        ("black", "white"), ("left", "right"), ("fast", "slow"), ("happy", "sad"),
        ("wet", "dry"), ("full", "empty"), ("early", "late"), ("rich", "poor"),
        ("strong", "weak"), ("high", "low"), ("young", "old"), ("true", "false"),
        ("north", "south"), ("east", "west"), ("always", "never"), ("good", "bad"),
    )),
}

# The question of the relations taken from facts.json (its first template).
FACTS_RELATIONS: tuple[str, ...] = ("capital", "language")

# {context}: the counterfactual statement ("The capital of France is London");
# {question}: the bare question ("The capital of France is"). A "_lower" suffix lower-cases
# the first letter, for framings that continue a sentence.
FRAMINGS: tuple[str, ...] = (
    "{context}. {question}",
    "In this story, {context_lower}. In this story, {question_lower}",
    "Context: {context}.\nQuestion: {question}",
    "According to the document, {context_lower}. According to the document, "
    "{question_lower}",
    "Imagine a world where {context_lower}. In that world, {question_lower}",
    "Note: {context}.\n{question}",
)


@dataclass(frozen=True)
class Fact:
    """One fact: ``question`` (e.g. "The capital of France is") and its ``answer`` with the
    leading space (``" Paris"``)."""

    relation: str
    subject: str
    question: str
    answer: str


def relations() -> list[str]:
    """Names of every relation (``capital``, ``language``, ``continent``, ...)."""
    return [*FACTS_RELATIONS, *EXTRA_RELATIONS]


def load_conflict_facts(names: Sequence[str] | str = "all") -> list[Fact]:
    """The facts of ``names`` (``"all"``: every relation); :class:`TaskError` for an unknown
    relation."""
    chosen = relations() if names == "all" else [names] if isinstance(names, str) else list(names)
    unknown = [name for name in chosen if name not in relations()]
    if unknown or not chosen:
        raise TaskError(f"unknown knowledge_conflict relation(s) {unknown or chosen}; choose "
                        f"from {', '.join(relations())} or 'all'")
    table = load_facts()
    facts: list[Fact] = []
    for name in chosen:
        if name in EXTRA_RELATIONS:
            question, pairs = EXTRA_RELATIONS[name]
        else:
            question, pairs = table[name]["templates"][0], table[name]["pairs"]
        facts += [Fact(name, str(s), question.format(subject=s), " " + str(a)) for s, a in pairs]
    return facts


# Sentence-initial words that become lower case inside a sentence (names stay capitalised).
_LOWERABLE = ("The ", "A ", "An ", "Most ")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text.startswith(_LOWERABLE) else text


def conflict_prompt(question: str, stated: str, framing: int | str = 0) -> str:
    """The prompt that states ``question`` + ``stated`` and asks ``question`` again.

    Args:
        question: the bare question, e.g. "The capital of France is".
        stated: the answer stated in the context, with its leading space (" London").
        framing: an index into :data:`FRAMINGS` or a format string with ``{context}`` /
            ``{context_lower}`` and ``{question}`` / ``{question_lower}``.
    """
    if isinstance(framing, int):
        if not 0 <= framing < len(FRAMINGS):
            raise TaskError(f"framing must lie in 0..{len(FRAMINGS) - 1}, got {framing}")
        framing = FRAMINGS[framing]
    context = question + stated
    return framing.format(context=context, context_lower=_lower_first(context),
                          question=question, question_lower=_lower_first(question))


def _first_token(model: Any, text: str) -> int:
    return int(model.to_tokens(text, prepend_bos=False, truncate=False)[0, 0])


def _n_tokens(model: Any, text: str, *, prepend_bos: bool = True) -> int:
    return int(model.to_tokens(text, prepend_bos=prepend_bos, truncate=False).shape[-1])


def conflict_item(fact: Fact, context_answer: str, framing: int | str = 0, *,
                  target: Target = "context", model: Any = None, index: int | None = None
                  ) -> TaskItem:
    """One conflict item: ``fact`` contradicted by ``context_answer`` (with leading space).

    The corrupt prompt states the memory answer instead (no conflict). With ``model``, the two
    answers must start with different tokens and the two prompts must have the same token
    length.

    Raises:
        PromptPairError: naming the item, when the answers are equal or share their first
            token, or (with a model) when the conflict and no-conflict prompts differ in length.
        TaskError: ``target`` is neither ``context`` nor ``memory``.
    """
    if target not in ("context", "memory"):
        raise TaskError(f"target must be 'context' or 'memory', got {target!r}")
    label = (f"item {index} " if index is not None else "item ") + (
        f"({fact.relation}: {fact.subject!r}, memory {fact.answer!r}, context "
        f"{context_answer!r})")
    if context_answer.strip() == fact.answer.strip():
        raise PromptPairError(f"{label}: the context answer equals the memory answer; a "
                              "conflict needs a different one")
    prompt = conflict_prompt(fact.question, context_answer, framing)
    corrupt = conflict_prompt(fact.question, fact.answer, framing)
    if model is not None:
        first = _first_token(model, context_answer), _first_token(model, fact.answer)
        if first[0] == first[1]:
            piece = model.tokenizer.decode([first[0]])
            raise PromptPairError(f"{label}: both answers start with the token {piece!r}, so "
                                  "the next token cannot tell them apart; pick another "
                                  "counterfactual answer")
        lengths = _n_tokens(model, prompt), _n_tokens(model, corrupt)
        if lengths[0] != lengths[1]:
            raise PromptPairError(f"{label}: the conflict prompt has {lengths[0]} tokens but "
                                  f"the no-conflict prompt {lengths[1]}; patching needs equal "
                                  "lengths")
    answer, distractor = ((context_answer, fact.answer) if target == "context"
                          else (fact.answer, context_answer))
    return TaskItem(
        prompt=prompt, answer=answer, distractor=distractor, corrupt_prompt=corrupt,
        meta={"relation": fact.relation, "subject": fact.subject,
              "memory_answer": fact.answer, "context_answer": context_answer,
              "framing": framing if isinstance(framing, int) else -1,
              "query": fact.question, "target": target})


def retarget(task: Task, target: Target) -> Task:
    """The same conflict items judged against the other answer (``context`` / ``memory``)."""
    if target not in ("context", "memory"):
        raise TaskError(f"target must be 'context' or 'memory', got {target!r}")
    items = []
    for index, item in enumerate(task.items):
        if "memory_answer" not in item.meta or "context_answer" not in item.meta:
            raise TaskError(f"task {task.name!r}: item {index} is not a knowledge-conflict item "
                            "(its meta has no memory_answer / context_answer)")
        memory, context = item.meta["memory_answer"], item.meta["context_answer"]
        answer, distractor = (context, memory) if target == "context" else (memory, context)
        items.append(TaskItem(item.prompt, answer, distractor, item.corrupt_prompt,
                              {**item.meta, "target": target}))
    return Task(task.name, items, task.judge, task.judge_fn, task.max_new_tokens,
                _description(target), {**task.meta, "target": target})


def _description(target: str) -> str:
    return (f"knowledge conflict: counterfactual context vs memory; answer = the {target} "
            "answer (next token)")


def _in_split(fact: Fact, split: Split) -> bool:
    if split == "all":
        return True
    bucket = zlib.crc32(f"{fact.relation}/{fact.subject}".encode()) % 2
    return bucket == (0 if split == "a" else 1)


def known_mask(model: Any, facts: Sequence[Fact], *, batch_size: int = 16) -> list[bool]:
    """Whether the model recalls each fact without context: its greedy next token after the
    bare question is the answer's first token."""
    from headprobe.experiments.judging import judge_task

    if not facts:
        return []
    probe = Task("knowledge_conflict_recall",
                 [TaskItem(fact.question, fact.answer) for fact in facts])
    return [bool(v) for v in judge_task(model, probe, batch_size=batch_size)]


def make_task(
    target: Target = "context",
    n: int | None = None,
    seed: int = 0,
    model: Any = None,
    *,
    relations: Sequence[str] | str = "all",
    framings: Sequence[int] | None = None,
    split: Split = "all",
    require_known: bool = True,
) -> Task:
    """The knowledge-conflict task.

    Every fact is paired with each framing of ``framings`` (default all of :data:`FRAMINGS`);
    each pair gets a counterfactual answer drawn (``seed``) from the other answers of its
    relation.

    Args:
        target: ``"context"`` (answer = the context answer, so accuracy is the context-answer
            rate) or ``"memory"``.
        n: number of items (default all), after shuffling with ``seed``.
        seed: a local ``random.Random`` (the global RNG is untouched).
        model: with a model, only single-token answers, facts the model recalls without
            context (``require_known``), counterfactuals whose first token differs from the
            memory answer's and corrupt prompts of equal token length are used.
        relations: relation names (see :func:`relations`) or ``"all"``.
        framings: indices into :data:`FRAMINGS`.
        split: ``"a"`` / ``"b"``: a fixed half of the facts (by a hash of relation and
            subject), so heads can be found on one half and tested on the other; ``"all"``.
        require_known: with a model, drop facts it does not recall without context.

    Returns:
        A :class:`Task` named ``knowledge_conflict`` (judge ``next_token``); ``meta["counts"]``
        has the number of facts and items kept after each filter, overall and per relation.

    Raises:
        TaskError: bad options or no usable item.
    """
    if target not in ("context", "memory"):
        raise TaskError(f"target must be 'context' or 'memory', got {target!r}")
    if n is not None and n < 1:
        raise TaskError(f"n must be >= 1, got {n}")
    if split not in ("all", "a", "b"):
        raise TaskError(f"split must be 'all', 'a' or 'b', got {split!r}")
    chosen = list(range(len(FRAMINGS))) if framings is None else [int(f) for f in framings]
    bad = [f for f in chosen if not 0 <= f < len(FRAMINGS)]
    if bad or not chosen:
        raise TaskError(f"framings must be indices in 0..{len(FRAMINGS) - 1}, got "
                        f"{list(framings or [])}")
    facts = [fact for fact in load_conflict_facts(relations) if _in_split(fact, split)]
    counts: dict[str, Any] = {"facts": len(facts)}
    if model is not None:
        facts = [fact for fact in facts if _n_tokens(model, fact.answer, prepend_bos=False) == 1]
        counts["single_token"] = len(facts)
        if require_known:
            facts = [fact for fact, ok in zip(facts, known_mask(model, facts), strict=True) if ok]
            counts["known"] = len(facts)
    rng = random.Random(seed)
    items: list[TaskItem] = []
    skipped = 0
    for fact in facts:
        answers = sorted({f.answer for f in facts
                          if f.relation == fact.relation and f.answer != fact.answer})
        for framing in chosen:
            candidates = list(answers)
            rng.shuffle(candidates)
            for candidate in candidates:
                try:
                    items.append(conflict_item(fact, candidate, framing, target=target,
                                               model=model))
                    break
                except PromptPairError:
                    continue
            else:
                skipped += 1
    counts["items"] = len(items)
    counts["skipped_no_counterfactual"] = skipped
    counts["per_relation"] = {
        name: {"facts": sum(f.relation == name for f in facts),
               "items": sum(i.meta["relation"] == name for i in items)}
        for name in dict.fromkeys(f.relation for f in load_conflict_facts(relations))}
    rng.shuffle(items)
    if n is not None:
        items = items[:n]
    if not items:
        raise TaskError(f"knowledge_conflict ({relations}, split {split}): no usable item"
                        + (" for this model (it recalls too few facts without context, or no "
                           "counterfactual has a distinct first token)" if model is not None
                           else ""))
    return Task(
        name="knowledge_conflict",
        items=items,
        judge="next_token",
        description=_description(target),
        meta={"target": target, "seed": seed, "relations": relations, "split": split,
              "framings": chosen, "filtered_for_model": model is not None,
              "require_known": require_known, "counts": counts,
              "source": "headprobe/heads/conflict/knowledge_conflict.py + "
                        "headprobe/resources/facts.json"},
    )
