"""Factual recall: one-token answers to "The capital of France is" -> " Paris".

The prompt set is written for headprobe (``headprobe/resources/facts.json``): public facts
(capitals, main languages, chemical symbols) put in the project's own templates. Each item
has

- ``answer``: the fact, with its leading space (``" Paris"``);
- ``distractor``: another item's answer of the same relation (``" Rome"``), for the logit
  difference ``logit[answer] - logit[distractor]`` used by direct logit attribution
  (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits") and patching;
- ``corrupt_prompt``: the same template filled with the distractor's subject
  (``"The capital of Italy is"``), whose answer is the distractor. When a model is given,
  the distractor is picked so that the corrupt prompt has the clean prompt's token length
  where any such candidate exists (``meta["same_length"]`` says whether it does).

Answers must be single tokens for logit differences: pass ``model`` to :func:`make_task` to
keep only items whose answer and distractor are one token for that model's tokenizer, or call
:func:`validate_single_token` / :func:`single_token_items` on items of your own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from headprobe.errors import TaskError
from headprobe.prompts import load_resource
from headprobe.tasks.base import Task, TaskItem

RESOURCE = "facts.json"


def load_facts() -> dict[str, dict[str, Any]]:
    """The relations of ``facts.json``: ``{name: {description, templates, pairs}}``."""
    return dict(load_resource(RESOURCE)["relations"])


def relations() -> list[str]:
    """Names of the relations in the prompt set (``capital``, ``language``, ``element``)."""
    return list(load_facts())


def _token_count(model: Any, text: str, *, prepend_bos: bool) -> int:
    return int(model.to_tokens(text, prepend_bos=prepend_bos, truncate=False).shape[-1])


def _is_single_token(model: Any, text: str) -> bool:
    return _token_count(model, text, prepend_bos=False) == 1


def validate_single_token(model: Any, items: Sequence[TaskItem]) -> None:
    """Check that every item's answer and distractor is exactly one token for ``model``.

    Raises:
        TaskError: naming the first bad item (index, prompt, the text and its token pieces).
    """
    for index, item in enumerate(items):
        for what, text in (("answer", item.answer), ("distractor", item.distractor)):
            if text is None:
                continue
            ids = model.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()
            if len(ids) != 1:
                pieces = [model.tokenizer.decode([i]) for i in ids]
                raise TaskError(
                    f"item {index} ({item.prompt!r}): {what} {text!r} is {len(ids)} tokens "
                    f"{pieces} for this model, but logit differences need a single token; "
                    "drop the item (see headprobe.tasks.facts.single_token_items) or reword it"
                )


def single_token_items(model: Any, items: Sequence[TaskItem]) -> list[TaskItem]:
    """The items whose answer (and distractor, when set) is one token for ``model``."""
    return [
        item for item in items
        if _is_single_token(model, item.answer)
        and (item.distractor is None or _is_single_token(model, item.distractor))
    ]


def make_task(
    n: int | None = None,
    relation: str = "capital",
    seed: int = 0,
    model: Any = None,
) -> Task:
    """The factual-recall task.

    Args:
        n: number of items (default: all that qualify); items are shuffled with ``seed``.
        relation: ``capital``, ``language``, ``element``, or ``all`` (distractors always come
            from the item's own relation).
        seed: picks each item's template and distractor and the item order (a local
            ``random.Random``; the global RNG is untouched).
        model: a bridge; when given, only facts whose answer is a single token for its
            tokenizer are kept, and distractors are chosen so the corrupt prompt has the clean
            prompt's token length where possible.

    Raises:
        TaskError: unknown relation, bad ``n``, or fewer than two usable facts.
    """
    table = load_facts()
    names = list(table) if relation == "all" else [relation]
    for name in names:
        if name not in table:
            raise TaskError(
                f"unknown facts relation {name!r}; choose one of {', '.join(table)} or 'all'")
    if n is not None and n < 1:
        raise TaskError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    items: list[TaskItem] = []
    for name in names:
        items.extend(_relation_items(name, table[name], rng, model))
    rng.shuffle(items)
    if n is not None:
        items = items[:n]
    if not items:
        raise TaskError(f"facts task ({relation}): no usable items for this model")
    return Task(
        name="facts",
        items=items,
        judge="next_token",
        description=f"factual recall ({relation}): one-token answers with a same-relation "
                    "distractor",
        meta={"relation": relation, "seed": seed, "source": f"headprobe/resources/{RESOURCE}",
              "filtered_for_model": model is not None},
    )


def _relation_items(name: str, entry: dict[str, Any], rng: random.Random,
                    model: Any) -> list[TaskItem]:
    templates: list[str] = entry["templates"]
    pairs = [(str(subject), " " + str(answer)) for subject, answer in entry["pairs"]]
    if model is not None:
        pairs = [(subject, answer) for subject, answer in pairs if _is_single_token(model, answer)]
    if len(pairs) < 2:
        raise TaskError(
            f"facts relation {name!r} has {len(pairs)} fact(s) with a single-token answer for "
            "this model; at least two are needed (one is the other's distractor)")
    items = []
    for subject, answer in pairs:
        template = templates[rng.randrange(len(templates))]
        prompt = template.format(subject=subject)
        others = [(s, a) for s, a in pairs if a != answer and s != subject]
        if not others:
            continue
        same_length = None
        if model is not None:
            length = _token_count(model, prompt, prepend_bos=True)
            matching = [(s, a) for s, a in others
                        if _token_count(model, template.format(subject=s), prepend_bos=True)
                        == length]
            same_length = bool(matching)
            others = matching or others
        other_subject, distractor = others[rng.randrange(len(others))]
        items.append(TaskItem(
            prompt=prompt,
            answer=answer,
            distractor=distractor,
            corrupt_prompt=template.format(subject=other_subject),
            meta={"relation": name, "subject": subject, "corrupt_subject": other_subject,
                  "template": templates.index(template), "same_length": same_length},
        ))
    return items
