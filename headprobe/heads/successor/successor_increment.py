"""Successor behaviour: continue an ordinal list ("Monday, Tuesday," -> " Wednesday"), with
two controls that are not succession (Gould et al. 2023, "Successor Heads: Recurring,
Interpretable Attention Heads In The Wild", section 5: ablating the successor head should
hurt incrementing more than ablating random heads does).

Kinds (``make_task(kind=...)``), all judged by the greedy next token (``next_token``):

- ``increment``: 2-4 consecutive items of an ordinal set (days, months, letters, digits,
  number words; :mod:`headprobe.heads.successor.ordinal_sets`), comma separated after the set's
  label ("Days: Monday, Tuesday," -> " Wednesday"); the answer is the next item,
  the distractor the last item shown (what a copying head would predict). Days and months
  wrap ("Saturday, Sunday," -> " Monday").
- ``repeat``: the same item 2-4 times ("Days: Monday, Monday," -> " Monday"); the distractor is the
  item's successor, so the logit difference measures copying against incrementing.
- ``facts``: factual recall (:mod:`headprobe.tasks.facts`, all relations), a control that
  involves neither copying nor succession.

Item format. With a leading space (``with_space=True``) items are joined by ``", "`` and the
answer carries the space (``" Wednesday"``); without (``False``) they are joined by ``","``
(``"1,2,3,"`` -> ``"4"``). ``with_space=None`` (default) picks, per set, the spaced form when
the model tokenizes the set's spaced items as single tokens and the bare form otherwise
(SmolLM2 and Gemma 3 split ``" 4"`` into ``" "`` and ``"4"``, so digits are bare); without a
model, digits are bare and the other sets spaced. Answers and distractors are single tokens
for the model when one is given (:func:`headprobe.heads.successor.ordinal_sets.tokenize_set`: only
items that are single tokens, and only consecutive items that both are).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from headprobe.errors import TaskError, TokenSetError
from headprobe.heads.successor.ordinal_sets import ORDINAL_SETS, SPACE_SUFFIX, tokenize_set
from headprobe.tasks.base import Task, TaskItem

KINDS = ("increment", "repeat", "facts")
DEFAULT_SETS = ("days", "months", "letters", "digits", "number_words")
CONTEXT_LENGTHS = (2, 3, 4)
# A label before the list ("Days: Monday, Tuesday,"): without it SmolLM2 continues most
# lists with " and" rather than an item.
LABELS = {"numbers": "Numbers", "digits": "Digits", "number_words": "Numbers",
          "ordinals": "Ordinals", "days": "Days", "months": "Months", "letters": "Letters",
          "letters_lower": "Letters", "roman": "Roman numerals"}


def _variant_items(model: Any, base: str, with_space: bool | None
                   ) -> tuple[list[str], list[tuple[int, int]], bool] | None:
    """(bare items, successor pairs as indices into them, spaced?) of the chosen variant;
    None when neither allowed variant is usable for ``model``."""
    choices = [True, False] if with_space is None else [with_space]
    if model is None:
        spaced = with_space if with_space is not None else base != "digits"
        items = list(ORDINAL_SETS[base].items)
        n = len(items)
        pairs = [(i, (i + 1) % n) for i in range(n if ORDINAL_SETS[base].cyclic else n - 1)]
        return items, pairs, spaced
    for spaced in choices:
        try:
            tset = tokenize_set(model, base + (SPACE_SUFFIX if spaced else ""))
        except TokenSetError:
            continue
        items = [item.strip() for item in tset.items]
        return items, [tuple(p) for p in tset.pairs.tolist()], spaced
    return None


def _chains(items: Sequence[str], pairs: Sequence[tuple[int, int]], length: int
            ) -> list[list[int]]:
    """Every run of ``length + 1`` items linked by successor pairs (context + answer)."""
    following = dict(pairs)
    chains = []
    for start in following:
        chain = [start]
        while len(chain) < length + 1 and chain[-1] in following:
            chain.append(following[chain[-1]])
        if len(chain) == length + 1 and len(set(chain)) == len(chain):
            chains.append(chain)
    return chains


def _sequence_items(kind: str, model: Any, sets: Sequence[str], with_space: bool | None,
                    label: bool) -> dict[str, list[TaskItem]]:
    out: dict[str, list[TaskItem]] = {}
    for base in sets:
        found = _variant_items(model, base, with_space)
        if found is None:
            continue
        items, pairs, spaced = found
        sep, lead = (", ", " ") if spaced else (",", "")
        prefix = f"{LABELS[base]}: " if label else ""
        entries = []
        for length in CONTEXT_LENGTHS:
            for chain in _chains(items, pairs, length):
                context, nxt = chain[:-1], chain[-1]
                if kind == "increment":
                    shown = [items[i] for i in context]
                    answer, distractor = items[nxt], items[context[-1]]
                else:  # repeat the first item of the chain; the distractor is its successor
                    shown = [items[context[0]]] * length
                    answer, distractor = items[context[0]], items[context[1]]
                entries.append(TaskItem(
                    prompt=prefix + sep.join(shown) + ",",
                    answer=lead + answer,
                    distractor=lead + distractor,
                    meta={"kind": kind, "set": base, "with_space": spaced,
                          "length": length}))
        if entries:
            out[base] = entries
    return out


def make_task(
    kind: str = "increment",
    n: int | None = None,
    seed: int = 0,
    with_space: bool | None = None,
    sets: Sequence[str] | None = None,
    label: bool = True,
    model: Any = None,
) -> Task:
    """The successor task of ``kind`` (``increment``, ``repeat`` or ``facts``).

    Args:
        kind: see the module docstring.
        n: number of items (default: all). Items are shuffled with ``seed`` and, when ``n``
            is given, taken round-robin over the sets so each set is represented.
        seed: item order and selection (a local ``random.Random``).
        with_space: True (spaced items), False (bare) or None (per set; module docstring).
        sets: ordinal sets for ``increment`` / ``repeat`` (default :data:`DEFAULT_SETS`).
        label: put the set's name before the list (``"Days: Monday, Tuesday,"``), the same
            for ``increment`` and ``repeat``.
        model: a bridge; when given, only single-token answers and distractors are used.

    Raises:
        TaskError: unknown kind or set, bad ``n``, or no usable item.
    """
    if kind not in KINDS:
        raise TaskError(f"unknown successor_increment kind {kind!r}; choose one of "
                        f"{', '.join(KINDS)}")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise TaskError(f"n must be an integer >= 1, got {n!r}")
    if with_space not in (None, True, False):
        raise TaskError(f"with_space must be True, False or None, got {with_space!r}")
    rng = random.Random(seed)
    if kind == "facts":
        from headprobe.tasks.facts import make_task as make_facts

        facts = make_facts(n=n, relation="all", seed=seed, model=model)
        # no corrupt prompts: the controls are ablated, not patched (and the facts' corrupt
        # prompts need not have the clean prompt's token length)
        items = [TaskItem(i.prompt, i.answer, i.distractor, None,
                          {**i.meta, "kind": "facts"}) for i in facts.items]
        return Task(name="successor_increment", items=items, judge="next_token",
                    description="successor control: factual recall (one-token answers)",
                    meta={"kind": kind, "seed": seed, "sets": ["facts"]})
    chosen = list(DEFAULT_SETS) if sets is None else list(sets)
    for base in chosen:
        if base not in ORDINAL_SETS:
            raise TaskError(f"unknown ordinal set {base!r}; sets: {', '.join(ORDINAL_SETS)}")
    groups = _sequence_items(kind, model, chosen, with_space, label)
    if not groups:
        raise TaskError(f"successor_increment ({kind}): no set of {chosen} has single-token "
                        "items for this model")
    for entries in groups.values():
        rng.shuffle(entries)
    if n is None:
        items = [item for entries in groups.values() for item in entries]
    else:
        items, queues = [], [list(e) for e in groups.values()]
        while len(items) < n and any(queues):
            for queue in queues:
                if queue and len(items) < n:
                    items.append(queue.pop())
    rng.shuffle(items)
    return Task(
        name="successor_increment",
        items=items,
        judge="next_token",
        description=(f"successor {kind}: comma-separated ordinal items "
                     f"({', '.join(groups)}), next item judged"),
        meta={"kind": kind, "seed": seed, "sets": list(groups),
              "with_space": with_space, "filtered_for_model": model is not None},
    )
