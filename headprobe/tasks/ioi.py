"""Indirect object identification (IOI) prompts, written for headprobe.

The IOI task (Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object
Identification in GPT-2 small"): two people are introduced, one of them (the subject, S) is
named again and does something *to* someone; the model should complete with the other name,
the indirect object (IO)::

    "When Mary and John arrived at the store, John handed a drink to"  ->  " Mary"

Each :class:`~headprobe.tasks.base.TaskItem` has ``answer`` = " IO", ``distractor`` = " S"
and a ``corrupt_prompt`` of the same token length. Corruptions (``corruption=``):

- ``"s2"`` (default): the second mention of the subject is replaced by the IO name
  ("..., Mary handed a drink to"). Only one token changes and the correct answer flips to
  the original subject, so the clean logit difference logit(IO) - logit(S) becomes negative
  on the corrupt prompt: a large, clean signal for patching.
- ``"abc"``: all three name mentions are replaced by three other distinct names (the
  "ABC" distribution of Wang et al.); the corrupt prompt carries no information about IO or S,
  so its logit difference is near zero.

The templates, places and objects are this project's own. Names, places and objects are
chosen to be single tokens (with a leading space) for the model when one is given
(:func:`single_token_words`), so every prompt of one template has the same token length and
each clean/corrupt pair has equal length (checked; a pair that does not is dropped and
counted in ``task.meta["dropped"]``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from headprobe.errors import TaskError
from headprobe.tasks.base import Task, TaskItem

# {A} and {B} are the two names of the first clause; {S} is the repeated subject.
TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} arrived at the {PLACE}, {S} handed a {OBJECT} to",
    "After {A} and {B} walked into the {PLACE}, {S} passed the {OBJECT} to",
    "While {A} and {B} were sitting in the {PLACE}, {S} offered a {OBJECT} to",
    "Yesterday {A} and {B} met at the {PLACE}, and {S} threw the {OBJECT} to",
    "Once {A} and {B} got to the {PLACE}, {S} sent the {OBJECT} to",
    "Because {A} and {B} were both at the {PLACE}, {S} returned the {OBJECT} to",
    "Later that day {A} and {B} stopped by the {PLACE}, where {S} showed a {OBJECT} to",
    "Then {A} and {B} went over to the {PLACE}, and {S} lent the {OBJECT} to",
)

NAMES: tuple[str, ...] = (
    "Mary", "John", "Anna", "James", "Sarah", "David", "Laura", "Michael", "Emma", "Daniel",
    "Lisa", "Peter", "Kate", "Paul", "Alice", "Mark", "Rachel", "Tom", "Helen", "Steve",
    "Linda", "Chris", "Susan", "Robert", "Amy", "Richard", "Jessica", "Kevin", "Nancy", "Brian",
    "Karen", "George", "Julia", "Frank", "Emily", "Jack", "Grace", "Henry", "Lucy", "Sam",
    "Rose", "Eric", "Jane", "Adam", "Ruth", "Carl", "Diana", "Fred", "Ellen", "Greg",
    "Maria", "Victor", "Sophie", "Ben", "Clara", "Tony", "Nina", "Max", "Eva", "Oscar",
)

PLACES: tuple[str, ...] = (
    "store", "park", "school", "office", "beach", "market", "library", "station", "garden",
    "restaurant", "hospital", "museum", "kitchen", "church", "hotel", "bank", "farm", "lake",
    "theater", "gym", "airport", "house", "bar", "club", "shop", "studio", "cafe", "zoo",
)

OBJECTS: tuple[str, ...] = (
    "drink", "book", "ball", "key", "letter", "pen", "ring", "bag", "gift", "phone", "flower",
    "snack", "lamp", "hat", "ticket", "card", "cup", "box", "coin", "map", "note", "bottle",
    "camera", "watch", "shirt", "toy", "cake", "knife", "basket", "towel",
)

CORRUPTIONS = ("s2", "abc")


def single_token_words(model: Any, words: Sequence[str], *,
                       leading_space: bool = True) -> list[str]:
    """The words of ``words`` that are exactly one token for ``model`` (with a leading space
    when ``leading_space``, as they appear mid-sentence). Order is kept."""
    keep = []
    for word in words:
        text = f" {word}" if leading_space else word
        ids = model.to_tokens(text, prepend_bos=False)[0]
        if ids.numel() == 1:
            keep.append(word)
    return keep


def make_task(
    n: int = 32,
    seed: int = 0,
    model: Any = None,
    *,
    corruption: str = "s2",
    template: int | None = None,
    names: Sequence[str] | None = None,
) -> Task:
    """Build ``n`` IOI items.

    Args:
        n: number of items.
        seed: seed of a local ``random.Random`` (the global RNG is untouched).
        model: when given, names / places / objects are filtered to single tokens for its
            tokenizer and every clean/corrupt pair is checked to have equal token length.
        corruption: ``"s2"`` (replace the second subject mention by the IO; the answer flips)
            or ``"abc"`` (three fresh names); see the module docstring.
        template: use only template ``template`` (index into :data:`TEMPLATES`), so that all
            prompts have the same token length (needed for per-position patching); default:
            cycle through all templates.
        names: a custom name list (default :data:`NAMES`).

    Returns:
        A :class:`Task` named ``ioi`` (judge ``next_token``); item ``meta`` has ``io``, ``s``,
        ``template``, ``order`` (``ABBA`` = IO first, ``BABA`` = S first), ``place``,
        ``object``.

    Raises:
        TaskError: bad options, too few single-token words, or no pair of equal length.
    """
    if n < 1:
        raise TaskError(f"n must be >= 1, got {n}")
    if corruption not in CORRUPTIONS:
        raise TaskError(f"unknown IOI corruption {corruption!r}; choose one of {CORRUPTIONS}")
    if template is not None and not 0 <= template < len(TEMPLATES):
        raise TaskError(f"template must be in 0..{len(TEMPLATES) - 1}, got {template}")
    name_list = list(names if names is not None else NAMES)
    places, objects = list(PLACES), list(OBJECTS)
    if model is not None:
        name_list = single_token_words(model, name_list)
        places = single_token_words(model, places)
        objects = single_token_words(model, objects)
    need = 5 if corruption == "abc" else 2
    if len(name_list) < need or not places or not objects:
        raise TaskError(
            f"too few single-token words for IOI: {len(name_list)} names (need {need}), "
            f"{len(places)} places, {len(objects)} objects; pass a model with a word-level "
            "tokenizer or a custom names= list")
    rng = random.Random(seed)
    templates = [template] if template is not None else list(range(len(TEMPLATES)))
    items: list[TaskItem] = []
    dropped = 0
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise TaskError(
                f"could only build {len(items)} of {n} IOI items whose clean and corrupt "
                f"prompts have equal token length ({dropped} dropped)")
        index = templates[len(items) % len(templates)]
        io, s = rng.sample(name_list, 2)
        order = rng.choice(("ABBA", "BABA"))
        first, second = (io, s) if order == "ABBA" else (s, io)
        place, obj = rng.choice(places), rng.choice(objects)
        pattern = TEMPLATES[index]
        clean = pattern.format(A=first, B=second, S=s, PLACE=place, OBJECT=obj)
        if corruption == "s2":
            corrupt = pattern.format(A=first, B=second, S=io, PLACE=place, OBJECT=obj)
        else:
            x, y, z = rng.sample([w for w in name_list if w not in (io, s)], 3)
            corrupt = pattern.format(A=x, B=y, S=z, PLACE=place, OBJECT=obj)
        if model is not None:
            n_clean = model.to_tokens(clean)[0].numel()
            n_corrupt = model.to_tokens(corrupt)[0].numel()
            if n_clean != n_corrupt:
                dropped += 1
                continue
        items.append(TaskItem(
            prompt=clean,
            answer=f" {io}",
            distractor=f" {s}",
            corrupt_prompt=corrupt,
            meta={"io": io, "s": s, "template": index, "order": order, "place": place,
                  "object": obj},
        ))
    return Task(
        name="ioi",
        items=items,
        judge="next_token",
        description="indirect object identification: complete with the name that was not "
                    "repeated (Wang et al. 2022)",
        meta={"corruption": corruption, "seed": seed, "n_templates": len(templates),
              "template": template, "n_names": len(name_list), "dropped": dropped,
              "filtered_by_model": model is not None},
    )
